"""SageAttention1 emulation: K smoothing, INT8 per-block Q and K, FP16 P.V.

Q gets one scale per block of ``block_m`` query rows and K one per block of ``block_n`` keys (the kernel's tiles:
ScaleGroups(block_m) / ScaleGroups(block_n)). P and V are rounded to fp16 and multiplied with fp32 accumulation
(pv_accum="fp32"), or with an fp16 accumulator rounded after every m16n8k16 k-step of 16 keys and added into the
fp32 output once per key block (pv_accum="fp16", the paper's faster variant).
"""
from __future__ import annotations

import torch

from ._intqk import int_qk_attention


def sage1_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    causal_align: str = "bottom_right",
    sm_scale: float | None = None,
    layout: str = "HND",
    block_m: int = 128,
    block_n: int = 64,
    pv_accum: str = "fp32",
    smooth_k: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out fp32 in q's layout, lse [B, Hq, Nq] fp32 natural log). See exact.attention_exact for shapes,
    GQA and causal alignment. block_m, block_n: multiples of 8 (block_n of 16) dividing 128."""
    return int_qk_attention(
        q, k, v, causal=causal, causal_align=causal_align, sm_scale=sm_scale, layout=layout, qk_bits=8,
        granularity="block", block_m=block_m, warp_m=block_m, block_n=block_n, smooth_k=smooth_k, smooth_q=False,
        pv="fp16", pv_accum=pv_accum,
    )
