"""Load variants' cubins through cuda.core and launch them with cuLaunchKernel on torch's current stream.

Per process: one cuda.core Kernel and one launchable handle per variant name, one shared-memory opt-in per
(variant, device, size). Kernel arguments are packed by a ``Params`` declared next to each launch site (the kernel's
C parameter list in short; tests/runtime/test_launch.py checks every declaration against the rendered kernels):
one ``struct.pack_into`` into a per-thread buffer whose ``void*`` array goes to the driver as an int. cuda.core's
own launch, with a Stream wrapper, a LaunchConfig and numpy scalars, took ~12 us per launch under cProfile on the
H200 host (docs/perf-notes.md, "Host overhead at N=128").
"""
from __future__ import annotations

import ctypes
import struct
import threading

import numpy as np

from ..jit import cubin_for
from ..variants.spec import KernelSpec

_lock = threading.Lock()
_kernels: dict[str, object] = {}
_functions: dict[str, int] = {}
_smem_done: set[tuple[str, int, int]] = set()
_cu_launch = None  # cuda.bindings.driver.cuLaunchKernel, bound on the first load (import kept lazy)

# Still accepted as arguments (struct packs numpy scalars too), but plain Python ints and floats are faster: the
# Params of the launch, not the argument's type, decide the width.
i32 = np.int32
f32 = np.float32

# Parameter codes: p pointer, q long long, i int, f float. Each parameter gets its own 8-byte slot (the driver
# copies every parameter from its own address, sized by the kernel image), so one struct packs them all.
_FORMATS = {"p": "Q", "q": "q", "i": "i4x", "f": "f4x"}
SIZES = {"p": 8, "q": 8, "i": 4, "f": 4}
C_TYPES = {"q": "long long", "i": "int", "f": "float"}  # and "p": any pointer
SLOT = 8


class Params:
    """A kernel's parameter list, spelled as codes (spaces group them for the reader): "p qqq i f" is a pointer,
    three long longs, an int and a float. Packing checks the count and each value's range (struct.error)."""

    def __init__(self, spelled: str):
        codes = spelled.replace(" ", "")
        if not codes or set(codes) - set(_FORMATS):
            raise ValueError(f"parameter codes must be p, q, i or f, got {spelled!r}")
        self.spelled, self.codes = spelled, codes
        self.packer = struct.Struct("=" + "".join(_FORMATS[c] for c in codes))
        self._local = threading.local()  # the driver reads the buffer during the call: one buffer per thread

    def __repr__(self) -> str:
        return f"Params({self.spelled!r})"

    def buffers(self) -> tuple[ctypes.Array, int]:
        """This thread's parameter slots and the address of the void* array pointing at them."""
        try:
            return self._local.buffers
        except AttributeError:
            n = len(self.codes)
            slots = (ctypes.c_uint64 * n)()
            base = ctypes.addressof(slots)
            argv = (ctypes.c_void_p * n)(*(base + SLOT * i for i in range(n)))
            self._local.argv = argv  # keeps the array alive with the thread
            self._local.buffers = b = (slots, ctypes.addressof(argv))
            return b

    def pack(self, args) -> int:
        """Write ``args`` into this thread's slots; returns the void** address for cuLaunchKernel."""
        try:
            slots, argv = self._local.buffers
        except AttributeError:
            slots, argv = self.buffers()
        self.packer.pack_into(slots, 0, *args)
        return argv


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


def function_for(spec: KernelSpec) -> int:
    """The handle cuLaunchKernel takes for a variant: cuda.core loads a library, so this is a CUkernel, which the
    driver accepts cast to a CUfunction (launched in the context of the stream, or the current one for stream 0)."""
    f = _functions.get(spec.name)
    if f is None:
        global _cu_launch
        from cuda.bindings import driver

        handle = int(kernel_for(spec).handle)
        _cu_launch = driver.cuLaunchKernel  # bound before the handle is published: launch() reads both
        f = _functions[spec.name] = handle
    return f


