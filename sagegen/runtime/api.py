"""``sagegen.attention`` and ``sagegen.sdpa``: validation, the per-shape plan cache, and the two ops per call.

Hot path (eager): one tuple of Python scalars is built from the arguments (shapes, dtypes, devices, last-dim
strides, flags) and looked up in ``_plans``. A hit skips validation and the registry entirely (the tuple
determines every check), so a call costs the lookup plus the plan's direct path (eager.py: the two ops'
three launches without the op dispatches; the ops themselves where a call needs them, e.g. under a torch dispatch
mode or the profiler). A miss validates (TypeError / ValueError naming the argument, before any device work), asks
the registry which variant runs, and caches the plan. Plans are dropped when the autotune table changes, and the
dict is cleared when it reaches ``MAX_PLANS`` entries (workloads with ever-changing lengths must not grow it
without bound).

Under torch.compile the same validation is traced and the variant is chosen once at trace time
(``torch.compiler.assume_constant_result``), so the graph holds just the two custom ops: no graph break. With
dynamic shapes the lengths are bucketed through range guards, so a new length recompiles only when it falls in a
new power-of-two bucket (the registry's granularity).

SDPA fallback: when the registry's cuDNN rule or the autotuner says torch SDPA (flash or cuDNN) is faster than
every sagegen variant for the key, and SDPA computes what was asked here (see sdpa_eligible: GQA through SDPA's
``enable_gqa``, the LSE through the backend's own op, another output dtype by a cast, causal only where the mask
is SDPA's top-left one or none; and torch's own checks accept the shapes), attention() calls that SDPA backend.
The result is then exact bf16/fp16 attention: faster *and* more accurate than the quantized kernel.
``sdpa_fallback=False`` or ``SAGEGEN_FORCE_KERNEL=1`` always run a sagegen kernel (tests, benchmarks). Under
torch.compile the fallback calls the public ``F.scaled_dot_product_attention`` (torch picks the backend), or the
chosen backend's op when an LSE is asked for.
"""
from __future__ import annotations

import functools
import math
import numbers
import warnings

import torch

from ..quant_layout import padded_dim
from . import eager, ops, registry
from .attn_wgmma import V_MODES as WGMMA_V_MODES
from .quant import v_mode_for
from .registry import Choice

LAYOUTS = ("HND", "NHD")
ALIGNMENTS = ("top_left", "bottom_right")
DTYPE_TAGS = {torch.float16: "f16", torch.bfloat16: "bf16"}
TAG_DTYPES = {tag: dtype for dtype, tag in DTYPE_TAGS.items()}
MAX_HEAD_DIM = 256  # attn_mma compiles d = 64, 128 and 256; attn_wgmma and attn_short 64 and 128
MAX_PLANS = 4096
DEVICE_TYPES = ("cuda", "meta")  # meta: shape inference only (fake kernels)
META_ARCH = "sm80"  # meta tensors have no GPU: their plans use the portable arch's heuristic (shapes only)

_QKV = ("q", "k", "v", "sm_scale")


class Shape:
    """The validated facts about one call that a plan depends on."""

    __slots__ = ("layout", "B", "Hq", "Hkv", "nq", "nk", "d", "D", "dtype", "out", "device", "causal", "offset",
                 "return_lse", "precision")

    def key(self) -> registry.Key:
        arch = META_ARCH if self.device.type == "meta" else device_arch_name(self.device.index)
        return registry.make_key(arch=arch, dtype=self.dtype, out=self.out, d=self.D, causal=self.causal,
                                 nq=self.nq, nk=self.nk, batch_heads=self.B * self.Hq, gqa=self.Hq // self.Hkv,
                                 precision=self.precision)


@functools.cache
def device_arch_name(index: int) -> str:
    from .device import device_arch

    return device_arch(index).name


@functools.cache
def sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _check_scale(sm_scale, name: str = "sm_scale") -> float:
    if type(sm_scale) is float and 0.0 < sm_scale < math.inf:
        return sm_scale
    if isinstance(sm_scale, bool) or not isinstance(sm_scale, numbers.Real):
        raise TypeError(f"{name} must be a positive real number or None, got {type(sm_scale).__name__}")
    s = float(sm_scale)
    if not (0.0 < s < math.inf):
        raise ValueError(f"{name} must be finite and positive, got {sm_scale!r}")
    return s


