"""attention()'s eager GPU path without the torch ops: the same three launches, over one workspace allocation.

The ops (ops.py) remain what torch.compile traces, and what runs whenever something may be watching or rewriting
torch calls: a torch dispatch mode (FakeTensorMode, make_fx, op recorders), the torch profiler (its traces keep
showing sagegen::quantize and sagegen::attn_*), tensor subclasses, inputs that are not 16-byte vector ready (the op
path copies them), and inputs on a device other than the current one. Everything else skips per call: two op
dispatches, ~10 tensor allocations (here: workspace, output, and the LSE pair when asked for), the Quantized /
Prepared bookkeeping, and every shape computation (done once, when attention() caches its plan).

Same launches as the op path (quant.QuantPlan.launch and the families' AttentionLaunch are shared, so each kernel's
argument order lives in one place), same stream (torch's current one), same allocator: CUDA-graph capture behaves
as with the ops. The workspace is freed when the call returns; torch's stream-ordered caching allocator reuses it
only for work queued after these kernels on the same stream, as it does for the ops' intermediate tensors.
"""
from __future__ import annotations

import torch

from ..quant_layout import padded_dim, padded_len
from . import attn_mma, attn_short, attn_wgmma, quant
from .device import current_device, current_stream_handle

DEVICE_TYPES = ("cuda",)  # tests/runtime/conftest.py adds "cpu" to run this path on a fake GPU

_Tensor = torch.Tensor
_dispatch_modes = torch._C._len_torch_dispatch_stack
_profiling = torch._C._autograd._profiler_enabled
_CONTIGUOUS = torch.contiguous_format


def runner(shape, spec, v_mode: str) -> "Direct | None":
    """The direct path of an attention() plan (api.Shape, attention spec, V mode), or None where the plan must keep
    the ops: another device type, or a family / V mode this module does not know (a new one runs correctly, on the
    ops, until it is added here)."""
    if shape.device.type not in DEVICE_TYPES:
        return None
    if spec.family == "attn_short":
        return DirectShort(shape, spec)
    known = (v_mode in ("none", "f16")) if spec.family == "attn_mma" else \
        (v_mode == spec.v_mode) if spec.family == "attn_wgmma" else False
    return Direct(shape, spec, v_mode) if known else None


def _bhnd(hnd: bool, s) -> tuple[int, int, int]:
    return (s[0], s[1], s[2]) if hnd else (s[0], s[2], s[1])


def _output_facts(self, shape, spec) -> None:
    """What both direct paths know of the call's device and outputs, set on ``self`` once per plan."""
    dev = shape.device
    self.device, self.index = dev, (dev.index if dev.index is not None else 0)
    self.hnd, self.return_lse = shape.layout == "HND", shape.return_lse
    self.lse_shape = (shape.B, shape.Hq, shape.nq)
    self.out_shape = (shape.B, shape.Hq, shape.nq, shape.d) if self.hnd else (shape.B, shape.nq, shape.Hq, shape.d)
    self.out_dtype = attn_mma.OUT_DTYPES[spec.o]
    self.out_strides = _bhnd(self.hnd, torch.empty(self.out_shape, device="meta").stride())


