"""Argument checks, layouts, causal alignment and GQA grouping shared by the exact reference and the emulations."""
from __future__ import annotations

import math
import numbers

import torch

LAYOUTS = ("HND", "NHD")
CAUSAL_ALIGNS = ("top_left", "bottom_right")
LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def to_hnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    """View of x as [B, H, N, d]; NHD input is [B, N, H, d]."""
    return x if layout == "HND" else x.transpose(1, 2)


def from_hnd(x: torch.Tensor, layout: str) -> torch.Tensor:
    return x if layout == "HND" else x.transpose(1, 2).contiguous()


def check_qkv(q, k, v, layout: str):
    """Validate and return (q, k, v) viewed as HND. Raises TypeError/ValueError naming the bad argument."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    spelled = "[B, H, N, d]" if layout == "HND" else "[B, N, H, d]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D {spelled} (layout={layout}), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    q, k, v = (to_hnd(t, layout) for t in (q, k, v))
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, Hq, Nq, d = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"batch sizes differ: q {B}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must agree in batch, heads and length, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[-1] != d:
        raise ValueError(f"q and k head dims differ: {d} vs {k.shape[-1]}")
    Hkv = k.shape[1]
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"q heads ({Hq}) must be a positive multiple of k/v heads ({Hkv}) (GQA/MQA)")
    if Nq == 0 or k.shape[2] == 0 or d == 0 or v.shape[-1] == 0 or B == 0:
        raise ValueError(f"empty input: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    return q, k, v


def resolve_sm_scale(sm_scale, d: int) -> float:
    if sm_scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, numbers.Real):
        raise TypeError(f"sm_scale must be a real number or None, got {type(sm_scale).__name__}")
    if not math.isfinite(sm_scale) or sm_scale <= 0:
        raise ValueError(f"sm_scale must be finite and positive, got {sm_scale}")
    return float(sm_scale)


def causal_offset(causal: bool, causal_align: str, n_q: int, n_kv: int) -> int | None:
    """None when not causal; else the offset o such that query i may attend key j iff j <= i + o.

    top_left: o = 0 (query i sees keys 0..i). bottom_right: o = n_kv - n_q, the last query sees every key (the
    FlashAttention >= 2.1 convention); with n_q > n_kv the first n_q - n_kv queries see no key at all and get
    out = 0, lse = -inf.
    """
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be bool, got {type(causal).__name__}")
    if causal_align not in CAUSAL_ALIGNS:
        raise ValueError(f"causal_align must be one of {CAUSAL_ALIGNS}, got {causal_align!r}")
    if not causal:
        return None
    return 0 if causal_align == "top_left" else n_kv - n_q


def causal_mask(rows: torch.Tensor, cols: torch.Tensor, offset: int | None, n_kv: int) -> torch.Tensor:
    """Boolean [len(rows), len(cols)], True where the score is masked (key past n_kv, or in the causal future)."""
    mask = (cols >= n_kv)[None, :].expand(rows.numel(), cols.numel())
    if offset is not None:
        mask = mask | (cols[None, :] > rows[:, None] + offset)
    return mask


def check_choice(value, name: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_int(value, name: str, *, min_value: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value}")
    return int(value)