def inspect_inputs(q, k, v, *, is_causal=False, causal_alignment="bottom_right", tensor_layout="HND",
                   return_lse=False, precision=registry.DEFAULT_PRECISION, out_dtype=None, names=_QKV) -> Shape:
    """Validate attention()'s arguments (no device work) and return their Shape. Errors name the argument."""
    nq_, nk_, nv_ = names[0], names[1], names[2]
    for name, t in ((nq_, q), (nk_, k), (nv_, v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tensor_layout not in LAYOUTS:
        raise ValueError(f"tensor_layout must be one of {LAYOUTS}, got {tensor_layout!r}")
    spelled = "[B, H, N, d]" if tensor_layout == "HND" else "[B, N, H, d]"
    for name, t in ((nq_, q), (nk_, k), (nv_, v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D {spelled} (tensor_layout={tensor_layout!r}), got shape "
                             f"{tuple(t.shape)}")
    if q.dtype not in DTYPE_TAGS:
        raise TypeError(f"{nq_} must be torch.float16 or torch.bfloat16, got {q.dtype}")
    for name, t in ((nk_, k), (nv_, v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have {nq_}'s dtype {q.dtype}, got {t.dtype}")
    dev = q.device
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"{nq_} is on {dev}: sagegen runs on CUDA GPUs (move the tensors with .cuda())")
    for name, t in ((nk_, k), (nv_, v)):
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but {nq_} is on {dev}: all inputs must be on one device")
    hd, nd = (1, 2) if tensor_layout == "HND" else (2, 1)
    B, Hq, nq, d = q.shape[0], q.shape[hd], q.shape[nd], q.shape[3]
    Hkv, nk = k.shape[hd], k.shape[nd]
    for name, t in ((nq_, q), (nk_, k), (nv_, v)):
        if t.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(t.shape)}): every dimension must be positive "
                             f"(torch SDPA would return an empty result; sagegen asks you to skip the call)")
    if k.shape[0] != B:
        raise ValueError(f"{nk_} has batch size {k.shape[0]} but {nq_} has {B}")
    if k.shape[3] != d:
        raise ValueError(f"{nk_} has head dim {k.shape[3]} but {nq_} has {d}")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"{nv_} must have {nk_}'s shape {tuple(k.shape)} (same batch, heads, length and head dim), "
                         f"got {tuple(v.shape)}")
    if Hq % Hkv:
        raise ValueError(f"{nq_} has {Hq} heads, not a multiple of {nk_}/{nv_}'s {Hkv} heads (GQA/MQA needs "
                         f"Hq % Hkv == 0)")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head dim {d} of {nq_} is not supported: sagegen's attention families run d <= "
                         f"{MAX_HEAD_DIM}")
    if d % 8:
        raise ValueError(f"head dim {d} of {nq_} must be a multiple of 8 (16-byte vector loads)")
    for name, t in ((nq_, q), (nk_, k), (nv_, v)):
        if t.stride(3) != 1:
            raise ValueError(f"{name}'s last dimension must be contiguous (stride 1), got strides {tuple(t.stride())}"
                             f"; call .contiguous()")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be bool, got {type(is_causal).__name__}")
    if causal_alignment not in ALIGNMENTS:
        raise ValueError(f"causal_alignment must be one of {ALIGNMENTS}, got {causal_alignment!r}")
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be bool, got {type(return_lse).__name__}")
    if precision not in registry.PRECISIONS:
        raise ValueError(f"precision must be one of {registry.PRECISIONS}, got {precision!r}")
    if out_dtype is None:
        out_dtype = q.dtype
    elif out_dtype not in DTYPE_TAGS:
        raise ValueError(f"out_dtype must be None, torch.float16 or torch.bfloat16, got {out_dtype!r}")
    s = Shape()
    s.layout, s.B, s.Hq, s.Hkv, s.nq, s.nk, s.d, s.D = tensor_layout, B, Hq, Hkv, nq, nk, d, padded_dim(d)
    s.dtype, s.out, s.device, s.causal = DTYPE_TAGS[q.dtype], DTYPE_TAGS[out_dtype], dev, is_causal
    s.offset = (nk - nq) if (is_causal and causal_alignment == "bottom_right") else 0
    s.return_lse, s.precision = return_lse, precision
    return s


