"""SageAttention2 emulation: INT8 or INT4 Q.K^T at per-block / per-warp / per-thread granularity, optional Q
smoothing, FP8 P.V with two-level accumulation (or FP16 P.V, the paper's kernels for GPUs without FP8 mma).

Row -> scale maps (sagegen.quant_layout.ScaleGroups, index = (row // tile) * sub + (row % 8) // (8 // sub)):

  granularity   Q groups                       K groups
  block         ScaleGroups(block_m)           ScaleGroups(block_n)
  warp          ScaleGroups(warp_m)            ScaleGroups(block_n)  (every warp reads the whole K tile)
  thread        ScaleGroups(warp_m, sub=8)     ScaleGroups(block_n, sub=4)

Why "thread" is sub 8 / sub 4: the accumulator fragment of mma.sync m16n8k32 (and m16n8k64 for INT4: the C
fragment does not depend on k) gives lane t rows t//4 and t//4 + 8 of each 16-row tile and columns 2(t%4), 2(t%4)+1
of each 8-column chunk. So the Q rows one lane multiplies are those with equal row % 8 (8 scales per warp tile)
and the K rows (score columns) those with equal (row % 8) // 2 (4 scales per key block). With per-thread scales
the dequantization is one multiply per accumulator register, no shuffles.

mma.sync kernels: a warp owns warp_m query rows (16, or 32 when it issues two m16 tiles); tile = warp_m.
wgmma m64nNk32 kernels: a warpgroup owns 64 rows and warp w of it rows 16w..16w+15 with the same per-lane fragment
as mma.sync, so warp_m = 16 (block_m = 64 per warpgroup); K's columns follow the same 8-column pattern for any N,
so K is ScaleGroups(block_n, 4) again. Typical configurations: Ada mma.sync block_m=128, warp_m=32, block_n=64;
Hopper wgmma block_m=64, warp_m=16, block_n=128.

Q smoothing (smooth_q): each block of block_m query rows has its per-channel mean subtracted before quantization;
the removed scores mean_q . k_s (k_s the smoothed fp32 K) are added back to every score in fp32.
"""
from __future__ import annotations

import torch

from ._intqk import int_qk_attention

QK_FORMATS = {"int8": 8, "int4": 4}


def qk_bits_of(qk_format) -> int:
    """'int8' -> 8, 'int4' -> 4; an int passes through (other widths exist for convergence studies only)."""
    if isinstance(qk_format, str):
        if qk_format not in QK_FORMATS:
            raise ValueError(f"qk_format must be one of {tuple(QK_FORMATS)} or an int bit width, got {qk_format!r}")
        return QK_FORMATS[qk_format]
    if isinstance(qk_format, bool) or not isinstance(qk_format, int):
        raise TypeError(f"qk_format must be a str or an int, got {type(qk_format).__name__}")
    return qk_format


def sage2_attention(
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
    pv: str = "fp8",
    pv_accum: str = "fp32",
    inner_keys: int | None = None,
    inner_bits: int | None = 13,
    inner_rounding: str = "truncate",
    row_sum: str = "p",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out fp32 in q's layout, lse [B, Hq, Nq] fp32 natural log).

    qk_format: "int8" or "int4" (symmetric [-7, 7]). pv: "fp8" (P~ = e4m3(448 p), V e4m3 per channel), "int8"
    (P~ = round(255 p / p_b), p_b each block row's largest p; V INT8 per channel; exact accumulation: a study, no
    kernel), "fp16",
    or "fp32" (unquantized, isolates the Q.K error). pv_accum for "fp8": "fp32" is the two-level accumulation
    (inner accumulator with ``inner_bits`` mantissa bits -- 13 = FP22, None = exact fp32 -- rounded by
    ``inner_rounding`` after each 32-key k-step and flushed into the fp32 output every ``inner_keys`` keys,
    default block_n); "fp16" is SageAttention2++ (see sage2pp). row_sum: "p" (the softmax denominator sums the fp32
    probabilities) or "pv" (it comes out of the P.V MMA through a column of ones in V: the sum of the quantized
    P). For "fp16" P.V, pv_accum picks fp32 or an fp16 accumulator flushed per key block.
    """
    return int_qk_attention(
        q, k, v, causal=causal, causal_align=causal_align, sm_scale=sm_scale, layout=layout,
        qk_bits=qk_bits_of(qk_format), granularity=granularity, block_m=block_m, warp_m=warp_m, block_n=block_n,
        smooth_k=smooth_k, smooth_q=smooth_q, pv=pv, pv_accum=pv_accum, inner_keys=inner_keys,
        inner_bits=inner_bits, inner_rounding=inner_rounding, row_sum=row_sum,
    )
