"""SageAttention3 emulation: NVFP4 (FP4 e2m1 values in 1x16 blocks along the reduction dim, e4m3 block scales
amax / 6) for Q, K, V and P, as the Blackwell block-scaled mma (mxf4nvf4, fp32 accumulation) consumes them.

  Q, K: blocks of 16 channels of one token (the reduction dim of Q.K^T), after the smoothing of SageAttention2
        (K: per-channel token mean, softmax-invariant; Q: per-block mean, its scores mean_q . k_s added back).
  V:    blocks of 16 tokens of one channel (the reduction dim of P.V).
  P:    two-level scaling. Per row and key block, s1 = rowmax(p) / (448 * 6) stretches p to [0, 2688] so that
        the per-16 e4m3 scales amax / 6 use e4m3's whole range [.., 448] instead of being stuck below 1/6 (where
        e4m3 is subnormal and coarse); the block's P.V is multiplied by s1 in fp32. p_two_level=False quantizes p
        directly, for comparison.
Every dequantized product (e2m1 x e4m3) is exact in fp32, so dequantize-then-fp32-matmul equals the hardware's
block-scaled dot product up to fp32 summation order.
"""
from __future__ import annotations

import torch

from ..quant_layout import E4M3_MAX, padded_dim
from ._common import causal_offset, check_qkv, from_hnd, resolve_sm_scale
from ._engine import online_attention
from ._intqk import check_block, lse_smoothing_correction
from .formats import E2M1_MAX, fdiv
from .quant import pad_fp32, q_smoothing_bias, quantize_nvfp4, smooth_pad

P_SCALE_TARGET = E4M3_MAX * E2M1_MAX  # 2688: row max of p after the first level of scaling


def quantize_p_nvfp4(p: torch.Tensor, two_level: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dequantized NVFP4 p without the row factor, per-row factor s1 [.., 1] or None) for p [.., R, keys]."""
    if not two_level:
        return quantize_nvfp4(p, dim=-1).dequantize(), None
    s1 = fdiv(p.amax(dim=-1, keepdim=True), P_SCALE_TARGET)
    p2 = torch.where(s1 > 0, p / torch.where(s1 > 0, s1, torch.ones_like(s1)), torch.zeros_like(p))
    return quantize_nvfp4(p2, dim=-1).dequantize(), s1


def sage3_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    causal_align: str = "bottom_right",
    sm_scale: float | None = None,
    layout: str = "HND",
    block_m: int = 128,
    block_n: int = 128,
    smooth_k: bool = True,
    smooth_q: bool = True,
    p_two_level: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out fp32 in q's layout, lse [B, Hq, Nq] fp32 natural log). block_m (Q smoothing blocks) and
    block_n (key blocks; P's 16-blocks lie inside them) are multiples of 16 dividing 128."""
    q, k, v = check_qkv(q, k, v, layout)
    block_m = check_block(block_m, "block_m", 16)
    block_n = check_block(block_n, "block_n", 16)
    for name, flag in (("smooth_k", smooth_k), ("smooth_q", smooth_q), ("p_two_level", p_two_level)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be bool, got {type(flag).__name__}")
    B, Hq, Nq, d = q.shape
    Hkv, Nk, dv = k.shape[1], k.shape[2], v.shape[-1]
    G = Hq // Hkv
    D, Dv = padded_dim(d), padded_dim(dv)
    scale = resolve_sm_scale(sm_scale, d)
    offset = causal_offset(causal, causal_align, Nq, Nk)

    q_s, mean_q = smooth_pad(q, block_m if smooth_q else False)
    k_s, mean_k = smooth_pad(k, smooth_k)
    Mp, Kp = q_s.shape[2], k_s.shape[2]
    rows = G * Mp
    qd = quantize_nvfp4(q_s, dim=-1).dequantize().reshape(B, Hkv, rows, D)
    kd = quantize_nvfp4(k_s, dim=-1).dequantize()
    vd = quantize_nvfp4(pad_fp32(v.float(), Kp, Dv), dim=-2).dequantize()
    mean_qg = mean_q.reshape(B, Hkv, G, Mp // block_m, D) if smooth_q else None

    def score(j0: int, j1: int) -> torch.Tensor:
        s = torch.matmul(qd, kd[:, :, j0:j1].transpose(-1, -2))
        if mean_qg is not None:
            ds = q_smoothing_bias(mean_qg, k_s[:, :, j0:j1])
            s = s + ds.repeat_interleave(block_m, dim=3).reshape(B, Hkv, rows, j1 - j0)
        return s

    def pv_fn(p: torch.Tensor, j0: int, j1: int, o: torch.Tensor) -> torch.Tensor:
        pq, s1 = quantize_p_nvfp4(p, p_two_level)
        part = torch.matmul(pq, vd[:, :, j0:j1])
        return o + (part if s1 is None else part * s1)

    out, lse = online_attention(score, pv_fn, rows=rows, m_pad=Mp, dv=Dv, lead=(B, Hkv), n_q=Nq, n_kv=Nk,
                                block_n=block_n, offset=offset, sm_scale=scale, device=q.device)
    out = out.reshape(B, Hq, Mp, Dv)[:, :, :Nq, :dv]
    lse = lse.reshape(B, Hq, Mp)[:, :, :Nq]
    if smooth_k:
        lse = lse + lse_smoothing_correction(q, mean_k, scale)
    return from_hnd(out, layout), lse