# --- SDPA as a candidate ----------------------------------------------------------------------------------------
def sdpa_eligible(shape: Shape, q=None, k=None, v=None) -> bool:
    """Whether torch SDPA computes what was asked. Causal only where the mask is SDPA's top-left one (top_left
    alignment, or Nq == Nk where both alignments agree) or none at all (bottom_right with one query: it sees every
    key). GQA (Hq a multiple of Hkv, as attention() requires) runs with SDPA's enable_gqa, an LSE through
    _sdpa_forward's backend ops (both: torch 2.5+, checked on the H100 with torch 2.11: BENCHMARKS.md, twelfth
    session); another output dtype is SDPA's output cast (a rounding far below the kernel's quantization error)."""
    return shape.device.type != "meta" and (not shape.causal or shape.offset == 0 or shape.nq == 1)


def _sdpa_causal(shape: Shape) -> bool:
    """SDPA's is_causal for an eligible call: its top-left mask, or none (bottom_right with one query)."""
    return shape.causal and shape.offset == 0


def _hnd(x, layout):
    return x if layout == "HND" else x.transpose(1, 2)


def sdpa_supported(backend: str, shape: Shape, q, k, v) -> bool:
    """sdpa_eligible and torch's own checks for ``backend`` accept these exact tensors."""
    if not sdpa_eligible(shape):
        return False
    check = {"flash": "can_use_flash_attention", "cudnn": "can_use_cudnn_attention"}[backend]
    try:
        fn = getattr(torch.backends.cuda, check)
        params = torch.backends.cuda.SDPAParams(_hnd(q, shape.layout), _hnd(k, shape.layout), _hnd(v, shape.layout),
                                                None, 0.0, _sdpa_causal(shape), shape.Hq != shape.Hkv)
        with torch.cuda.device(shape.device.index):
            return bool(fn(params, False))
    except Exception:  # older torch without the API, or a backend that cannot say: do not use it
        return False


def _sdpa_forward(q, k, v, backend, layout, causal, gqa, return_lse, out_dtype, scale):
    """torch SDPA's ``backend`` ("flash", "cudnn", or "auto": the public entry point, torch chooses; not with an
    LSE) on q, k, v in ``layout``, the output cast to ``out_dtype`` where it differs from q's. Both backend ops take
    fewer KV heads than query heads as they are (GQA), and return the LSE ([B, Hq, Nq] fp32, natural log; cuDNN's
    has a trailing unit dim)."""
    qh, kh, vh = _hnd(q, layout), _hnd(k, layout), _hnd(v, layout)
    lse = None
    if backend == "flash":
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention.default(
            qh, kh, vh, dropout_p=0.0, is_causal=causal, return_debug_mask=False, scale=scale)[:2]
    elif backend == "cudnn":
        o, lse = torch.ops.aten._scaled_dot_product_cudnn_attention.default(
            qh, kh, vh, None, compute_log_sumexp=return_lse, dropout_p=0.0, is_causal=causal,
            return_debug_mask=False, scale=scale)[:2]
    else:
        o = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, scale=scale,
                                                             enable_gqa=gqa)
    if layout == "NHD":
        o = o.transpose(1, 2)
        if not o.is_contiguous():
            o = o.contiguous()
    if o.dtype != out_dtype:
        o = o.to(out_dtype)
    if not return_lse:
        return o
    lse = lse.reshape(qh.shape[:3])
    return o, (lse if lse.is_contiguous() else lse.contiguous())


# --- the sagegen kernel path ------------------------------------------------------------------------------------
def _kernel_forward(q, k, v, scale, layout, q_tile, q_sub, k_tile, k_sub, v_mode, variant, nq, nk, d, offset,
                    return_lse):
    """Two ops: quantize, then the variant's attention op (its family follows from v_mode)."""
    wgmma = v_mode in WGMMA_V_MODES
    z = ops.quantize_op(q, k, v, layout, q_tile, q_sub, k_tile, k_sub, v_mode, return_lse, wgmma)
    if wgmma:
        o, lse = ops.attn_wgmma_op(z[0], z[1], z[2], z[3], z[4], z[5], z[6], variant, layout, nq, nk, d, scale,
                                   offset, return_lse)
    elif v_mode == "none":
        o, lse = ops.attn_mma_op(z[0], z[1], z[2], z[3], v, z[6], variant, layout, "input", nq, nk, d, scale,
                                 offset, return_lse)
    else:
        o, lse = ops.attn_mma_op(z[0], z[1], z[2], z[3], z[4], z[6], variant, layout, "copy", nq, nk, d, scale,
                                 offset, return_lse)
    return (o, lse) if return_lse else o


