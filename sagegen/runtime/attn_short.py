"""Run one attn_short variant: a single launch that quantizes and attends (nk <= 128), on torch's stream."""
from __future__ import annotations

import torch

from ..quant_layout import padded_len
from ..variants.attn_short import MAX_KEYS, AttnShortSpec
from . import launch as L
from .attn_mma import LOG2E, OUT_DTYPES

IN_DTYPES = OUT_DTYPES  # the spec's x tag -> torch dtype
from .device import stream_handle
from .quant import _vector_ready, bhnd_strides

# Kernel parameters (templates/attn_mma/attn_short.cu.j2), codes as in launch.Params: q, k, v, o + (batch, head,
# token) strides, lse, Hq Hkv nq nk d, sm_scale_log2, causal_offset
PARAMS = L.Params("pqqq pqqq pqqq pqqq p iiiii f i")


def check_keys(nk: int) -> None:
    if nk > MAX_KEYS:
        raise ValueError(f"attn_short variants hold at most {MAX_KEYS} keys, got nk={nk} (use attn_mma)")


class ShortLaunch:
    """One shape's launch, everything but the per-call values fixed once (eager.py keeps one per plan):
    ``launch(device, stream, q, qs, k, ks, v, vs, out, lse, sm_scale)``, addresses as ints (lse 0: none), strides
    (batch, head, token) in elements; inputs 16-byte vector ready (quant._vector_ready)."""

    def __init__(self, spec: AttnShortSpec, B: int, Hq: int, Hkv: int, nq: int, nk: int, d: int, out_strides,
                 causal_offset: int):
        if spec.family != "attn_short":  # another family's kernel takes other parameters: never launch it here
            raise TypeError(f"attn_short launches attn_short variants, got {spec.name}")
        check_keys(nk)
        self.spec, self.grid = spec, (padded_len(nq) // spec.m, Hq, B)
        self.threads, self.smem = spec.threads, spec.smem_bytes()
        self.out_strides, self.causal_offset = tuple(out_strides), causal_offset
        self.ints = (Hq, Hkv, nq, nk, d)
        self._bound: dict[int, L.Bound] = {}

    def bound(self, device: int) -> L.Bound:
        """The launch on ``device`` (eager.DirectShort calls it with the arguments __call__ packs)."""
        b = self._bound.get(device)
        if b is None:
            b = self._bound[device] = L.Bound(self.spec, PARAMS, self.grid, self.threads, self.smem, device)
        return b

    def __call__(self, device: int, stream: int, q: int, qs, k: int, ks, v: int, vs, out: int, lse: int,
                 sm_scale: float) -> None:
        bound = self.bound(device)
        os, ints = self.out_strides, self.ints
        bound(stream, q, qs[0], qs[1], qs[2], k, ks[0], ks[1], ks[2], v, vs[0], vs[1], vs[2], out, os[0], os[1], os[2],
              lse, ints[0], ints[1], ints[2], ints[3], ints[4], sm_scale * LOG2E, self.causal_offset)


def forward(q, k, v, spec: AttnShortSpec, *, layout: str, sm_scale: float, causal_offset: int = 0,
            return_lse: bool = False, out: torch.Tensor | None = None):
    """Attention with ``spec``; inputs 4-D in ``layout`` (HND: [B, H, N, d]; NHD: [B, N, H, d]), k and v at most
    MAX_KEYS long. Returns (o, lse): o in q's layout and ``spec.o`` dtype (written into ``out`` if given: any
    strides, last dim contiguous); lse [B, Hq, nq] fp32 or None."""
    q, k, v = _vector_ready(q), _vector_ready(k), _vector_ready(v)
    hd, nd = (1, 2) if layout == "HND" else (2, 1)
    B, Hq, nq, d = q.shape[0], q.shape[hd], q.shape[nd], q.shape[3]
    Hkv, nk = k.shape[hd], k.shape[nd]
    # attention() checked all this; a direct op call must not reinterpret another dtype's bits or drop channels
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype != IN_DTYPES[spec.x]:
            raise TypeError(f"{spec.name} reads {spec.x} inputs; {name} is {t.dtype}")
    if d > spec.d:
        raise ValueError(f"{spec.name} is compiled for head dim <= {spec.d}; q has {d}")
    if out is None:
        out = torch.empty(q.shape, device=q.device, dtype=OUT_DTYPES[spec.o])
    lse = torch.empty(B, Hq, nq, device=q.device, dtype=torch.float32) if return_lse else None
    idx = q.device.index if q.device.index is not None else torch.cuda.current_device()
    launch = ShortLaunch(spec, B, Hq, Hkv, nq, nk, d, bhnd_strides(out, layout), causal_offset)
    launch(idx, stream_handle(q.device), q.data_ptr(), bhnd_strides(q, layout), k.data_ptr(), bhnd_strides(k, layout),
           v.data_ptr(), bhnd_strides(v, layout), out.data_ptr(), 0 if lse is None else lse.data_ptr(), sm_scale)
    return out, lse
