"""Error metrics of an output against a reference, computed in fp64 over all elements.

cosine  = <o, r> / (|o| |r|)                  (1 when both are zero)
rel_l1  = sum |o - r| / sum |r|               (the SageAttention papers' "relative L1")
rmse    = sqrt(mean (o - r)^2)
max_abs = max |o - r|
lse_max_abs = max |lse_o - lse_r| over entries where either is finite (both -inf: the row saw no key, no error)
"""
from __future__ import annotations

import math

import torch


def _pair(out: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for name, t in (("out", out), ("ref", ref)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if out.shape != ref.shape:
        raise ValueError(f"out and ref shapes differ: {tuple(out.shape)} vs {tuple(ref.shape)}")
    if out.numel() == 0:
        raise ValueError("out and ref are empty")
    return out.detach().double().flatten(), ref.detach().to(out.device).double().flatten()


def cosine(out: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = _pair(out, ref)
    no, nr = o.norm().item(), r.norm().item()
    if no == 0 and nr == 0:
        return 1.0
    if no == 0 or nr == 0:
        return 0.0
    return (torch.dot(o, r).item()) / (no * nr)


def rel_l1(out: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = _pair(out, ref)
    num, den = (o - r).abs().sum().item(), r.abs().sum().item()
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return num / den


def rmse(out: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = _pair(out, ref)
    return math.sqrt((o - r).square().mean().item())


def max_abs(out: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = _pair(out, ref)
    return (o - r).abs().max().item()


def lse_max_abs(lse: torch.Tensor, ref: torch.Tensor) -> float:
    o, r = _pair(lse, ref)
    both_empty = torch.isneginf(o) & torch.isneginf(r)
    diff = torch.where(both_empty, torch.zeros_like(o), (o - r).abs())
    return diff.max().item()  # a -inf on one side only gives inf, a NaN gives NaN: both are errors to see


def compare(out: torch.Tensor, ref: torch.Tensor, lse: torch.Tensor | None = None,
            lse_ref: torch.Tensor | None = None) -> dict[str, float]:
    """All metrics in one dict (lse_max_abs only when both LSEs are given)."""
    res = {"cos": cosine(out, ref), "rel_l1": rel_l1(out, ref), "rmse": rmse(out, ref), "max_abs": max_abs(out, ref)}
    if lse is not None and lse_ref is not None:
        res["lse_max_abs"] = lse_max_abs(lse, lse_ref)
    return res
