"""Run one mma.sync attention variant: quantization pass, then the attention kernel, on torch's stream."""
from __future__ import annotations

import math

import torch

from ..quant_layout import padded_len
from ..variants.attn_mma import AttnMmaSpec
from . import launch as L
from .device import stream_handle
from .quant import Quantized, _vector_ready, bhnd_strides, quantize, v_mode_for

LOG2E = 1.4426950408889634
OUT_DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


class Prepared:
    """Quantized inputs plus everything the attention launch needs; lets benchmarks time the kernel alone."""

    def __init__(self, q, k, v, spec: AttnMmaSpec, layout: str, return_lse: bool):
        v = _vector_ready(v)
        hd, nd = (1, 2) if layout == "HND" else (2, 1)
        self.B, self.Hq, self.nq, self.d = q.shape[0], q.shape[hd], q.shape[nd], q.shape[3]
        self.Hkv, self.nk = k.shape[hd], k.shape[nd]
        self.layout, self.spec, self.device = layout, spec, q.device
        mode = v_mode_for(v.dtype == torch.float16, self.d)
        self.qz: Quantized = quantize(q, k, v, layout=layout, q_groups=spec.q_groups, k_groups=spec.k_groups,
                                      v_mode=mode, with_qk_bias=return_lse)
        if mode == "none":
            self.v, self.v_strides, self.v_rows = v, bhnd_strides(v, layout), self.nk
        else:
            self.v, self.v_strides, self.v_rows = self.qz.v, bhnd_strides(self.qz.v, "HND"), self.qz.v.shape[2]
        self.q_shape = q.shape

    @classmethod
    def from_buffers(cls, *, spec: AttnMmaSpec, layout: str, qz: Quantized, v, v_strides, v_rows: int,
                     B: int, Hq: int, Hkv: int, nq: int, nk: int, d: int, device) -> "Prepared":
        """A Prepared around buffers an earlier quantization pass made (the torch op path)."""
        p = cls.__new__(cls)
        p.B, p.Hq, p.Hkv, p.nq, p.nk, p.d = B, Hq, Hkv, nq, nk, d
        p.layout, p.spec, p.device, p.qz = layout, spec, device, qz
        p.v, p.v_strides, p.v_rows = v, v_strides, v_rows
        p.q_shape = (B, Hq, nq, d) if layout == "HND" else (B, nq, Hq, d)
        return p


# Kernel parameters (templates/attn_mma), codes as in launch.Params: q8 q_scale k8 k_scale, v + (batch, head, token)
# strides, o + strides, lse, Hq Hkv nq nk nq_pad nk_pad d v_rows, sm_scale_log2, causal_offset
PARAMS = L.Params("pppp pqqq pqqq p iiiiiiii f i")


class AttentionLaunch:
    """The attention launch of one shape, everything but the per-call values fixed once (eager.py keeps one per
    plan): ``launch(device, stream, q8, q_scale, k8, k_scale, v, v_strides, out, lse, sm_scale)``, addresses as
    ints (lse 0: none), strides (batch, head, token) in elements."""

    def __init__(self, spec: AttnMmaSpec, B: int, Hq: int, Hkv: int, nq: int, nk: int, d: int, v_rows: int,
                 out_strides, causal_offset: int):
        if spec.family != "attn_mma":  # another family's kernel takes other parameters: never launch it here
            raise TypeError(f"attn_mma launches attn_mma variants, got {spec.name}")
        nq_pad, nk_pad = padded_len(nq), padded_len(nk)
        self.spec, self.grid, self.threads, self.smem = spec, (nq_pad // spec.m, Hq, B), spec.threads, spec.smem_bytes()
        self.out_strides, self.causal_offset = tuple(out_strides), causal_offset
        self.ints = (Hq, Hkv, nq, nk, nq_pad, nk_pad, d, v_rows)

    def __call__(self, device: int, stream: int, q8: int, q_scale: int, k8: int, k_scale: int, v: int, v_strides,
                 out: int, lse: int, sm_scale: float) -> None:
        L.launch(self.spec, PARAMS, self.grid, self.threads, self.smem, device, stream,
                 q8, q_scale, k8, k_scale, v, *v_strides, out, *self.out_strides, lse,
                 *self.ints, sm_scale * LOG2E, self.causal_offset)


def run_kernel(p: Prepared, *, sm_scale: float, causal_offset: int = 0, return_lse: bool = False,
               out: torch.Tensor | None = None):
    spec, qz = p.spec, p.qz
    if out is None:
        out = torch.empty(p.q_shape, device=p.device, dtype=OUT_DTYPES[spec.o])
    lse = torch.empty(p.B, p.Hq, p.nq, device=p.device, dtype=torch.float32) if return_lse else None
    idx = p.device.index if p.device.index is not None else torch.cuda.current_device()
    launch = AttentionLaunch(spec, p.B, p.Hq, p.Hkv, p.nq, p.nk, p.d, p.v_rows, bhnd_strides(out, p.layout),
                             causal_offset)
    launch(idx, stream_handle(p.device), qz.q8.data_ptr(), qz.q_scale.data_ptr(), qz.k8.data_ptr(),
           qz.k_scale.data_ptr(), p.v.data_ptr(), p.v_strides, out.data_ptr(), lse.data_ptr() if lse is not None else 0,
           sm_scale)
    if lse is not None:
        # K smoothing removed sm_scale * q . mean(k) from every logit of a row; put it back into the LSE.
        lse.add_(qz.qk_bias, alpha=sm_scale)
    return out, lse


def forward(q, k, v, spec: AttnMmaSpec, *, layout: str, sm_scale: float, causal_offset: int = 0,
            return_lse: bool = False, out: torch.Tensor | None = None):
    """Attention with ``spec``. Inputs are 4-D in ``layout`` (HND: [B, H, N, d]; NHD: [B, N, H, d]).

    Returns (o, lse): o in q's layout and ``spec.o`` dtype; lse [B, Hq, nq] fp32 (natural log) or None.
    """
    p = Prepared(q, k, v, spec, layout, return_lse)
    return run_kernel(p, sm_scale=sm_scale, causal_offset=causal_offset, return_lse=return_lse, out=out)


def default_sm_scale(d: int) -> float:
    return 1.0 / math.sqrt(d)