def _raise_smem_limit(spec: KernelSpec, device: int, smem: int) -> None:
    """Dynamic shared memory above 48 KB must be opted in, once per kernel and device."""
    name = spec.name
    key = (name, device, smem)
    if key in _smem_done:
        return
    from cuda.bindings import driver

    attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    handle = kernel_for(spec).handle
    if isinstance(handle, driver.CUkernel):
        (err,) = driver.cuKernelSetAttribute(attr, smem, handle, device)
    else:
        (err,) = driver.cuFuncSetAttribute(handle, attr, smem)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cannot raise the shared-memory limit of {name} to {smem} bytes on device {device}: {err}")
    _smem_done.add(key)


def launch(spec: KernelSpec, params: Params, grid: tuple[int, int, int], block: int, smem: int, device: int,
           stream: int, *args) -> None:
    """Launch ``spec``'s kernel on ``stream`` (a raw handle) of ``device``; ``args`` follow ``params``."""
    name = spec.name
    func = _functions.get(name) or function_for(spec)
    if smem > 48 * 1024 and (name, device, smem) not in _smem_done:
        _raise_smem_limit(spec, device, smem)
    try:
        argv = params.pack(args)
    except struct.error as e:
        raise TypeError(f"arguments of {name} do not match its parameters {params.spelled!r}: {e}") from None
    (err,) = _cu_launch(func, grid[0], grid[1], grid[2], block, 1, 1, smem, stream, argv, 0)
    if err and _bound_primary_context(err, device):
        (err,) = _cu_launch(func, grid[0], grid[1], grid[2], block, 1, 1, smem, stream, argv, 0)
    if err:  # CUresult is an int enum, CUDA_SUCCESS = 0
        raise RuntimeError(f"cuLaunchKernel failed for {name} (grid {grid}, block {block}, {smem} bytes of "
                           f"shared memory, device {device}): {getattr(err, 'name', err)}")


class Bound:
    """One kernel launch with everything but the stream and the arguments fixed: a plan's hot path calls
    ``bound(stream, *args)``, skipping launch()'s per-call lookups (kernel handle, shared-memory opt-in)."""

    __slots__ = ("spec", "params", "grid", "block", "smem", "device", "func")

    def __init__(self, spec: KernelSpec, params: Params, grid: tuple[int, int, int], block: int, smem: int,
                 device: int):
        self.spec, self.params, self.grid, self.block, self.smem, self.device = spec, params, grid, block, smem, device
        self.func = None  # loaded on the first call (compiling or reading the cache), as launch() does

    def __call__(self, stream: int, *args) -> None:
        func = self.func
        if func is None:  # first call: launch() loads the kernel and opts in to the shared memory
            launch(self.spec, self.params, self.grid, self.block, self.smem, self.device, stream, *args)
            self.func = _functions.get(self.spec.name)  # (still None where launch() is stubbed: tests)
            return
        try:
            argv = self.params.pack(args)
        except struct.error as e:
            raise TypeError(f"arguments of {self.spec.name} do not match its parameters {self.params.spelled!r}: "
                            f"{e}") from None
        g = self.grid
        (err,) = _cu_launch(func, g[0], g[1], g[2], self.block, 1, 1, self.smem, stream, argv, 0)
        if err:  # the rare cases (no current context, a launch error) take launch()'s handling
            launch(self.spec, self.params, self.grid, self.block, self.smem, self.device, stream, *args)


def _bound_primary_context(err, device: int) -> bool:
    """After CUDA_ERROR_INVALID_CONTEXT: make ``device``'s primary context (torch's) current in this thread and
    say whether that worked. A CUkernel on the legacy default stream (handle 0) launches in the current context, and
    a thread whose torch calls were all served without a CUDA runtime call (cached allocations) may have none."""
    from cuda.bindings import driver

    if err != driver.CUresult.CUDA_ERROR_INVALID_CONTEXT:
        return False
    err, ctx = driver.cuDevicePrimaryCtxRetain(driver.CUdevice(device))
    if err != driver.CUresult.CUDA_SUCCESS:
        return False
    (err,) = driver.cuCtxSetCurrent(ctx)
    return err == driver.CUresult.CUDA_SUCCESS
