"""The common core of SageAttention1, 2 and 2++: integer Q.K^T with the contract's scale groups, then one of the
P.V paths. The public wrappers (sage1.py, sage2.py, sage2pp.py) fix the options each paper's scheme uses.

Scores: s = float(q_q . k_q) * (q_scale[row] * k_scale[col]) [+ mean_q . k_s when Q is smoothed], fp32.
The integer dot product is exact: with d <= 256 and |x_q| <= 127 every partial sum is below 2^24, so an fp32
matmul (TF32 included: 8-bit integers are exact in it) computes it without rounding.

P.V paths (k-step = keys per mma instruction: 16 for fp16 m16n8k16, 32 for e4m3 m16n8k32):
  "fp32": P and V unquantized, fp32 accumulation (isolates the Q.K error; no kernel does this).
  "fp16": P and V rounded to fp16; pv_accum "fp32" accumulates in fp32, "fp16" rounds an fp16 accumulator after
          every k-step and adds it into the fp32 output once per key block.
  "int8": INT8 P.V (the attn_wgmma family's pv=i8, the "balanced" precision: a u8 x u8 wgmma with V stored + 128;
          the same sums). Each row
          of a key block is quantized against its own largest probability p_b = max(max_j p_j, 2^-60):
          P~ = round(fp16(255 p / p_b)) (unsigned 8-bit), so every block uses the whole u8 range, however far its
          scores sit below the running max; V is INT8 with per-channel scales amax_c / 127. The integer products of a
          block are exact (int32: 128 * 255 * 127 < 2^31) and enter O times p_b / 255 (a kernel folds p_b into the
          per-row rescale factor it already has). Without the per-block scale (P~ = round(255 p)) the many small
          probabilities of long, peaked rows round to 0: rel-L1 0.11 at 16k keys with q doubled.
  "fp8":  P~ = e4m3(448 * p) (448 "offset": P in [0, 1] uses e4m3's whole range), V e4m3 with per-channel scales
          v_scale = amax_c / v_max; output = o / l * v_scale / 448. pv_accum "fp32" is SageAttention2's two-level
          accumulation: an inner accumulator of ``inner_bits`` mantissa bits (13: the FP22 accumulator the paper
          measured for FP8 mma) rounded after every k-step and flushed into fp32 every ``inner_keys`` keys;
          pv_accum "fp16" is SageAttention2++'s fp16 accumulator, flushed once per key block.
LSE: K smoothing removes sm_scale * q . mean_k from every score of a row; it is added back (fp32, from the
unquantized q), so the LSE matches exact attention's.
"""
from __future__ import annotations

import torch

from ..quant_layout import E4M3_MAX, GRANULARITIES, N_ALIGN, k_groups, padded_dim, q_groups
from ._common import (causal_offset, check_choice, check_int, check_qkv, from_hnd, resolve_sm_scale)
from ._engine import accumulate_pv, accumulator, online_attention
from .formats import fdiv, int_max, round_e4m3, round_fp16
from .quant import pad_fp32, q_smoothing_bias, quantize_padded, quantize_v_fp8, quantize_v_int8, smooth_pad

PV_MODES = ("fp32", "fp16", "fp8", "int8")
PV_ACCUMS = ("fp32", "fp16")
ROUNDINGS = ("truncate", "nearest")
# Where the softmax denominator comes from: "p" sums the fp32 probabilities (before P is quantized); "pv" takes it
# from the P.V MMA through a column of ones appended to V (it sums the quantized P, in the MMA's accumulator).
ROW_SUMS = ("p", "pv")
P_MAX = E4M3_MAX
U8_MAX = 255.0  # P's scale in the INT8 P.V study
U8_FLOOR = 2.0 ** -60  # a block's scale never goes below this: the kernel's rescale factors stay in fp32's range


def _u8_per_block_row(p: torch.Tensor) -> torch.Tensor:
    """pv="int8"'s P: round(255 p / p_b) * p_b per row of the block (p_b = the row's largest p, at least 2^-60),
    i.e. the u8 values in the units of round(255 p), so the P.V path and the ones-column row sum stay as for
    unscaled P. The rounding is the kernel's (attn_wgmma/softmax_u8.cuh pack_u8x4): to fp16 first, then to the
    nearest integer, ties to even."""
    p_b = p.amax(dim=-1, keepdim=True).clamp(min=U8_FLOOR)
    return torch.round(round_fp16(p * fdiv(U8_MAX, p_b))) * p_b


def check_block(value, name: str, multiple: int) -> int:
    value = check_int(value, name)
    if value % multiple or N_ALIGN % value:
        raise ValueError(f"{name} must be a multiple of {multiple} dividing {N_ALIGN}, got {value}")
    return value


