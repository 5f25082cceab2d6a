"""What the runtime needs to know about a torch CUDA device, computed once per device index."""
from __future__ import annotations

import functools

import torch

from ..arch import Arch, arch_of_device


@functools.cache
def device_arch(index: int) -> Arch:
    major, minor = torch.cuda.get_device_capability(index)
    return arch_of_device(major, minor)


@functools.cache
def device_name(index: int) -> str:
    return torch.cuda.get_device_name(index)


def stream_handle(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream
