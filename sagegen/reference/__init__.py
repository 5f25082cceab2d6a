"""Numerical reference of sagegen: exact attention, torch emulations of every SageAttention scheme, their
quantizers and metrics, and the `sagegen accuracy` tool.

Importing this package is light (no torch); each name below loads its module on first access.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "attention_exact": "exact",
    "sage1_attention": "sage1",
    "sage2_attention": "sage2",
    "sage2pp_attention": "sage2pp",
    "fp16_accum_v_max": "sage2pp",
    "sage3_attention": "sage3",
    "quantize_p_nvfp4": "sage3",
    "quantize_int": "quant",
    "quantize_int8": "quant",
    "quantize_int4": "quant",
    "quantize_v_fp8": "quant",
    "quantize_nvfp4": "quant",
    "smooth_pad": "quant",
    "IntQuant": "quant",
    "Fp8VQuant": "quant",
    "Nvfp4Quant": "quant",
    "round_int": "formats",
    "round_e4m3": "formats",
    "round_e2m1": "formats",
    "round_fp16": "formats",
    "round_mantissa": "formats",
    "encode_int8": "formats",
    "encode_int4": "formats",
    "encode_e4m3": "formats",
    "encode_e2m1": "formats",
    "decode_e2m1": "formats",
    "pack_nibbles": "formats",
    "unpack_nibbles": "formats",
    "cosine": "metrics",
    "rel_l1": "metrics",
    "rmse": "metrics",
    "max_abs": "metrics",
    "lse_max_abs": "metrics",
    "compare": "metrics",
    "make_inputs": "inputs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
