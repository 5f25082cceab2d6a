"""Ahead-of-time builds: render every selected variant, then compile the ones the cache lacks, in parallel.

Compiles run in worker processes (NVRTC holds ~1 GB per CuTe compile and is CPU-bound); each worker goes through
the same jit.cubin_for as run-time JIT, so the AOT build fills exactly the cache the runtime reads.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CompileError
from .render import write_sources


@dataclass
class BuildResult:
    built: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> error text
    seconds: float = 0.0
    compile_seconds: dict[str, float] = field(default_factory=dict)  # name -> seconds in NVRTC

    @property
    def ok(self) -> bool:
        return not self.failed


def _build_one(name: str, source: str, out_dir: str, cache_root: str | None):
    # Runs in a worker process: parse the name back (specs travel as names), build through the JIT path.
    from .cache import KernelCache
    from .jit import cubin_for
    from .variants import spec_from_name

    t0 = time.perf_counter()
    try:
        _, built = cubin_for(spec_from_name(name), out_dir=Path(out_dir),
                             cache=KernelCache(Path(cache_root) if cache_root else None), source=source)
        return name, built, time.perf_counter() - t0, None
    except CompileError as e:
        return name, False, time.perf_counter() - t0, str(e)
    except Exception as e:  # report every failure per variant instead of killing the whole build
        return name, False, time.perf_counter() - t0, f"{type(e).__name__}: {e}"


def build(specs, *, out_dir: Path, jobs: int | None = None, cache_root: Path | None = None,
          progress: bool = True) -> BuildResult:
    t0 = time.perf_counter()
    result = BuildResult()
    sources = write_sources(specs, Path(out_dir))
    jobs = max(1, jobs or os.cpu_count() or 1)
    root = str(cache_root) if cache_root else None
    bar = _progress_bar(len(sources), progress)
    if jobs == 1 or len(sources) <= 1:
        outcomes = (_build_one(n, src, str(out_dir), root) for n, (_, src) in sources.items())
        _collect(outcomes, result, bar)
    else:
        import multiprocessing as mp

        # fork is safe here: the CLI has not touched CUDA; forked workers skip re-importing torch-free sagegen
        ctx = mp.get_context("fork" if os.name == "posix" else "spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_build_one, n, src, str(out_dir), root) for n, (_, src) in sources.items()]
            _collect((f.result() for f in as_completed(futures)), result, bar)
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - t0
    return result


def _collect(outcomes, result: BuildResult, bar) -> None:
    for name, built, secs, error in outcomes:
        if error is not None:
            result.failed[name] = error
        elif built:
            result.built.append(name)
            result.compile_seconds[name] = secs
        else:
            result.cached.append(name)
        if bar is not None:
            bar.set_postfix(failed=len(result.failed), refresh=False)
            bar.update(1)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="kernel", desc="compiling", dynamic_ncols=True)
