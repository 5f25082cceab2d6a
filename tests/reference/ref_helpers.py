"""Shared helpers of the reference tests: seeded inputs and an independent naive attention."""
from __future__ import annotations

import math

import torch


def randn(seed: int, *shape, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def qkv(seed: int, b=1, hq=2, hkv=None, nq=256, nk=None, d=64, dv=None, dtype=torch.float16):
    hkv = hq if hkv is None else hkv
    nk = nq if nk is None else nk
    dv = d if dv is None else dv
    return (randn(seed, b, hq, nq, d, dtype=dtype), randn(seed + 1, b, hkv, nk, d, dtype=dtype),
            randn(seed + 2, b, hkv, nk, dv, dtype=dtype))


def naive_attention(q, k, v, *, causal=False, align="bottom_right", sm_scale=None):
    """softmax(q k^T) v in fp64 with K/V heads repeated for GQA: written independently of sagegen.reference."""
    q, k, v = (t.double() for t in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    sm_scale = 1 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    s = q @ k.transpose(-1, -2) * sm_scale
    nq, nk = s.shape[-2:]
    if causal:
        shift = 0 if align == "top_left" else nk - nq
        allowed = torch.ones(nq, nk, dtype=torch.bool).tril(diagonal=shift)
        s = s.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    out = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0) @ v
    return out, lse