class Direct:
    """One plan's direct path: ``direct(q, k, v, scale)`` returns what attention() returns, or None when this call
    must take the ops (see the module docstring); then nothing was launched or allocated."""

    def __init__(self, shape, spec, v_mode: str):
        _output_facts(self, shape, spec)
        self.wgmma = spec.family == "attn_wgmma"
        self.quant = q = quant.QuantPlan(quant.device_arch(self.index).name, shape.dtype, shape.B, shape.Hq,
                                         shape.Hkv, shape.nq, shape.nk, shape.d, spec.q_groups, spec.k_groups,
                                         v_mode, shape.return_lse, self.wgmma)
        # Workspace offset of each of quant.BUFFERS but qk_bias (a tensor of its own); -1: absent
        self.offsets = tuple(q.offsets.get(name, -1) for name in quant.BUFFERS[:-1])
        self.v_in_place = v_mode == "none"
        D, nk_pad = padded_dim(shape.d), padded_len(shape.nk)
        self.v_copy_strides = (shape.Hkv * nk_pad * D, nk_pad * D, D)  # quantize's fp16 V [B, Hkv, nk_pad, D]
        if self.wgmma:
            self.attend = attn_wgmma.AttentionLaunch(spec, shape.B, shape.Hq, shape.Hkv, shape.nq, shape.nk, shape.d,
                                                     self.out_strides, shape.offset)
        else:
            v_rows = shape.nk if self.v_in_place else nk_pad
            self.attend = attn_mma.AttentionLaunch(spec, shape.B, shape.Hq, shape.Hkv, shape.nq, shape.nk, shape.d,
                                                   v_rows, self.out_strides, shape.offset)

    def __call__(self, q, k, v, scale: float):
        if (_dispatch_modes() or _profiling() or type(q) is not _Tensor or type(k) is not _Tensor
                or type(v) is not _Tensor):
            return None
        qs, ks, vs = q.stride(), k.stride(), v.stride()
        qp, kp, vp = q.data_ptr(), k.data_ptr(), v.data_ptr()
        # 16-byte vectors (quant._vector_ready): aligned bases, row strides a multiple of 8 fp16/bf16 elements
        if (qp | kp | vp) & 15 or (qs[0] | qs[1] | qs[2] | ks[0] | ks[1] | ks[2] | vs[0] | vs[1] | vs[2]) & 7:
            return None
        idx = self.index
        if current_device() != idx:  # the op path switches the current device (launches need its context)
            return None
        stream = current_stream_handle(idx)
        dev = self.device
        ws = torch.empty(self.quant.workspace_bytes, device=dev, dtype=torch.uint8)
        out = torch.empty(self.out_shape, device=dev, dtype=self.out_dtype)
        lse = bias = None
        if self.return_lse:
            lse = torch.empty(self.lse_shape, device=dev, dtype=torch.float32)
            bias = torch.empty(self.lse_shape, device=dev, dtype=torch.float32)
        base = ws.data_ptr()
        ksum, vamax, q8, q_scale, k8, k_scale, v_out, v_scale = [base + o if o >= 0 else 0 for o in self.offsets]
        if self.hnd:
            qs, ks, vs = qs[:3], ks[:3], vs[:3]
        else:
            qs, ks, vs = (qs[0], qs[2], qs[1]), (ks[0], ks[2], ks[1]), (vs[0], vs[2], vs[1])
        self.quant.launch(idx, stream, qp, qs, kp, ks, vp, vs, ksum, vamax, q8, q_scale, k8, k_scale, v_out, v_scale,
                          0 if bias is None else bias.data_ptr())
        out_p, lse_p = out.data_ptr(), 0 if lse is None else lse.data_ptr()
        if self.wgmma:
            self.attend(idx, stream, q8, q_scale, k8, k_scale, v_out, v_scale, out_p, lse_p, scale)
        elif self.v_in_place:
            self.attend(idx, stream, q8, q_scale, k8, k_scale, vp, vs, out_p, lse_p, scale)
        else:
            self.attend(idx, stream, q8, q_scale, k8, k_scale, v_out, self.v_copy_strides, out_p, lse_p, scale)
        if lse is None:
            return out
        # K smoothing removed sm_scale * q . mean(k) from every logit of a row; put it back into the LSE.
        lse.add_(bias, alpha=scale)
        return out, lse


class DirectShort:
    """The attn_short family's direct path: one output allocation (two with the LSE) and one launch; the kernel
    quantizes the inputs itself and puts smoothing's shift back into the LSE."""

    def __init__(self, shape, spec):
        _output_facts(self, shape, spec)
        self.out_like_q = spec.o == spec.x  # (the family's enumerated variants; a forced one may differ)
        self.h_axis, self.t_axis = (1, 2) if self.hnd else (2, 1)  # head and token dims of the caller's layout
        # the kernel's scalar tail (attn_short.PARAMS: Hq Hkv nq nk d, then sm_scale_log2 and the causal offset)
        self.ints = (shape.Hq, shape.Hkv, shape.nq, shape.nk, shape.d)
        self.offset = shape.offset
        self.bound = attn_short.ShortLaunch(spec, shape.B, shape.Hq, shape.Hkv, shape.nq, shape.nk, shape.d,
                                            self.out_strides, shape.offset).bound(self.index)

    def __call__(self, q, k, v, scale: float):
        # The same checks as Direct's (a call the ops must take, inputs not 16-byte vector ready) and the same
        # arguments as ShortLaunch.__call__, written out here: a shared helper would cost a call per attention().
        if (_dispatch_modes() or _profiling() or type(q) is not _Tensor or type(k) is not _Tensor
                or type(v) is not _Tensor):
            return None
        qs, ks, vs = q.stride(), k.stride(), v.stride()
        qp, kp, vp = q.data_ptr(), k.data_ptr(), v.data_ptr()
        if (qp | kp | vp) & 15 or (qs[0] | qs[1] | qs[2] | ks[0] | ks[1] | ks[2] | vs[0] | vs[1] | vs[2]) & 7:
            return None
        idx = self.index
        if current_device() != idx:
            return None
        stream = current_stream_handle(idx)
        # the output has q's shape; empty_like skips torch.empty's argument parsing (~0.6 us) where the dtype agrees
        out = torch.empty_like(q, memory_format=_CONTIGUOUS) if self.out_like_q else \
            torch.empty(self.out_shape, device=self.device, dtype=self.out_dtype)
        lse = torch.empty(self.lse_shape, device=self.device, dtype=torch.float32) if self.return_lse else None
        h, t, os, n = self.h_axis, self.t_axis, self.out_strides, self.ints
        self.bound(stream, qp, qs[0], qs[h], qs[t], kp, ks[0], ks[h], ks[t], vp, vs[0], vs[h], vs[t],
                   out.data_ptr(), os[0], os[1], os[2], 0 if lse is None else lse.data_ptr(),
                   n[0], n[1], n[2], n[3], n[4], scale * attn_short.LOG2E, self.offset)
        return out if lse is None else (out, lse)