def _short_forward(q, k, v, scale, variant, layout, offset, return_lse):
    """One op: the attn_short variant quantizes and attends in a single launch."""
    o, lse = ops.attn_short_op(q, k, v, variant, layout, scale, offset, return_lse)
    return (o, lse) if return_lse else o


def _v_mode(dtype_tag: str, d: int, spec) -> str:
    """What the quantization pass does with V for this variant (attn_wgmma: its P.V format's operand image)."""
    return spec.v_mode if spec.family == "attn_wgmma" else v_mode_for(dtype_tag == "f16", d)


def _kernel_args(shape: Shape, spec) -> tuple:
    qg, kg = spec.q_groups, spec.k_groups
    return (shape.layout, qg.tile, qg.sub, kg.tile, kg.sub, _v_mode(shape.dtype, shape.d, spec), spec.name,
            shape.nq, shape.nk, shape.d, shape.offset, shape.return_lse)


class Plan:
    """A shape's decision, ready to run: ``plan.run(q, k, v, sm_scale)``."""

    __slots__ = ("shape", "choice", "scale", "args", "direct", "run")

    def __init__(self, shape: Shape, choice: Choice):
        self.shape, self.choice = shape, choice
        self.scale = 1.0 / math.sqrt(shape.d)
        self.direct = None
        if choice.kind == "sdpa":
            self.args = (choice.backend, shape.layout, _sdpa_causal(shape), shape.Hq != shape.Hkv,
                         shape.return_lse, TAG_DTYPES[shape.out])
            self.run = self._run_sdpa
        elif choice.spec.family == "attn_short":
            self.args = (choice.spec.name, shape.layout, shape.offset, shape.return_lse)
            self.direct = eager.runner(shape, choice.spec, "none")
            self.run = self._run_short if self.direct is None else self._run_short_direct
        else:
            self.args = _kernel_args(shape, choice.spec)
            self.direct = eager.runner(shape, choice.spec, _v_mode(shape.dtype, shape.d, choice.spec))
            self.run = self._run_kernel if self.direct is None else self._run_direct

    def _run_kernel(self, q, k, v, scale):
        return _kernel_forward(q, k, v, scale, *self.args)

    def _run_direct(self, q, k, v, scale):
        """The ops' launches without the ops (eager.py), unless this call needs the ops."""
        out = self.direct(q, k, v, scale)
        return out if out is not None else _kernel_forward(q, k, v, scale, *self.args)

    def _run_short(self, q, k, v, scale):
        return _short_forward(q, k, v, scale, *self.args)

    def _run_short_direct(self, q, k, v, scale):
        out = self.direct(q, k, v, scale)
        return out if out is not None else _short_forward(q, k, v, scale, *self.args)

    def _run_sdpa(self, q, k, v, scale):
        return _sdpa_forward(q, k, v, *self.args, scale)


_plans: dict[tuple, Plan] = {}
registry.on_change(_plans.clear)


def clear_plans() -> None:
    _plans.clear()


def _check_variant(variant, *, arch: str | None, D: int, causal: bool, out: str, dtype: str, nk):
    """The spec of ``variant`` (a name or spec of an attention family) if it can run this call (``arch`` None:
    any arch)."""
    from ..variants.attn_mma import AttnMmaSpec
    from ..variants.attn_short import MAX_KEYS, AttnShortSpec
    from ..variants.attn_wgmma import AttnWgmmaSpec

    spec = ops.spec_for(variant) if isinstance(variant, str) else variant
    if not isinstance(spec, (AttnMmaSpec, AttnWgmmaSpec, AttnShortSpec)):
        raise TypeError(f"variant must name an attention variant (attn_mma, attn_wgmma or attn_short) or be its "
                        f"spec, got {type(variant).__name__}")
    problems = []
    if isinstance(spec, AttnShortSpec):
        if spec.x != dtype:
            problems.append(f"input {spec.x} != the inputs' dtype {dtype}")
        if nk > MAX_KEYS:
            problems.append(f"nk {nk} > {MAX_KEYS} keys (the family holds every key in shared memory)")
    if arch is not None and spec.arch != arch:
        problems.append(f"arch {spec.arch} != device arch {arch}")
    if spec.d != D:
        problems.append(f"d {spec.d} != padded head dim {D}")
    if spec.causal != causal:
        problems.append(f"causal {spec.causal} != is_causal {causal}")
    if spec.o != out:
        problems.append(f"output {spec.o} != out_dtype {out}")
    if problems:
        raise ValueError(f"variant {spec.name} cannot run this call: {'; '.join(problems)}")
    return spec


