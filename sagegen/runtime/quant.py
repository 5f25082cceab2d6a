"""The quantization passes from Python: one stats launch (K sums, V amax) and one fused Q/K/V launch.

Outputs follow sagegen.quant_layout; the torch emulation in sagegen.reference produces the same buffers.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..quant_layout import N_ALIGN, QK_IMAGE_DIMS, ScaleGroups, padded_dim, padded_len
from ..variants.quant import QuantSpec
from . import launch as L
from .device import device_arch, stream_handle

_X_TAG = {torch.float16: "f16", torch.bfloat16: "bf16"}
_STATS_SPLITS = 16  # partial sums per (batch, head): enough CTAs to fill the GPU, few for the qkv pass to add


@dataclass
class Quantized:
    q8: torch.Tensor  # [B, Hq, nq_pad, D] int8 (plain or operand image: quantize's qk_image)
    q_scale: torch.Tensor  # [B, Hq, q_groups.count(nq)] fp32
    k8: torch.Tensor  # [B, Hkv, nk_pad, D] int8 (smoothed; plain or image, as q8)
    k_scale: torch.Tensor
    v: torch.Tensor | None  # fp16 [B, Hkv, nk_pad, D], e4m3 [B, Hkv, D, nk_pad], e4m3 image
    #                         [B, Hkv, nk_pad/128, D, 128], or None (use the input V)
    v_scale: torch.Tensor | None  # [B, Hkv, D] for e4m3
    qk_bias: torch.Tensor | None  # [B, Hq, nq] fp32: q . mean(k)
    nq: int
    nk: int
    d: int
    D: int


@functools.cache
def _quant_spec(arch: str, op: str, x: str, v: str, d: int) -> QuantSpec:
    return QuantSpec(arch=arch, op=op, x=x, v=v, d=d)  # validated once per process, not per call


def v_mode_for(is_f16: bool, d: int) -> str:
    """fp16 V of a compiled head dim is read in place ("none"); anything else gets an fp16 (padded) copy."""
    return "none" if is_f16 and d == padded_dim(d) else "f16"


def bhnd_strides(x: torch.Tensor, layout: str) -> tuple[int, int, int]:
    """(batch, head, token) strides in elements of a 4-D tensor in ``layout`` (HND or NHD)."""
    s = x.stride()
    return (s[0], s[1], s[2]) if layout == "HND" else (s[0], s[2], s[1])


def _vector_ready(x: torch.Tensor) -> torch.Tensor:
    # The kernels read 16-byte vectors: last dim contiguous, base and row strides 16-byte aligned. Anything else
    # is copied once here (documented in attention()'s docstring) rather than read wrongly. A clone, not
    # .contiguous(): a contiguous tensor at a misaligned offset (x.view(-1)[1:].view(...)) would come back as is.
    ok = x.stride(-1) == 1 and x.data_ptr() % 16 == 0 and all(s % 8 == 0 for s in x.stride()[:-1])
    return x if ok else x.clone(memory_format=torch.contiguous_format)


def quantize(q, k, v, *, layout: str, q_groups: ScaleGroups, k_groups: ScaleGroups, v_mode: str,
             with_qk_bias: bool = False, qk_image: bool = False) -> Quantized:
    """Run both passes. ``v_mode``: none (attention reads the input V), f16, e4m3t, or e4m3w (e4m3 in the wgmma
    operand image). ``qk_image``: write Q and K in their operand image (padded head dim 64 or 128); see
    sagegen.quant_layout."""
    q, k, v = _vector_ready(q), _vector_ready(k), _vector_ready(v)
    hd = 1 if layout == "HND" else 2
    nd = 2 if layout == "HND" else 1
    B, Hq, nq, d = q.shape[0], q.shape[hd], q.shape[nd], q.shape[3]
    Hkv, nk = k.shape[hd], k.shape[nd]
    D = padded_dim(d)
    if qk_image and D not in QK_IMAGE_DIMS:
        raise ValueError(f"qk_image needs d <= 128 (no operand image for padded head dim {D}), got d={d}")
    nq_pad, nk_pad = padded_len(nq), padded_len(nk)
    dev = q.device
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    arch = device_arch(idx).name
    x = _X_TAG[q.dtype]
    stream = stream_handle(dev)
    i32 = L.i32

    rows_per_split = max(N_ALIGN, -(-nk // _STATS_SPLITS))
    splits = -(-nk // rows_per_split)
    ksum = torch.empty(B, Hkv, splits, D, device=dev, dtype=torch.float32)
    fp8_v = v_mode == "e4m3t" or v_mode == "e4m3w"
    vamax = torch.empty_like(ksum) if fp8_v else None
    stats = _quant_spec(arch, "stats", x, "e4m3t" if fp8_v else "none", D)  # e4m3w needs the same V amax
    ks, vs = bhnd_strides(k, layout), bhnd_strides(v, layout)
    L.launch(stats, (splits, Hkv, B), QuantSpec.THREADS, 0, idx, stream,
             k.data_ptr(), *ks, v.data_ptr(), *vs,
             i32(Hkv), i32(nk), i32(d), i32(rows_per_split), ksum.data_ptr(),
             vamax.data_ptr() if vamax is not None else 0)

    q8 = torch.empty(B, Hq, nq_pad, D, device=dev, dtype=torch.int8)
    k8 = torch.empty(B, Hkv, nk_pad, D, device=dev, dtype=torch.int8)
    q_scale = torch.empty(B, Hq, q_groups.count(nq), device=dev, dtype=torch.float32)
    k_scale = torch.empty(B, Hkv, k_groups.count(nk), device=dev, dtype=torch.float32)
    if v_mode == "f16":
        v_out, v_scale = torch.empty(B, Hkv, nk_pad, D, device=dev, dtype=torch.float16), None
    elif v_mode == "e4m3t":
        v_out = torch.empty(B, Hkv, D, nk_pad, device=dev, dtype=torch.float8_e4m3fn)
        v_scale = torch.empty(B, Hkv, D, device=dev, dtype=torch.float32)
    elif v_mode == "e4m3w":
        v_out = torch.empty(B, Hkv, nk_pad // N_ALIGN, D, N_ALIGN, device=dev, dtype=torch.float8_e4m3fn)
        v_scale = torch.empty(B, Hkv, D, device=dev, dtype=torch.float32)
    else:
        v_out, v_scale = None, None
    qk_bias = torch.empty(B, Hq, nq, device=dev, dtype=torch.float32) if with_qk_bias else None
    qkv = _quant_spec(arch, "qkv", x, v_mode, D)
    items = max(Hq * nq_pad, Hkv * nk_pad) // N_ALIGN
    qs = bhnd_strides(q, layout)
    L.launch(qkv, (items, 3, B), QuantSpec.THREADS, 0, idx, stream,
             q.data_ptr(), *qs, k.data_ptr(), *ks, v.data_ptr(), *vs,
             i32(Hq), i32(Hkv), i32(nq), i32(nk), i32(d), i32(nq_pad), i32(nk_pad),
             i32(q_groups.tile), i32(q_groups.sub), i32(k_groups.tile), i32(k_groups.sub), i32(splits),
             i32(1 if qk_image else 0),
             ksum.data_ptr(), vamax.data_ptr() if vamax is not None else 0,
             q8.data_ptr(), q_scale.data_ptr(), k8.data_ptr(), k_scale.data_ptr(),
             v_out.data_ptr() if v_out is not None else 0, v_scale.data_ptr() if v_scale is not None else 0,
             qk_bias.data_ptr() if qk_bias is not None else 0)
    return Quantized(q8, q_scale, k8, k_scale, v_out, v_scale, qk_bias, nq, nk, d, D)
