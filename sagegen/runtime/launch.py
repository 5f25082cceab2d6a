"""Load variants' cubins through cuda.core and launch them on torch's current stream.

Per process: one cuda.core Kernel per variant name, one shared-memory opt-in per (variant, device), one
cuda.core Stream wrapper per foreign stream handle. All dictionaries are keyed by Python scalars only.
"""
from __future__ import annotations

import threading

import numpy as np

from ..jit import cubin_for
from ..variants.spec import KernelSpec

_lock = threading.Lock()
_kernels: dict[str, object] = {}
_smem_done: set[tuple[str, int, int]] = set()
_streams: dict[int, object] = {}
_configs: dict[tuple, object] = {}

# cuda.core passes a Python int as a pointer-sized (64-bit) integer: right for pointers and `long long`
# strides. 32-bit ints and floats must be numpy scalars (a Python float would go as a double).
i32 = np.int32
f32 = np.float32


def kernel_for(spec: KernelSpec):
    """The cuda.core Kernel of a variant, compiling (or reading the cache) on first use."""
    k = _kernels.get(spec.name)
    if k is not None:
        return k
    with _lock:
        k = _kernels.get(spec.name)
        if k is None:
            from cuda.core import ObjectCode

            cubin, _ = cubin_for(spec)
            k = ObjectCode.from_cubin(cubin).get_kernel(spec.name)
            _kernels[spec.name] = k
    return k


def _raise_smem_limit(kernel, name: str, device: int, smem: int) -> None:
    """Dynamic shared memory above 48 KB must be opted in, once per kernel and device."""
    key = (name, device, smem)
    if smem <= 48 * 1024 or key in _smem_done:
        return
    from cuda.bindings import driver

    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    handle = kernel.handle
    if isinstance(handle, driver.CUkernel):
        (err,) = driver.cuKernelSetAttribute(attr, smem, handle, device)
    else:
        (err,) = driver.cuFuncSetAttribute(handle, attr, smem)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cannot raise the shared-memory limit of {name} to {smem} bytes on device {device}: {err}")
    _smem_done.add(key)


def _stream(handle: int):
    s = _streams.get(handle)
    if s is None:
        from cuda.core import Stream

        s = _streams[handle] = Stream.from_handle(handle)
    return s


def launch(spec: KernelSpec, grid, block, smem: int, device: int, stream_handle: int, *args) -> None:
    """Launch ``spec``'s kernel. Pointers and 64-bit ints are Python ints; `int`/`float` params numpy i32/f32."""
    from cuda.core import launch as cu_launch

    name = spec.name
    kernel = _kernels.get(name) or kernel_for(spec)
    if smem > 48 * 1024:
        _raise_smem_limit(kernel, name, device, smem)
    cu_launch(_stream(stream_handle), _config(grid, block, smem), kernel, *args)


def _config(grid, block, smem: int):
    key = (grid, block, smem)
    cfg = _configs.get(key)
    if cfg is None:
        from cuda.core import LaunchConfig

        if len(_configs) > 4096:  # shapes are unbounded; configs are cheap to rebuild
            _configs.clear()
        cfg = _configs[key] = LaunchConfig(grid=grid, block=block, shmem_size=smem)
    return cfg