def _resolve_variant(variant, shape: Shape) -> Choice:
    arch = None if shape.device.type == "meta" else device_arch_name(shape.device.index)
    spec = _check_variant(variant, arch=arch, D=shape.D, causal=shape.causal, out=shape.out, dtype=shape.dtype,
                          nk=shape.nk)
    return Choice("kernel", spec=spec, source="forced")


def _is_capturing(dev: torch.device) -> bool:
    if dev.type != "cuda":
        return False
    if dev.index == torch.cuda.current_device():
        return torch.cuda.is_current_stream_capturing()
    with torch.cuda.device(dev.index):
        return torch.cuda.is_current_stream_capturing()


def _decide(shape: Shape, q, k, v, variant, sdpa_fallback, out_dtype, causal_alignment) -> tuple[Choice, bool]:
    """(choice, cacheable). Not cacheable: a heuristic stand-in used only because tuning cannot run right now."""
    if variant is not None:
        return _resolve_variant(variant, shape), True
    key = shape.key()
    if shape.device.type == "meta":
        return registry.choose(key), True
    if sdpa_fallback is None:
        allow_sdpa = not registry.force_kernel()
    elif isinstance(sdpa_fallback, bool):
        allow_sdpa = sdpa_fallback
    else:
        raise TypeError(f"sdpa_fallback must be None or bool, got {type(sdpa_fallback).__name__}")
    idx = shape.device.index
    if registry.autotune_enabled():
        if _is_capturing(shape.device):
            env, _ = registry.environment(idx)
            choice = registry.choose(key, env=env, sm_count=sm_count(idx), sdpa_ok=sdpa_eligible(shape),
                                     allow_sdpa=allow_sdpa)
            cacheable = False
        else:
            choice = registry.autotune(q, k, v, is_causal=shape.causal, causal_alignment=causal_alignment,
                                       tensor_layout=shape.layout, out_dtype=out_dtype, precision=shape.precision,
                                       return_lse=shape.return_lse)
            cacheable = True
            if choice.kind == "sdpa" and not allow_sdpa:
                choice = registry.choose(key, env=registry.environment(idx)[0], sm_count=sm_count(idx))
    else:
        env, _ = registry.environment(idx)
        choice = registry.choose(key, env=env, sm_count=sm_count(idx), sdpa_ok=sdpa_eligible(shape),
                                 allow_sdpa=allow_sdpa)
        cacheable = True
    if choice.kind == "sdpa" and not sdpa_supported(choice.backend, shape, q, k, v):
        choice = registry.choose(key, env=registry.environment(idx)[0], sm_count=sm_count(idx), sdpa_ok=False)
    return choice, cacheable


def _new_plan(q, k, v, is_causal, causal_alignment, tensor_layout, return_lse, precision, out_dtype, variant,
              sdpa_fallback, names) -> tuple[Plan, bool]:
    shape = inspect_inputs(q, k, v, is_causal=is_causal, causal_alignment=causal_alignment,
                           tensor_layout=tensor_layout, return_lse=return_lse, precision=precision,
                           out_dtype=out_dtype, names=names)
    choice, cacheable = _decide(shape, q, k, v, variant, sdpa_fallback, out_dtype, causal_alignment)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        warnings.warn("sagegen.attention is inference-only: no gradient flows back to q, k, v", UserWarning,
                      stacklevel=4)
    return Plan(shape, choice), cacheable


