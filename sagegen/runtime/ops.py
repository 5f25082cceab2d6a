"""The attention families as torch.library operators, so torch.compile(fullgraph=True) and CUDA graphs see them:

  sagegen::quantize    the quantization passes (K stats, then INT8 Q/K + the V mode), sagegen.quant_layout
  sagegen::attn_mma    one mma.sync attention variant on the quantized buffers
  sagegen::attn_wgmma  one sm90a wgmma attention variant on the quantized buffers (operand images, FP8 V)
  sagegen::attn_short  one attn_short variant on the caller's q, k, v (nk <= 128): quantization inside, one launch

Defined through the low-level ``torch.library.Library`` API rather than ``torch.library.custom_op``: measured on
a 2-core CPU box, a custom_op call costs ~13 us of Python dispatch, a Library op with these schemas ~3.5 us, and
attention() goes through both ops on every call. Absent optional outputs are 0-element tensors (a schema return
cannot be None).

The CUDA kernels of the ops launch on torch's current stream (launch.py) of the inputs' device, switching the
current device when it differs (a second GPU works). They allocate only through torch's allocator, never
synchronize, and never tune, so they are safe inside CUDA-graph capture once each kernel has been loaded (run it
eagerly once before capturing, as torch's CUDA-graph docs ask for every op). The fake kernels give shapes and
dtypes only (also for meta tensors). There is no autograd kernel: these are inference ops.
"""
from __future__ import annotations

import contextlib

import torch

from ..quant_layout import ScaleGroups, padded_dim, padded_len
from ..variants import spec_from_name
from . import attn_mma, attn_short, attn_wgmma, quant
from .quant import Quantized, _vector_ready, bhnd_strides

_lib = torch.library.Library("sagegen", "DEF")
_lib.define(
    "quantize(Tensor q, Tensor k, Tensor v, str layout, int q_tile, int q_sub, int k_tile, int k_sub, str v_mode, "
    "bool with_qk_bias, bool qk_image) -> (Tensor q8, Tensor q_scale, Tensor k8, Tensor k_scale, Tensor v_out, "
    "Tensor v_scale, Tensor qk_bias)")
_lib.define(
    "attn_mma(Tensor q8, Tensor q_scale, Tensor k8, Tensor k_scale, Tensor v, Tensor qk_bias, str variant, "
    "str layout, str v_source, SymInt nq, SymInt nk, SymInt d, float sm_scale, SymInt causal_offset, "
    "bool return_lse) -> (Tensor out, Tensor lse)")
_lib.define(
    "attn_wgmma(Tensor q8, Tensor q_scale, Tensor k8, Tensor k_scale, Tensor v8, Tensor v_scale, Tensor qk_bias, "
    "str variant, str layout, SymInt nq, SymInt nk, SymInt d, float sm_scale, SymInt causal_offset, "
    "bool return_lse) -> (Tensor out, Tensor lse)")

_lib.define(
    "attn_short(Tensor q, Tensor k, Tensor v, str variant, str layout, float sm_scale, SymInt causal_offset, "
    "bool return_lse) -> (Tensor out, Tensor lse)")

V_SOURCES = ("input", "copy")  # attn_mma's v: the caller's V in ``layout``, or quantize's fp16 copy (HND, padded)

_specs: dict[str, object] = {}
_groups: dict[tuple[int, int], ScaleGroups] = {}


def spec_for(name: str):
    """The spec of a variant name, parsed once per process."""
    spec = _specs.get(name)
    if spec is None:
        spec = _specs[name] = spec_from_name(name)
    return spec


def _scale_groups(tile: int, sub: int) -> ScaleGroups:
    g = _groups.get((tile, sub))
    if g is None:
        g = _groups[(tile, sub)] = ScaleGroups(tile, sub)
    return g


def _on_device(t: torch.Tensor):
    """Make t's GPU current while launching (cuda.core launches in the current context)."""
    idx = t.device.index
    if idx is None or idx == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(idx)


