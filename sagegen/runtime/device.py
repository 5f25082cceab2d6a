"""What the runtime needs to know about a torch CUDA device, computed once per device index."""
from __future__ import annotations

import functools

import torch

from ..arch import Arch, arch_of_device

# torch's C entry points behind torch.cuda.current_device() / current_stream(): the public ones add a lazy-init
# check, device-index parsing and a Stream object, ~6 us per current_stream on the H100 host. Absent from CPU-only
# builds of torch; the runtime has initialized CUDA (plan, first launch) before the eager path calls them.
_get_device = getattr(torch._C, "_cuda_getDevice", None)
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # what Inductor's generated code calls


@functools.cache
def device_arch(index: int) -> Arch:
    major, minor = torch.cuda.get_device_capability(index)
    return arch_of_device(major, minor)


@functools.cache
def device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def current_device() -> int:
    return _get_device() if _get_device is not None else torch.cuda.current_device()


def current_stream_handle(index: int) -> int:
    """torch's current stream of device ``index`` as a raw cudaStream_t (0: the legacy default stream)."""
    return _raw_stream(index) if _raw_stream is not None else torch.cuda.current_stream(index).cuda_stream


def stream_handle(device: torch.device) -> int:
    index = device.index
    return current_stream_handle(index if index is not None else current_device())