def _attention(q, k, v, is_causal, sm_scale, tensor_layout, return_lse, causal_alignment, precision, out_dtype,
               variant, sdpa_fallback, names):
    if torch.compiler.is_compiling():
        return _traced(q, k, v, is_causal, sm_scale, tensor_layout, return_lse, causal_alignment, precision,
                       out_dtype, variant, sdpa_fallback, names)
    try:
        key = (q.shape, k.shape, v.shape, q.dtype, k.dtype, v.dtype, q.device, k.device, v.device, q.stride(-1),
               k.stride(-1), v.stride(-1), is_causal, causal_alignment, tensor_layout, return_lse, precision,
               out_dtype, variant, sdpa_fallback)
        plan = _plans[key]
    except KeyError:  # first call with this shape: validate, decide, remember
        plan, cacheable = _new_plan(q, k, v, is_causal, causal_alignment, tensor_layout, return_lse, precision,
                                    out_dtype, variant, sdpa_fallback, names)
        if cacheable:
            if len(_plans) >= MAX_PLANS:
                _plans.clear()
            _plans[key] = plan
    except Exception:  # not tensors, or an unhashable argument: validation names the problem (or it runs uncached)
        plan, _ = _new_plan(q, k, v, is_causal, causal_alignment, tensor_layout, return_lse, precision, out_dtype,
                            variant, sdpa_fallback, names)
    scale = plan.scale if sm_scale is None else _check_scale(sm_scale, names[3])
    return plan.run(q, k, v, scale)


# --- torch.compile --------------------------------------------------------------------------------------------
def _bucket_traced(n) -> int:
    """registry.bucket for an int or a SymInt: each comparison guards on a range, not on the exact size, so a
    dynamic length recompiles once per power-of-two bucket (the registry's granularity), not once per length."""
    b = 1
    while b < n:
        b *= 2
    return b


@torch.compiler.assume_constant_result
def _traced_choice(dtype: str, out: str, D: int, causal: bool, nq: int, nk: int, bh: int, gqa: int,
                   precision: str, device_index: int, sdpa_ok: bool, sdpa_fallback: int, variant: str) -> str:
    """Runs at trace time only (never traced, so it may read files and caches); returns a string constant:
    "kernel:<variant>:<q_tile>,<q_sub>,<k_tile>,<k_sub>:<wgmma V mode or empty>" or "sdpa:<backend>".

    nq, nk, bh, gqa are buckets (registry.bucket). device_index -1: meta tensors.
    sdpa_fallback: -1 follow SAGEGEN_FORCE_KERNEL, 0 never, 1 allowed. variant: "" or a forced variant name.
    """
    arch = META_ARCH if device_index < 0 else device_arch_name(device_index)
    if variant:
        spec = _check_variant(variant, arch=None if device_index < 0 else arch, D=D, causal=causal, out=out,
                              dtype=dtype, nk=nk)
    else:
        key = registry.Key(arch, dtype, out, D, causal, nq, nk, bh, min(gqa, registry.GQA_BUCKET_MAX), precision)
        if device_index < 0:
            choice = registry.choose(key)
        else:
            allow = (not registry.force_kernel()) if sdpa_fallback < 0 else bool(sdpa_fallback)
            env, _ = registry.environment(device_index)
            choice = registry.choose(key, env=env, sm_count=sm_count(device_index),
                                     sdpa_ok=sdpa_ok, allow_sdpa=allow)
        if choice.kind == "sdpa":
            return choice.name
        spec = choice.spec
    qg, kg = spec.q_groups, spec.k_groups
    return f"kernel:{spec.name}:{qg.tile},{qg.sub},{kg.tile},{kg.sub}:{getattr(spec, 'v_mode', '')}"