def _dims(x: torch.Tensor, layout: str):
    """(B, H, N, d) of a 4-D tensor in layout HND ([B, H, N, d]) or NHD ([B, N, H, d])."""
    return (x.shape[0], x.shape[1], x.shape[2], x.shape[3]) if layout == "HND" else \
        (x.shape[0], x.shape[2], x.shape[1], x.shape[3])


# --- sagegen::quantize ------------------------------------------------------------------------------------------
def _quantize_cuda(q, k, v, layout, q_tile, q_sub, k_tile, k_sub, v_mode, with_qk_bias, qk_image):
    with _on_device(q):
        z = quant.quantize(q, k, v, layout=layout, q_groups=_scale_groups(q_tile, q_sub),
                           k_groups=_scale_groups(k_tile, k_sub), v_mode=v_mode, with_qk_bias=with_qk_bias,
                           qk_image=qk_image)
    dev = q.device
    return (z.q8, z.q_scale, z.k8, z.k_scale,
            z.v if z.v is not None else torch.empty(0, device=dev, dtype=torch.float16),
            z.v_scale if z.v_scale is not None else torch.empty(0, device=dev, dtype=torch.float32),
            z.qk_bias if z.qk_bias is not None else torch.empty(0, device=dev, dtype=torch.float32))


def _quantize_fake(q, k, v, layout, q_tile, q_sub, k_tile, k_sub, v_mode, with_qk_bias, qk_image):
    B, Hq, nq, d = _dims(q, layout)
    _, Hkv, nk, _ = _dims(k, layout)
    D = padded_dim(d)
    nq_pad, nk_pad = padded_len(nq), padded_len(nk)
    new = q.new_empty
    q8 = new((B, Hq, nq_pad, D), dtype=torch.int8)
    k8 = new((B, Hkv, nk_pad, D), dtype=torch.int8)
    q_scale = new((B, Hq, nq_pad // q_tile * q_sub), dtype=torch.float32)
    k_scale = new((B, Hkv, nk_pad // k_tile * k_sub), dtype=torch.float32)
    vb = quant.v_buffers(v_mode, B, Hkv, nk_pad, D)  # absent buffers are 0-element tensors, as in _quantize_cuda
    v_out = new(vb["v"][0], dtype=vb["v"][1]) if "v" in vb else new((0,), dtype=torch.float16)
    v_scale = new(vb["v_scale"][0], dtype=vb["v_scale"][1]) if "v_scale" in vb else new((0,), dtype=torch.float32)
    qk_bias = new((B, Hq, nq), dtype=torch.float32) if with_qk_bias else new((0,), dtype=torch.float32)
    return q8, q_scale, k8, k_scale, v_out, v_scale, qk_bias


# --- sagegen::attn_mma ------------------------------------------------------------------------------------------
def _prepared(q8, q_scale, k8, k_scale, v, qk_bias, spec, layout, v_source, nq, nk, d, return_lse):
    """attn_mma.Prepared from buffers quantize already made (its __init__ would quantize again)."""
    B, Hq, Hkv, D = q8.shape[0], q8.shape[1], k8.shape[1], q8.shape[3]
    vq = v if v_source == "copy" else None
    qz = Quantized(q8, q_scale, k8, k_scale, vq, None, qk_bias if return_lse else None, nq, nk, d, D)
    if v_source == "copy":
        v_strides, v_rows = bhnd_strides(v, "HND"), v.shape[2]
    else:
        v = _vector_ready(v)
        v_strides, v_rows = bhnd_strides(v, layout), nk
    return attn_mma.Prepared.from_buffers(spec=spec, layout=layout, qz=qz, v=v, v_strides=v_strides, v_rows=v_rows,
                                          B=B, Hq=Hq, Hkv=Hkv, nq=nq, nk=nk, d=d, device=q8.device)


def _attn_cuda(q8, q_scale, k8, k_scale, v, qk_bias, variant, layout, v_source, nq, nk, d, sm_scale,
               causal_offset, return_lse):
    spec = spec_for(variant)
    with _on_device(q8):
        p = _prepared(q8, q_scale, k8, k_scale, v, qk_bias, spec, layout, v_source, nq, nk, d, return_lse)
        out, lse = attn_mma.run_kernel(p, sm_scale=sm_scale, causal_offset=causal_offset, return_lse=return_lse)
    if lse is None:
        lse = torch.empty(0, device=q8.device, dtype=torch.float32)
    return out, lse


def _attn_fake(q8, q_scale, k8, k_scale, v, qk_bias, variant, layout, v_source, nq, nk, d, sm_scale,
               causal_offset, return_lse):
    spec = spec_for(variant)
    B, Hq = q8.shape[0], q8.shape[1]
    shape = (B, Hq, nq, d) if layout == "HND" else (B, nq, Hq, d)
    out = q8.new_empty(shape, dtype=attn_mma.OUT_DTYPES[spec.o])
    lse = q8.new_empty((B, Hq, nq) if return_lse else (0,), dtype=torch.float32)
    return out, lse


# --- sagegen::attn_wgmma ----------------------------------------------------------------------------------------
def _wgmma_cuda(q8, q_scale, k8, k_scale, v8, v_scale, qk_bias, variant, layout, nq, nk, d, sm_scale, causal_offset,
                return_lse):
    spec = spec_for(variant)
    B, Hq, Hkv, D = q8.shape[0], q8.shape[1], k8.shape[1], q8.shape[3]
    qz = Quantized(q8, q_scale, k8, k_scale, v8, v_scale, qk_bias if return_lse else None, nq, nk, d, D)
    q_shape = (B, Hq, nq, d) if layout == "HND" else (B, nq, Hq, d)
    with _on_device(q8):
        out, lse = attn_wgmma.run_kernel(qz, spec, q_shape=q_shape, layout=layout, B=B, Hq=Hq, Hkv=Hkv,
                                         sm_scale=sm_scale, causal_offset=causal_offset, return_lse=return_lse)
    if lse is None:
        lse = torch.empty(0, device=q8.device, dtype=torch.float32)
    return out, lse


def _wgmma_fake(q8, q_scale, k8, k_scale, v8, v_scale, qk_bias, variant, layout, nq, nk, d, sm_scale, causal_offset,
                return_lse):
    return _attn_fake(q8, q_scale, k8, k_scale, v8, qk_bias, variant, layout, "copy", nq, nk, d, sm_scale,
                      causal_offset, return_lse)


# --- sagegen::attn_short ----------------------------------------------------------------------------------------
def _short_cuda(q, k, v, variant, layout, sm_scale, causal_offset, return_lse):
    with _on_device(q):
        out, lse = attn_short.forward(q, k, v, spec_for(variant), layout=layout, sm_scale=sm_scale,
                                      causal_offset=causal_offset, return_lse=return_lse)
    if lse is None:
        lse = torch.empty(0, device=q.device, dtype=torch.float32)
    return out, lse


def _short_fake(q, k, v, variant, layout, sm_scale, causal_offset, return_lse):
    B, Hq, nq, _ = _dims(q, layout)
    out = q.new_empty(q.shape, dtype=attn_mma.OUT_DTYPES[spec_for(variant).o])
    lse = q.new_empty((B, Hq, nq) if return_lse else (0,), dtype=torch.float32)
    return out, lse


_lib.impl("quantize", _quantize_cuda, "CUDA")
_lib.impl("attn_short", _short_cuda, "CUDA")
torch.library.register_fake("sagegen::attn_short", _short_fake, lib=_lib)
_lib.impl("attn_wgmma", _wgmma_cuda, "CUDA")
torch.library.register_fake("sagegen::attn_wgmma", _wgmma_fake, lib=_lib)
_lib.impl("attn_mma", _attn_cuda, "CUDA")
torch.library.register_fake("sagegen::quantize", _quantize_fake, lib=_lib)
torch.library.register_fake("sagegen::attn_mma", _attn_fake, lib=_lib)

quantize_op = torch.ops.sagegen.quantize.default
attn_mma_op = torch.ops.sagegen.attn_mma.default
attn_wgmma_op = torch.ops.sagegen.attn_wgmma.default
attn_short_op = torch.ops.sagegen.attn_short.default
