"""The online-softmax loop every emulation shares, and the P.V accumulator models.

The loop runs over key blocks of ``block_n`` tokens in ascending order, exactly like a kernel's inner loop, but
handles every query row of every head at once (each row's online softmax is independent of the others, so this
is the kernel's arithmetic in the kernel's order). Query rows are laid out [B, Hkv, R = G * M_pad, .]: the G
query heads of a kv head folded into rows, so GQA never copies K or V.

Per key block (base-2 softmax, sm_scale * log2(e) folded in; m, l, o per row, fp32):
    t = s * (sm_scale * log2 e), masked to -inf      m' = max(m, rowmax t)
    p = exp2(t - m')      alpha = exp2(m - m')        l = alpha * l + rowsum p (fp32 p, before P is quantized)
    o = pv(p, o * alpha)                               out = o / l, lse = (m + log2 l) * ln 2
A row with no visible key yet has m = -inf; it is treated as m = 0 so exp2 gives 0 instead of NaN.
"""
from __future__ import annotations

from typing import Callable

import torch

from ._common import LN2, LOG2E, causal_mask
from .formats import round_fp16, round_mantissa

ScoreFn = Callable[[int, int], torch.Tensor]
PvFn = Callable[[torch.Tensor, int, int, torch.Tensor], torch.Tensor]


def online_attention(
    score_fn: ScoreFn,
    pv_fn: PvFn,
    *,
    rows: int,
    m_pad: int,
    dv: int,
    lead: tuple[int, int],
    n_q: int,
    n_kv: int,
    block_n: int,
    offset: int | None,
    sm_scale: float,
    device,
    l_column_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out [*lead, rows, dv] fp32, lse [*lead, rows] fp32 natural log).

    score_fn(j0, j1) -> fp32 [*lead, rows, j1 - j0] raw scores (before sm_scale) of keys j0..j1-1.
    pv_fn(p, j0, j1, o) -> o plus the block's P.V, p the fp32 probabilities [*lead, rows, j1 - j0].
    rows = G * m_pad; row r is query r % m_pad. Keys are visited in blocks up to the last one any valid query sees.
    l_column_scale: None sums l from the fp32 p. Otherwise the row sum comes out of the P.V product itself (a kernel
    that appends a column of ones to V): pv_fn returns dv + 1 columns, the last one the running sum of the
    quantized P, and l = that column * l_column_scale.
    """
    c = sm_scale * LOG2E
    m = torch.full((*lead, rows), float("-inf"), dtype=torch.float32, device=device)
    l = torch.zeros((*lead, rows), dtype=torch.float32, device=device)
    o = torch.zeros((*lead, rows, dv + (l_column_scale is not None)), dtype=torch.float32, device=device)
    qpos = torch.arange(rows, device=device) % m_pad
    last_key = n_kv if offset is None else min(n_kv, n_q + offset)  # keys past it are masked for every query
    m_safe = torch.zeros_like(m)
    for j0 in range(0, max(last_key, 0), block_n):
        j1 = j0 + block_n
        t = score_fn(j0, j1) * c
        t = t.masked_fill(causal_mask(qpos, torch.arange(j0, j1, device=device), offset, n_kv), float("-inf"))
        m_new = torch.maximum(m, t.amax(dim=-1))
        m_safe = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        p = torch.exp2(t - m_safe[..., None])
        alpha = torch.exp2(m - m_safe)
        if l_column_scale is None:
            l = l * alpha + p.sum(dim=-1)
        o = pv_fn(p, j0, j1, o * alpha[..., None])
        m = m_new
    if l_column_scale is not None:
        l, o = o[..., -1] * l_column_scale, o[..., :-1]
    has = l > 0
    out = torch.where(has[..., None], o / torch.where(has, l, torch.ones_like(l))[..., None], torch.zeros_like(o))
    lse = torch.where(has, (m_safe + torch.log2(torch.where(has, l, torch.ones_like(l)))) * LN2,
                      torch.full_like(l, float("-inf")))
    return out, lse


def accumulate_pv(
    p: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    *,
    k_step: int,
    flush_keys: int,
    round_acc: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """o + p @ v through a low-precision inner accumulator.

    p [*lead, R, bn] and v [*lead, bn, dv] hold the (already quantized) operand values in fp32. The products of
    each mma k-step of ``k_step`` keys are summed in fp32 (what one mma instruction does internally, modelled as
    exact), added into the inner accumulator, and the accumulator is rounded by ``round_acc``; every
    ``flush_keys`` keys it is added into the fp32 ``o`` and restarted. round_acc None: plain fp32 accumulation.
    """
    if round_acc is None:
        return o + torch.matmul(p, v)
    bn = p.shape[-1]
    acc = None
    for s0 in range(0, bn, k_step):
        part = torch.matmul(p[..., s0:s0 + k_step], v[..., s0:s0 + k_step, :])
        acc = round_acc(part if acc is None else acc + part)
        if (s0 + k_step) % flush_keys == 0 or s0 + k_step >= bn:
            o = o + acc
            acc = None
    return o


def accumulator(kind: str, *, mantissa_bits: int | None = None, rounding: str = "truncate"):
    """The round_acc function of an inner accumulator: "fp32" (None), "fp16", or "reduced" (fp32 exponent with
    ``mantissa_bits`` mantissa bits, rounded by ``rounding``)."""
    if kind == "fp32":
        return None
    if kind == "fp16":
        return round_fp16
    if kind == "reduced":
        if mantissa_bits is None or mantissa_bits >= 23:
            return None
        return lambda x: round_mantissa(x, mantissa_bits, rounding)
    raise ValueError(f"accumulator kind must be 'fp32', 'fp16' or 'reduced', got {kind!r}")
