"""Where the compiler and the headers come from, found from the installed wheels (never hard-coded paths).

The fingerprint folds into every cache key: it changes when sagegen, NVRTC, CUTLASS, the CUDA headers or any of
our own template headers change, so a reinstall never serves a stale cubin.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata as md
import importlib.util
import os
from pathlib import Path

from . import __version__

_HEADER_PACKAGES = ("nvidia-cutlass", "nvidia-cuda-runtime", "nvidia-cuda-cccl", "nvidia-cuda-nvrtc")


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    locs = list(spec.submodule_search_locations or [])
    return Path(locs[0]) if locs else Path(spec.origin).parent


def _namespace_dirs(module: str) -> list[Path]:
    spec = importlib.util.find_spec(module)
    return [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []


def _first_with(roots: list[Path], subdirs: tuple[str, ...], marker: str) -> Path | None:
    for root in roots:
        for sub in subdirs:
            if (root / sub / marker).is_file():
                return root / sub
    return None


@functools.cache
def templates_dir() -> Path:
    """The templates/ folder: the repo's top-level one when running from a checkout, else the installed copy."""
    checkout = Path(__file__).resolve().parent.parent / "templates"
    if (checkout / "common").is_dir():
        return checkout
    installed = _package_dir("sagegen.templates")
    if installed is None or not (installed / "common").is_dir():
        raise FileNotFoundError("sagegen's templates are missing: reinstall sagegen")
    return installed


@functools.cache
def include_dirs() -> tuple[str, ...]:
    """Our headers, CUTLASS/CuTe, the CUDA headers and libcu++ (from the same CCCL as the CUDA headers)."""
    dirs = [templates_dir()]
    cutlass = _package_dir("cutlass_library")
    if cutlass is None or not (cutlass / "source" / "include" / "cute").is_dir():
        raise FileNotFoundError("CUTLASS headers not found: pip install 'nvidia-cutlass>=4.2,<4.3'")
    dirs.append(cutlass / "source" / "include")
    # "nvidia" is a namespace package: the CUDA headers and libcu++ may sit in different site-packages folders.
    roots = _namespace_dirs("nvidia")
    cuda_inc = _first_with(roots, ("cu13/include", "cuda_runtime/include"), "cuda_fp16.h")
    if cuda_inc is None:
        raise FileNotFoundError("CUDA headers not found: pip install 'nvidia-cuda-runtime>=13.0'")
    cccl = _first_with(roots, ("cu13/include/cccl", "cuda_cccl/include"), "cuda/std/type_traits")
    if cccl is None:
        raise FileNotFoundError("libcu++ headers not found: pip install 'nvidia-cuda-cccl>=13.0,<13.2'")
    # CUTLASS includes both <cuda/std/...> and <cccl/cuda/std/...>: the folder above cccl/ is needed too.
    dirs += [cuda_inc] + ([cccl.parent] if cccl.parent != cuda_inc else []) + [cccl]
    return tuple(str(d) for d in dirs)


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("sagegen",) + _HEADER_PACKAGES + ("cuda-core", "cuda-bindings"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "sagegen " + __version__ if name == "sagegen" else "missing"
    return out


@functools.cache
def nvrtc_version() -> str:
    from cuda.bindings import nvrtc

    err, major, minor = nvrtc.nvrtcVersion()
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"cannot query the NVRTC version: {err}")
    return f"{major}.{minor}"


def _templates_digest() -> str:
    h = hashlib.sha256()
    root = templates_dir()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in (".cuh", ".h", ".hpp", ".j2"):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@functools.cache
def fingerprint() -> str:
    """Hash of everything outside the rendered source that decides what NVRTC produces."""
    h = hashlib.sha256()
    h.update(__version__.encode())
    h.update(nvrtc_version().encode())
    for k, v in sorted(package_versions().items()):
        h.update(f"{k}={v};".encode())
    h.update(_templates_digest().encode())
    return h.hexdigest()


def cache_root() -> Path:
    """``$SAGEGEN_CACHE_DIR`` or ``~/.cache/sagegen`` (``$XDG_CACHE_HOME`` respected)."""
    env = os.environ.get("SAGEGEN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sagegen"
