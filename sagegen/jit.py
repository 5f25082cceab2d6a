"""One path from a spec to a cubin, shared by ahead-of-time builds and run-time JIT:
render -> write generated/<arch>/<name>.cu -> cache key -> cache hit, or NVRTC compile under the entry's lock.
"""
from __future__ import annotations

from pathlib import Path

from .cache import KernelCache, cache_key
from .compiler import compile_cubin, option_list
from .render import default_out_dir, generated_path, render, write_if_changed
from .variants.spec import KernelSpec


def cubin_for(spec: KernelSpec, *, out_dir: Path | None = None, cache: KernelCache | None = None,
              source: str | None = None) -> tuple[bytes, bool]:
    """(cubin, built) for one variant. ``built`` is False when the cache served it."""
    cache = cache or KernelCache()
    source = render(spec) if source is None else source
    path = generated_path(Path(out_dir) if out_dir else default_out_dir(), spec)
    write_if_changed(path, source)
    key = cache_key(spec.name, source, option_list(spec.target))
    return cache.get_or_build(spec.arch, spec.name, key, lambda: compile_cubin(spec.name, source, spec.arch, path))
