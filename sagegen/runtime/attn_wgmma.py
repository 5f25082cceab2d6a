"""Run one sm90a wgmma attention variant: the quantization pass in operand-image layout, then the kernel."""
from __future__ import annotations

import torch

from ..quant_layout import padded_len
from ..variants.attn_wgmma import PV_FORMATS, AttnWgmmaSpec
from . import launch as L
from .attn_mma import LOG2E, OUT_DTYPES
from .device import stream_handle
from .quant import Quantized, bhnd_strides, quantize

# What the quantization pass writes for V, per P.V format (spec.v_mode): e4m3w (V transposed, e4m3, blocked by 128
# keys, keys permuted to the P fragment, swizzled) or f16w (fp16, blocked by 128 keys and 64 channels, swizzled).
V_MODES = tuple(mode for _, mode in PV_FORMATS.values())


def quantize_for(q, k, v, spec: AttnWgmmaSpec, layout: str, return_lse: bool) -> Quantized:
    return quantize(q, k, v, layout=layout, q_groups=spec.q_groups, k_groups=spec.k_groups, v_mode=spec.v_mode,
                    qk_image=True, with_qk_bias=return_lse)


# Kernel parameters (templates/attn_wgmma), codes as in launch.Params: q8 q_scale k8 k_scale v8 v_scale,
# o + (batch, head, token) strides, lse, Hq Hkv nq nk nq_pad nk_pad d, sm_scale_log2, causal_offset
PARAMS = L.Params("pppppp pqqq p iiiiiii f i")


class AttentionLaunch:
    """The attention launch of one shape, everything but the per-call values fixed once (eager.py keeps one per
    plan): ``launch(device, stream, q8, q_scale, k8, k_scale, v8, v_scale, out, lse, sm_scale)``, addresses as
    ints (lse 0: none)."""

    def __init__(self, spec: AttnWgmmaSpec, B: int, Hq: int, Hkv: int, nq: int, nk: int, d: int, out_strides,
                 causal_offset: int):
        if spec.family != "attn_wgmma":  # another family's kernel takes other parameters: never launch it here
            raise TypeError(f"attn_wgmma launches attn_wgmma variants, got {spec.name}")
        nq_pad, nk_pad = padded_len(nq), padded_len(nk)
        # ceil: a 192-row CTA tiles a multiple of 128 rows with a partial last CTA (the kernel copes)
        self.spec, self.grid = spec, (-(-nq_pad // spec.m), Hq, B)
        self.threads, self.smem = spec.threads, spec.smem_bytes()
        self.out_strides, self.causal_offset = tuple(out_strides), causal_offset
        self.ints = (Hq, Hkv, nq, nk, nq_pad, nk_pad, d)

    def __call__(self, device: int, stream: int, q8: int, q_scale: int, k8: int, k_scale: int, v8: int, v_scale: int,
                 out: int, lse: int, sm_scale: float) -> None:
        L.launch(self.spec, PARAMS, self.grid, self.threads, self.smem, device, stream,
                 q8, q_scale, k8, k_scale, v8, v_scale, out, *self.out_strides, lse,
                 *self.ints, sm_scale * LOG2E, self.causal_offset)


def run_kernel(qz: Quantized, spec: AttnWgmmaSpec, *, q_shape, layout: str, B: int, Hq: int, Hkv: int,
               sm_scale: float, causal_offset: int = 0, return_lse: bool = False, out: torch.Tensor | None = None):
    """The attention launch over buffers quantize_for made. Returns (o in q's layout, lse or None)."""
    dev = qz.q8.device
    if out is None:
        out = torch.empty(q_shape, device=dev, dtype=OUT_DTYPES[spec.o])
    lse = torch.empty(B, Hq, qz.nq, device=dev, dtype=torch.float32) if return_lse else None
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    launch = AttentionLaunch(spec, B, Hq, Hkv, qz.nq, qz.nk, qz.d, bhnd_strides(out, layout), causal_offset)
    launch(idx, stream_handle(dev), qz.q8.data_ptr(), qz.q_scale.data_ptr(), qz.k8.data_ptr(), qz.k_scale.data_ptr(),
           qz.v.data_ptr(), qz.v_scale.data_ptr() if qz.v_scale is not None else 0, out.data_ptr(),
           lse.data_ptr() if lse is not None else 0, sm_scale)
    if lse is not None:
        # K smoothing removed sm_scale * q . mean(k) from every logit of a row; put it back into the LSE.
        lse.add_(qz.qk_bias, alpha=sm_scale)
    return out, lse


def forward(q, k, v, spec: AttnWgmmaSpec, *, layout: str, sm_scale: float, causal_offset: int = 0,
            return_lse: bool = False, out: torch.Tensor | None = None):
    """Attention with ``spec``; inputs 4-D in ``layout`` (HND [B, H, N, d] or NHD [B, N, H, d])."""
    hd = 1 if layout == "HND" else 2
    qz = quantize_for(q, k, v, spec, layout, return_lse)
    return run_kernel(qz, spec, q_shape=q.shape, layout=layout, B=q.shape[0], Hq=q.shape[hd], Hkv=k.shape[hd],
                      sm_scale=sm_scale, causal_offset=causal_offset, return_lse=return_lse, out=out)