def _traced(q, k, v, is_causal, sm_scale, tensor_layout, return_lse, causal_alignment, precision, out_dtype, variant,
            sdpa_fallback, names):
    shape = inspect_inputs(q, k, v, is_causal=is_causal, causal_alignment=causal_alignment,
                           tensor_layout=tensor_layout, return_lse=return_lse, precision=precision,
                           out_dtype=out_dtype, names=names)
    scale = 1.0 / math.sqrt(shape.d) if sm_scale is None else _check_scale(sm_scale, names[3])
    if variant is not None and not isinstance(variant, str):
        variant = variant.name
    if sdpa_fallback is not None and not isinstance(sdpa_fallback, bool):
        raise TypeError(f"sdpa_fallback must be None or bool, got {type(sdpa_fallback).__name__}")
    meta = shape.device.type == "meta"
    bucket = _bucket_traced
    # Every argument must be a Python constant for dynamo. int()/bool() of a SymInt/SymBool stay symbolic under
    # tracing; branching on them forces a guard and yields a constant (D from padded lengths, SymBool from
    # sdpa_eligible's length comparisons).
    D = 64 if shape.D <= 64 else (128 if shape.D <= 128 else 256)
    causal = True if shape.causal else False
    sdpa_ok = True if (not meta) and sdpa_eligible(shape) else False
    decision = _traced_choice(shape.dtype, shape.out, D, causal, bucket(shape.nq),
                              bucket(shape.nk), bucket(shape.B * shape.Hq), bucket(shape.Hq // shape.Hkv),
                              shape.precision, -1 if meta else shape.device.index, sdpa_ok,
                              -1 if sdpa_fallback is None else int(sdpa_fallback), variant or "")
    if decision.startswith(registry.SDPA_PREFIX):  # the chosen backend's op when the LSE is asked for
        backend = decision[len(registry.SDPA_PREFIX):] if shape.return_lse else "auto"
        return _sdpa_forward(q, k, v, backend, shape.layout, _sdpa_causal(shape), shape.Hq != shape.Hkv,
                             shape.return_lse, TAG_DTYPES[shape.out], scale)
    _, variant_name, groups, v_mode = decision.split(":")
    if variant_name.startswith("attn_short_"):
        return _short_forward(q, k, v, scale, variant_name, shape.layout, shape.offset, shape.return_lse)
    v_mode = v_mode or v_mode_for(shape.dtype == "f16", shape.d)  # attn_mma: from the true head dim
    q_tile, q_sub, k_tile, k_sub = (int(x) for x in groups.split(","))
    return _kernel_forward(q, k, v, scale, shape.layout, q_tile, q_sub, k_tile, k_sub,
                           v_mode, variant_name, shape.nq, shape.nk,
                           shape.d, shape.offset, shape.return_lse)


# --- public -----------------------------------------------------------------------------------------------------
def attention(q, k, v, *, is_causal: bool = False, sm_scale: float | None = None, tensor_layout: str = "HND",
              return_lse: bool = False, causal_alignment: str = "bottom_right",
              precision: str = registry.DEFAULT_PRECISION, out_dtype: torch.dtype | None = None, variant=None,
              sdpa_fallback: bool | None = None):
    """SageAttention of q, k, v on a CUDA GPU: INT8 Q.K^T with FP8 P.V ("fast", sm90a), INT8 P.V ("balanced",
    sm90a) or FP16 P.V ("accurate").

    q: [B, Hq, Nq, d], k and v: [B, Hkv, Nk, d] (``tensor_layout="NHD"``: [B, N, H, d]); fp16 or bf16, all one
    dtype and one device; last dimension contiguous (other strides are free); Hq a multiple of Hkv (GQA/MQA: query
    head h reads kv head h // (Hq // Hkv)); d <= 256 and a multiple of 8 (d other than 64/128/256 is zero-padded
    inside; 128 < d <= 256 runs the mma.sync family in either precision: no FP8 kernel has it yet). Empty tensors
    raise ValueError (torch SDPA would return an empty result). Meta tensors return meta outputs (shape inference).

    is_causal: mask keys in the future. ``causal_alignment``: "bottom_right" (default; the FlashAttention >= 2.1 and
    SageAttention convention: the last query sees every key) or "top_left" (torch SDPA's is_causal: query i sees
    keys 0..i). They differ only when Nq != Nk. A query that sees no key gets output 0 and LSE -inf.
    sm_scale: softmax scale, default 1/sqrt(d). precision: "fast" (default; INT8 Q.K^T + FP8 P.V, rel-L1 ~0.035 on
    N(0,1), on GPUs that have such a family: Hopper sm90a; elsewhere it runs the accurate kernel), "balanced"
    (INT8 Q.K^T + INT8 P.V: u8 P scaled per key block and row, INT8 V per channel, exact integer block sums;
    rel-L1 ~0.015-0.025 on N(0,1), weaker than "fast" on heavy-tailed V, whose few large entries set the channel's
    INT8 step; sm90a, elsewhere the accurate kernel) or "accurate" (INT8 Q.K^T + FP16 P.V, rel-L1 ~0.01; on sm90a
    the wgmma family, elsewhere the mma.sync family). Short keys
    (nk <= 128, nq <= 2048, out_dtype = q's dtype) run the attn_short family in every precision (FP16 P.V, the
    quantization inside the kernel, one launch per call), unless the registry's cuDNN rule takes the call first
    (where SDPA can compute it; see sdpa_fallback). "accurate"
    casts V to fp16 unscaled: bf16 V entries beyond fp16's range (|v| > 65504) make the output inf or NaN in the
    rows that attend to them ("fast" and "balanced" scale V per channel and have no such limit).
    out_dtype: torch.float16 or torch.bfloat16, default q's dtype. return_lse: also return the log-sum-exp
    [B, Hq, Nq] fp32 (natural log). variant: run this attn_mma / attn_wgmma / attn_short variant (name or spec)
    instead of the registry's choice (attn_short: inputs in its ``x`` dtype, nk <= 128). sdpa_fallback: None
    follows SAGEGEN_FORCE_KERNEL; False never calls torch SDPA (see module
    docstring).

    NaN / Inf inputs propagate, as in torch SDPA, never into silently finite garbage: one in K makes its whole
    (batch, kv head) NaN (through K's smoothing mean and the block scales); one in V reaches every query row that
    attends to that key (as in SDPA); one in Q makes the rows of its scale group NaN (SDPA: that row only).
    Inference only: no gradient flows back (a warning says so when inputs require grad).

    Returns o (q's layout and shape, ``out_dtype``) or (o, lse).
    """
    return _attention(q, k, v, is_causal, sm_scale, tensor_layout, return_lse, causal_alignment, precision,
                      out_dtype, variant, sdpa_fallback, _QKV)


def describe(q, k, v, *, is_causal: bool = False, tensor_layout: str = "HND", return_lse: bool = False,
             causal_alignment: str = "bottom_right", precision: str = registry.DEFAULT_PRECISION, out_dtype=None,
             variant=None, sdpa_fallback: bool | None = None) -> Choice:
    """What attention() with these arguments runs (registry.Choice: kernel spec or SDPA backend, and why)."""
    plan, _ = _new_plan(q, k, v, is_causal, causal_alignment, tensor_layout, return_lse, precision, out_dtype,
                        variant, sdpa_fallback, _QKV)
    return plan.choice


_SDPA_NAMES = ("query", "key", "value", "scale")


def sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention's signature on sagegen's kernel.

    Shapes [..., H, L, E] (at least 3-D; leading dims are the batch); is_causal is top-left as in torch. Rejects
    with ValueError what it cannot do: an attn_mask, dropout_p > 0, a value head dim different from the query's,
    and Hq != Hkv without enable_gqa=True (torch's rule). Output dtype = query's dtype. Precision: the default
    ("fast"; see attention()).
    """
    if attn_mask is not None:
        raise ValueError("attn_mask is not supported by sagegen.sdpa (only is_causal masking); use "
                         "torch.nn.functional.scaled_dot_product_attention for masked attention")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a float, got {type(dropout_p).__name__}")
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p must be 0.0: sagegen attention is inference-only and has no dropout, got "
                         f"{dropout_p}")
    if not isinstance(enable_gqa, bool):
        raise TypeError(f"enable_gqa must be bool, got {type(enable_gqa).__name__}")
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 3:
            raise ValueError(f"{name} must be [..., H, L, E] with at least 3 dimensions, got shape {tuple(t.shape)}")
    if value.shape[-1] != query.shape[-1]:
        raise ValueError(f"value's head dim {value.shape[-1]} must equal query's {query.shape[-1]} in sagegen")
    if query.shape[-3] != key.shape[-3] and not enable_gqa:
        raise ValueError(f"query has {query.shape[-3]} heads and key {key.shape[-3]}: grouped-query attention "
                         f"needs enable_gqa=True (as in torch SDPA)")
    if query.dim() == 4:
        return _attention(query, key, value, is_causal, scale, "HND", False, "top_left", registry.DEFAULT_PRECISION,
                          None, None, None, _SDPA_NAMES)
    lead = query.shape[:-3]

    def four(t, name):
        if t.shape[:-3] != lead:
            raise ValueError(f"{name}'s leading (batch) dims {tuple(t.shape[:-3])} must equal query's {tuple(lead)}")
        return t.reshape((-1,) + tuple(t.shape[-3:]))

    o = _attention(four(query, "query"), four(key, "key"), four(value, "value"), is_causal, scale, "HND", False,
                   "top_left", registry.DEFAULT_PRECISION, None, None, None, _SDPA_NAMES)
    return o.reshape(tuple(lead) + tuple(o.shape[1:]))
