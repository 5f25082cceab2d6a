"""sagegen: generated SageAttention-family quantized attention kernels.

Importing the package is cheap (no torch, no CUDA): the user-facing functions load on first use.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "attention": ("sagegen.runtime.api", "attention"),
    "sdpa": ("sagegen.runtime.api", "sdpa"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sagegen' has no attribute {name!r}")


__all__ = ["__version__", "attention", "sdpa"]
