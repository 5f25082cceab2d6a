"""Render a variant's Jinja template into CUDA C++ source, and write generated/ with its manifest.

Templates only instantiate: they set constants and type aliases from the spec and include a header family.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import jinja2

from .toolchain import templates_dir
from .variants.spec import KernelSpec


@functools.cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,  # a missing value is an error, never an empty string in C++
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(spec: KernelSpec) -> str:
    """The full CUDA source of one variant. Deterministic: equal specs give byte-equal sources."""
    template = _env().get_template(spec.template)
    return template.render(**spec.render_context())


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def default_out_dir() -> Path:
    """``generated/`` of the checkout when running from one, else a folder in the cache."""
    from .toolchain import cache_root

    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "generated").is_dir() and (checkout / "pyproject.toml").is_file():
        return checkout / "generated"
    return cache_root() / "generated"


def write_if_changed(path: Path, text: str) -> bool:
    """Write atomically, and only when the content differs (keeps mtimes and editors quiet). True if written."""
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def generated_path(out_dir: Path, spec: KernelSpec) -> Path:
    return Path(out_dir) / spec.arch / f"{spec.name}.cu"


def write_sources(specs, out_dir: Path) -> dict[str, tuple[Path, str]]:
    """Render every spec into ``out_dir/<arch>/<name>.cu`` and update each arch's manifest.json.

    Returns name -> (path, source).
    """
    out_dir = Path(out_dir)
    result: dict[str, tuple[Path, str]] = {}
    by_arch: dict[str, dict] = {}
    for spec in specs:
        source = render(spec)
        path = generated_path(out_dir, spec)
        write_if_changed(path, source)
        result[spec.name] = (path, source)
        by_arch.setdefault(spec.arch, {})[spec.name] = {
            "family": spec.family,
            "spec": spec.to_dict(),
            "template": spec.template,
            "sha256": source_hash(source),
        }
    for arch, entries in by_arch.items():
        manifest_path = out_dir / arch / "manifest.json"
        manifest = {}
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except ValueError:
                manifest = {}  # a damaged manifest is rebuilt from what exists
        manifest.update(entries)
        manifest = {k: v for k, v in sorted(manifest.items()) if (out_dir / arch / f"{k}.cu").is_file()}
        write_if_changed(manifest_path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return result
