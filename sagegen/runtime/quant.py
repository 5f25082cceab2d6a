"""The quantization passes from Python: one stats launch (K sums, V amax) and one fused Q/K/V launch.

Outputs follow sagegen.quant_layout; the torch emulation in sagegen.reference produces the same buffers.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..quant_layout import N_ALIGN, V_SLAB, ScaleGroups, padded_dim, padded_len
from ..variants.quant import SCALED_V_MODES, QuantSpec
from . import launch as L
from .device import device_arch, stream_handle
from .workspace import carve

_X_TAG = {torch.float16: "f16", torch.bfloat16: "bf16"}
_STATS_SPLITS = 16  # partial sums per (batch, head): enough CTAs to fill the GPU, few for the qkv pass to add


@dataclass
class Quantized:
    q8: torch.Tensor  # [B, Hq, nq_pad, D] int8 (plain or operand image: quantize's qk_image)
    q_scale: torch.Tensor  # [B, Hq, q_groups.count(nq)] fp32
    k8: torch.Tensor  # [B, Hkv, nk_pad, D] int8 (smoothed; plain or image, as q8)
    k_scale: torch.Tensor
    v: torch.Tensor | None  # fp16 [B, Hkv, nk_pad, D], e4m3 [B, Hkv, D, nk_pad], e4m3 image
    #                         [B, Hkv, nk_pad/128, D, 128], int8 + 128 (u8) in that image (i8w), fp16 image
    #                         [B, Hkv, nk_pad/128, D/64, 128, 64], or None (use the input V)
    v_scale: torch.Tensor | None  # [B, Hkv, D] for e4m3 and int8
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
    """Run both passes. ``v_mode``: none (attention reads the input V), f16, e4m3t, e4m3w or f16w (e4m3 or fp16
    in the wgmma operand image), i8w (INT8 with per-channel scales amax / 127, stored offset by 128 as u8 in
    e4m3w's byte layout).
    ``qk_image``: write Q and K in their operand image; see sagegen.quant_layout."""
    q, k, v = _vector_ready(q), _vector_ready(k), _vector_ready(v)
    hd = 1 if layout == "HND" else 2
    nd = 2 if layout == "HND" else 1
    B, Hq, nq, d = q.shape[0], q.shape[hd], q.shape[nd], q.shape[3]
    Hkv, nk = k.shape[hd], k.shape[nd]
    dev = q.device
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    p = quant_plan(device_arch(idx).name, _X_TAG[q.dtype], B, Hq, Hkv, nq, nk, d, q_groups, k_groups, v_mode,
                   with_qk_bias, qk_image)
    # One tensor per buffer here: the op returns them (see workspace.py for the eager path's single allocation).
    out = {name: torch.empty(shape, device=dev, dtype=dtype) for name, (shape, dtype) in p.buffers.items()}
    ptrs = [out[name].data_ptr() if name in out else 0 for name in BUFFERS]
    p.launch(idx, stream_handle(dev), q.data_ptr(), bhnd_strides(q, layout), k.data_ptr(), bhnd_strides(k, layout),
             v.data_ptr(), bhnd_strides(v, layout), *ptrs)
    return Quantized(out["q8"], out["q_scale"], out["k8"], out["k_scale"], out.get("v"), out.get("v_scale"),
                     out.get("qk_bias"), nq, nk, d, p.D)


# Kernel parameters of the two passes (templates/quant/quant.cu.j2), codes as in launch.Params.
# stats: k + (batch, head, token) strides, v + strides, H n d rows_per_split, ksum vamax
STATS_PARAMS = L.Params("pqqq pqqq iiii pp")
# qkv: q, k, v + strides, Hq Hkv nq nk d nq_pad nk_pad q_tile q_sub k_tile k_sub splits qk_image, ksum vamax,
# q8 q_scale k8 k_scale v_out v_scale qk_bias
QKV_PARAMS = L.Params("pqqq pqqq pqqq iiiiiiiiiiiii pp ppppppp")
# The buffers the passes use, in QuantPlan.launch's order; quantize() and eager.py pass their addresses (0: absent).
BUFFERS = ("ksum", "vamax", "q8", "q_scale", "k8", "k_scale", "v", "v_scale", "qk_bias")


def v_buffers(v_mode: str, B: int, Hkv: int, nk_pad: int, D: int) -> dict:
    """The V buffers (name -> (shape, dtype)) a V mode writes: "v" and, for 8-bit V, "v_scale". Also the fake
    kernel's shapes (ops.py), so sizes may be SymInts."""
    if v_mode == "f16":
        return {"v": ((B, Hkv, nk_pad, D), torch.float16)}
    if v_mode == "e4m3t":
        return {"v": ((B, Hkv, D, nk_pad), torch.float8_e4m3fn), "v_scale": ((B, Hkv, D), torch.float32)}
    if v_mode == "e4m3w":
        return {"v": ((B, Hkv, nk_pad // N_ALIGN, D, N_ALIGN), torch.float8_e4m3fn),
                "v_scale": ((B, Hkv, D), torch.float32)}
    if v_mode == "i8w":
        return {"v": ((B, Hkv, nk_pad // N_ALIGN, D, N_ALIGN), torch.uint8), "v_scale": ((B, Hkv, D), torch.float32)}
    if v_mode == "f16w":
        return {"v": ((B, Hkv, nk_pad // N_ALIGN, D // V_SLAB, N_ALIGN, V_SLAB), torch.float16)}
    if v_mode == "none":
        return {}
    raise ValueError(f"unknown v_mode {v_mode!r}")


class QuantPlan:
    """What the two passes need for one shape: variants, grids, scalar arguments, and the buffers they write
    (``buffers``: name -> (shape, dtype)), also laid out in one workspace (``offsets``, ``workspace_bytes``: every
    buffer but qk_bias, which the LSE correction reads as a tensor). Built once per shape (quant_plan)."""

    def __init__(self, arch: str, x: str, B: int, Hq: int, Hkv: int, nq: int, nk: int, d: int,
                 q_groups: ScaleGroups, k_groups: ScaleGroups, v_mode: str, with_qk_bias: bool, qk_image: bool):
        D = padded_dim(d)
        nq_pad, nk_pad = padded_len(nq), padded_len(nk)
        rows_per_split = max(N_ALIGN, -(-nk // _STATS_SPLITS))
        scaled_v = v_mode in SCALED_V_MODES  # 8-bit V: per-channel scales from V's amax (the stats pass's)
        # Every key in one chunk and no Q.mean(K) to compute: the qkv pass's K and V CTAs take the statistics from
        # their own rows (splits = 0), one launch instead of two (the hot path of short sequences).
        self.local_stats = nk <= N_ALIGN and not with_qk_bias
        splits = 0 if self.local_stats else -(-nk // rows_per_split)
        self.D = D
        self.stats = _quant_spec(arch, "stats", x, "e4m3t" if scaled_v else "none", D)  # e4m3w, i8w: same amax
        self.qkv = _quant_spec(arch, "qkv", x, v_mode, D)
        self.stats_grid = (splits, Hkv, B)
        self.stats_ints = (Hkv, nk, d, rows_per_split)
        self.qkv_grid = (max(Hq * nq_pad, Hkv * nk_pad) // N_ALIGN, 3, B)
        self.qkv_ints = (Hq, Hkv, nq, nk, d, nq_pad, nk_pad, q_groups.tile, q_groups.sub, k_groups.tile,
                         k_groups.sub, splits, 1 if qk_image else 0)
        f32 = torch.float32
        buffers = {}
        if not self.local_stats:
            buffers["ksum"] = ((B, Hkv, splits, D), f32)
            if scaled_v:
                buffers["vamax"] = ((B, Hkv, splits, D), f32)
        buffers["q8"] = ((B, Hq, nq_pad, D), torch.int8)
        buffers["q_scale"] = ((B, Hq, q_groups.count(nq)), f32)
        buffers["k8"] = ((B, Hkv, nk_pad, D), torch.int8)
        buffers["k_scale"] = ((B, Hkv, k_groups.count(nk)), f32)
        buffers.update(v_buffers(v_mode, B, Hkv, nk_pad, D))
        if with_qk_bias:
            buffers["qk_bias"] = ((B, Hq, nq), f32)
        self.buffers = buffers
        inner = [name for name in BUFFERS if name in buffers and name != "qk_bias"]
        offsets, self.workspace_bytes = carve([_nbytes(*buffers[name]) for name in inner])
        self.offsets = dict(zip(inner, offsets))

    def launch(self, device: int, stream: int, q: int, qs, k: int, ks, v: int, vs, ksum: int, vamax: int, q8: int,
               q_scale: int, k8: int, k_scale: int, v_out: int, v_scale: int, qk_bias: int) -> None:
        """Both passes (the qkv pass alone with local_stats) on ``stream``. q, k, v and the buffers are device
        addresses (0: absent); qs, ks, vs the inputs' (batch, head, token) strides in elements."""
        if not self.local_stats:
            L.launch(self.stats, STATS_PARAMS, self.stats_grid, QuantSpec.THREADS, 0, device, stream,
                     k, *ks, v, *vs, *self.stats_ints, ksum, vamax)
        L.launch(self.qkv, QKV_PARAMS, self.qkv_grid, QuantSpec.THREADS, 0, device, stream,
                 q, *qs, k, *ks, v, *vs, *self.qkv_ints, ksum, vamax, q8, q_scale, k8, k_scale, v_out, v_scale, qk_bias)


def _nbytes(shape, dtype) -> int:
    return math.prod(shape) * dtype.itemsize


@functools.lru_cache(maxsize=1024)
def quant_plan(arch: str, x: str, B: int, Hq: int, Hkv: int, nq: int, nk: int, d: int, q_groups: ScaleGroups,
               k_groups: ScaleGroups, v_mode: str, with_qk_bias: bool, qk_image: bool) -> QuantPlan:
    return QuantPlan(arch, x, B, Hq, Hkv, nq, nk, d, q_groups, k_groups, v_mode, with_qk_bias, qk_image)