def lse_smoothing_correction(q: torch.Tensor, mean_k: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """sm_scale * q . mean_k, [B, Hq, Nq] fp32, from q [B, Hq, Nq, d] (HND) and mean_k [B, Hkv, 1, D]."""
    B, Hq, Nq, d = q.shape
    Hkv = mean_k.shape[1]
    qf = q.float().reshape(B, Hkv, Hq // Hkv, Nq, d)
    mk = mean_k[:, :, 0, :d, None].unsqueeze(2)  # [B, Hkv, 1, d, 1]
    return (torch.matmul(qf, mk).squeeze(-1) * sm_scale).reshape(B, Hq, Nq)


def int_qk_attention(
    q, k, v, *, causal: bool, causal_align: str, sm_scale, layout: str, qk_bits: int, granularity: str,
    block_m: int, warp_m: int, block_n: int, smooth_k: bool, smooth_q: bool, pv: str, pv_accum: str,
    inner_keys: int | None = None, inner_bits: int | None = 13, inner_rounding: str = "truncate",
    v_max: float | None = None,
    row_sum: str = "p",
) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = check_qkv(q, k, v, layout)
    check_choice(granularity, "granularity", GRANULARITIES)
    check_choice(pv, "pv", PV_MODES)
    check_choice(pv_accum, "pv_accum", PV_ACCUMS)
    check_choice(inner_rounding, "inner_rounding", ROUNDINGS)
    check_choice(row_sum, "row_sum", ROW_SUMS)
    if pv in ("fp32", "int8") and pv_accum != "fp32":
        raise ValueError(f"pv_accum must be 'fp32' when pv is {pv!r} (exact accumulation), got {pv_accum!r}")
    for name, flag in (("smooth_k", smooth_k), ("smooth_q", smooth_q)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be bool, got {type(flag).__name__}")
    qmax = int_max(qk_bits)
    k_step = 32 if pv in ("fp8", "int8") else 16
    block_m = check_block(block_m, "block_m", 8)
    warp_m = check_block(warp_m, "warp_m", 8)
    if block_m % warp_m:
        raise ValueError(f"warp_m ({warp_m}) must divide block_m ({block_m})")
    block_n = check_block(block_n, "block_n", k_step)
    inner_keys = block_n if inner_keys is None else check_block(inner_keys, "inner_keys", 32)
    if block_n % inner_keys:
        raise ValueError(f"inner_keys ({inner_keys}) must divide block_n ({block_n})")
    if inner_bits is not None and (isinstance(inner_bits, bool) or not isinstance(inner_bits, int)
                                   or not 1 <= inner_bits <= 23):
        raise ValueError(f"inner_bits must be None or an int in [1, 23], got {inner_bits!r}")

    B, Hq, Nq, d = q.shape
    Hkv, Nk, dv = k.shape[1], k.shape[2], v.shape[-1]
    G = Hq // Hkv
    D, Dv = padded_dim(d), padded_dim(dv)
    scale = resolve_sm_scale(sm_scale, d)
    offset = causal_offset(causal, causal_align, Nq, Nk)
    dev = q.device

    # --- Q and K: smooth, pad, quantize with the contract's groups -----------------------------------------
    qgr, kgr = q_groups(granularity, block_m, warp_m), k_groups(granularity, block_n)
    q_s, mean_q = smooth_pad(q, block_m if smooth_q else False)
    k_s, mean_k = smooth_pad(k, smooth_k)
    q_q, q_scale = quantize_padded(q_s, qgr, Nq, qmax)
    k_q, k_scale = quantize_padded(k_s, kgr, Nk, qmax)
    Mp, Kp = q_s.shape[2], k_s.shape[2]
    rows = G * Mp
    dot = torch.float32 if qk_bits <= 8 else torch.float64  # exactness of the integer dot product (see top)
    qd = q_q.to(dot).reshape(B, Hkv, rows, D)
    kd = k_q.to(dot)
    q_row = q_scale[..., qgr.index(torch.arange(Mp, device=dev))].reshape(B, Hkv, rows)
    k_col = k_scale[..., kgr.index(torch.arange(Kp, device=dev))]
    mean_qg = mean_q.reshape(B, Hkv, G, Mp // block_m, D) if smooth_q else None

    def score(j0: int, j1: int) -> torch.Tensor:
        acc = torch.matmul(qd, kd[:, :, j0:j1].transpose(-1, -2)).float()
        s = acc * (q_row[..., None] * k_col[:, :, None, j0:j1])
        if mean_qg is not None:
            ds = q_smoothing_bias(mean_qg, k_s[:, :, j0:j1])  # [B, Hkv, G, Mp / block_m, bn]
            s = s + ds.repeat_interleave(block_m, dim=3).reshape(B, Hkv, rows, j1 - j0)
        return s

    # --- V and the P.V path ---------------------------------------------------------------------------------
    out_mul = None
    if pv == "fp32":
        vals, quant_p, round_acc, flush = pad_fp32(v.float(), Kp, Dv), (lambda p: p), None, block_n
    elif pv == "fp16":
        vals, quant_p = pad_fp32(v.half().float(), Kp, Dv), round_fp16
        round_acc, flush = accumulator(pv_accum), block_n
    elif pv == "int8":  # integer products summed exactly (int32 never overflows: 128 * 255 * 127 < 2^31)
        vals, v_scale = quantize_v_int8(v)
        quant_p, round_acc, flush = _u8_per_block_row, None, block_n
        out_mul = fdiv(v_scale, U8_MAX)[:, :, None, :]
    else:
        if v_max is None:
            v_max = P_MAX if pv_accum == "fp32" else fp16_accum_v_max(block_n)
        elif pv_accum == "fp16" and v_max > fp16_accum_v_max(block_n):
            raise ValueError(f"v_max={v_max} lets the fp16 P.V accumulator overflow with block_n={block_n}; "
                             f"the limit is {fp16_accum_v_max(block_n)} (see sage2pp.fp16_accum_v_max)")
        vq = quantize_v_fp8(v, fp8_max=v_max)
        vals, quant_p = vq.values(), (lambda p: round_e4m3(p * P_MAX))
        out_mul = fdiv(vq.scale, P_MAX)[:, :, None, :]
        if pv_accum == "fp32":
            round_acc, flush = accumulator("reduced", mantissa_bits=inner_bits, rounding=inner_rounding), inner_keys
        else:
            round_acc, flush = accumulator("fp16"), block_n

    l_column_scale = None
    if row_sum == "pv":  # a column of ones appended to V: the P.V MMA sums the quantized P (and its accumulator)
        vals = torch.cat([vals, torch.ones_like(vals[..., :1])], dim=-1)
        l_column_scale = {"fp8": 1.0 / P_MAX, "int8": 1.0 / U8_MAX}.get(pv, 1.0)

    def pv_fn(p: torch.Tensor, j0: int, j1: int, o: torch.Tensor) -> torch.Tensor:
        return accumulate_pv(quant_p(p), vals[:, :, j0:j1], o, k_step=k_step, flush_keys=flush, round_acc=round_acc)

    out, lse = online_attention(score, pv_fn, rows=rows, m_pad=Mp, dv=Dv, lead=(B, Hkv), n_q=Nq, n_kv=Nk,
                                block_n=block_n, offset=offset, sm_scale=scale, device=dev,
                                l_column_scale=l_column_scale)
    if out_mul is not None:
        out = out * out_mul
    out = out.reshape(B, Hq, Mp, Dv)[:, :, :Nq, :dv]
    lse = lse.reshape(B, Hq, Mp)[:, :, :Nq]
    if smooth_k:
        lse = lse + lse_smoothing_correction(q, mean_k, scale)
    return from_hnd(out, layout), lse


def fp16_accum_v_max(block_n: int, k_step: int = 32) -> float:
    """Largest e4m3 value V may be scaled to so that SageAttention2++'s fp16 P.V accumulator cannot overflow.

    The accumulator sums one key block (block_n keys) of P~ v with P~ = e4m3(448 p) <= 448 (p <= 1) and
    |v| <= v_max, so |exact partial sum| <= block_n * 448 * v_max. It is rounded to fp16 after each of the
    block_n / k_step k-steps, and each rounding grows a magnitude by at most a factor (1 + 2^-11), so
        block_n * 448 * v_max * (1 + 2^-11)^(block_n / k_step) <= 65504
    keeps it finite. Rounded down onto the e4m3 grid (so the channel's largest element is exactly v_max):
    block_n = 64 -> 2.25 (the value SageAttention2++ uses), 128 -> 1.125, 32 -> 4.5.
    """
    block_n = check_int(block_n, "block_n")
    limit = 65504.0 / (P_MAX * block_n * (1.0 + 2.0 ** -11) ** (block_n / k_step))
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid) & (grid > 0) & (grid <= limit)]
    if grid.numel() == 0:
        raise ValueError(f"block_n={block_n} is too large for an fp16 P.V accumulator")
    return float(grid.max())
