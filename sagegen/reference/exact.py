"""Exact attention in fp64 (or fp32): the ground truth every kernel and every emulation is measured against.

Computed in query chunks, so a 32k x 32k score matrix is never held at once; runs wherever the tensors are.
"""
from __future__ import annotations

import torch

from ._common import causal_mask, causal_offset, check_qkv, from_hnd, resolve_sm_scale

# Score elements held at once per chunk (fp64: 8 bytes each, twice over for scores and probabilities).
DEFAULT_CHUNK_ELEMS = 1 << 24


def attention_exact(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    causal_align: str = "bottom_right",
    sm_scale: float | None = None,
    layout: str = "HND",
    dtype: torch.dtype = torch.float64,
    chunk_elems: int = DEFAULT_CHUNK_ELEMS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(sm_scale * q k^T [+ causal mask]) v, and its log-sum-exp.

    q: [B, Hq, Nq, d], k: [B, Hkv, Nk, d], v: [B, Hkv, Nk, dv] (``layout="NHD"``: [B, N, H, d]); Hq must be a
    multiple of Hkv (query head h reads kv head h // (Hq // Hkv)). sm_scale defaults to 1/sqrt(d).
    Returns out in ``dtype`` with q's layout and shape [.., dv], and lse [B, Hq, Nq] (natural log, ``dtype``).
    A query that sees no key (bottom-right causal with Nq > Nk) gets out = 0 and lse = -inf.
    """
    q, k, v = check_qkv(q, k, v, layout)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if isinstance(chunk_elems, bool) or not isinstance(chunk_elems, int) or chunk_elems < 1:
        raise ValueError(f"chunk_elems must be a positive int, got {chunk_elems!r}")
    B, Hq, Nq, d = q.shape
    Hkv, Nk, dv = k.shape[1], k.shape[2], v.shape[-1]
    G = Hq // Hkv
    scale = resolve_sm_scale(sm_scale, d)
    offset = causal_offset(causal, causal_align, Nq, Nk)

    qg = q.view(B, Hkv, G, Nq, d) if q.is_contiguous() else q.reshape(B, Hkv, G, Nq, d)
    kt = k.to(dtype).transpose(-1, -2)  # [B, Hkv, d, Nk]; converted once, read by every chunk
    vv = v.to(dtype)
    out = torch.empty(B, Hkv, G, Nq, dv, dtype=dtype, device=q.device)
    lse = torch.empty(B, Hkv, G, Nq, dtype=dtype, device=q.device)
    cols = torch.arange(Nk, device=q.device)
    rows_per_chunk = max(1, chunk_elems // (B * Hq * Nk))
    for i0 in range(0, Nq, rows_per_chunk):
        i1 = min(Nq, i0 + rows_per_chunk)
        r = i1 - i0
        # Fold the G query heads of a kv head into the row dim: one matmul per kv head, K never expanded.
        qc = qg[:, :, :, i0:i1].to(dtype).reshape(B, Hkv, G * r, d)
        s = torch.matmul(qc, kt).mul_(scale).view(B, Hkv, G, r, Nk)
        if offset is not None:
            s.masked_fill_(causal_mask(torch.arange(i0, i1, device=q.device), cols, offset, Nk), float("-inf"))
        m = s.amax(dim=-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # fully masked row: exp(-inf - 0) = 0
        p = torch.exp(s.sub_(m))
        l = p.sum(dim=-1, keepdim=True)
        o = torch.matmul(p.view(B, Hkv, G * r, Nk), vv).view(B, Hkv, G, r, dv)
        out[:, :, :, i0:i1] = torch.where(l > 0, o / l, torch.zeros_like(o))
        lse[:, :, :, i0:i1] = (m + torch.log(l)).squeeze(-1)  # log(0) = -inf for rows with no key
    return from_hnd(out.view(B, Hq, Nq, dv), layout), lse.view(B, Hq, Nq)
