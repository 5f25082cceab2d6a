"""SageAttention2++ emulation: SageAttention2's Q.K^T, then FP8 P.V with the 2x faster fp16-accumulating mma
(mma.sync m16n8k32 e4m3 -> f16). The fp16 accumulator is rounded after every 32-key k-step and added into the fp32
output once per key block; V's per-channel fp8 range is narrowed to v_max so that it cannot overflow
(fp16_accum_v_max derives the bound: 2.25 for block_n = 64).
"""
from __future__ import annotations

import torch

from ._intqk import fp16_accum_v_max, int_qk_attention
from .sage2 import qk_bits_of

__all__ = ["sage2pp_attention", "fp16_accum_v_max"]


def sage2pp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    causal_align: str = "bottom_right",
    sm_scale: float | None = None,
    layout: str = "HND",
    qk_format: str | int = "int8",
    granularity: str = "thread",
    block_m: int = 128,
    warp_m: int = 32,
    block_n: int = 64,
    smooth_k: bool = True,
    smooth_q: bool = False,
    v_max: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out fp32 in q's layout, lse [B, Hq, Nq] fp32). Options as sage2_attention; v_max (default
    fp16_accum_v_max(block_n)) must not exceed that bound, else ValueError."""
    return int_qk_attention(
        q, k, v, causal=causal, causal_align=causal_align, sm_scale=sm_scale, layout=layout,
        qk_bits=qk_bits_of(qk_format), granularity=granularity, block_m=block_m, warp_m=warp_m, block_n=block_n,
        smooth_k=smooth_k, smooth_q=smooth_q, pv="fp8", pv_accum="fp16", v_max=v_max,
    )
