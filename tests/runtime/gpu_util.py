"""Helpers of the GPU tests: seeded inputs, the emulation of a variant, the error numbers, the session report."""
from __future__ import annotations

import json
import os
import zlib

import torch

from sagegen.quant_layout import k_groups, q_groups
from sagegen.reference import attention_exact, lse_max_abs, make_inputs, rel_l1, sage2_attention

OUT_DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}
# rel-L1 against exact attention that the FP8 P.V of the "fast" family (attn_wgmma pv=e4m3) reaches on N(0,1): its
# emulation gives 0.035-0.040 (d 64/128, N 17..4k; the kernel is within 0.0015 of it), against ~0.01 for FP16 P.V
FAST_BOUND = 0.05


def bound_for(spec, bound: float) -> float:
    """A test's rel-L1 bound against exact attention written for FP16 P.V, for ``spec``'s P.V format."""
    return max(bound, FAST_BOUND) if is_fp8_pv(spec) else bound


def is_fp8_pv(spec) -> bool:
    return spec.family == "attn_wgmma" and spec.pv == "e4m3"


def variants_glob() -> str:
    """``$SAGEGEN_TEST_VARIANTS`` (globs, comma-separated), default every attention family: the attention
    variants the GPU tests build (conftest.gpu_kernels) and run (test_gpu_variants, test_gpu_wgmma)."""
    return os.environ.get("SAGEGEN_TEST_VARIANTS", "attn_mma_*, attn_wgmma_*, attn_short_*")


def device_variants(family: str) -> list[str]:
    """Names of ``family``'s variants for the visible GPU's arch that match variants_glob(); [] without a GPU (the
    parametrized GPU tests then collect nothing)."""
    if not torch.cuda.is_available():
        return []
    from sagegen.runtime.device import device_arch
    from sagegen.variants import select

    arch = device_arch(torch.cuda.current_device()).name
    return [s.name for s in select([arch], variants_glob()) if s.family == family]


def compiled_spec(gpu_kernels, name: str):
    """The spec of variant ``name``; the test fails with the NVRTC log if the session's build could not compile it."""
    import pytest

    from sagegen.variants import spec_from_name

    if name in gpu_kernels.failed:
        pytest.fail(f"{name} failed to compile:\n{gpu_kernels.failed[name][:4000]}")
    return spec_from_name(name)


def seed_of(text: str) -> int:
    """A per-test seed: fresh inputs for every test, the same ones on every run."""
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def inputs(dist="normal", *, B=1, Hq=2, Hkv=None, nq=256, nk=None, d=128, dtype=torch.bfloat16, layout="HND",
           seed=0):
    """(q, k, v) on the GPU in ``layout`` from sagegen.reference.make_inputs (normal, outliers, heavy, zeros)."""
    q, k, v = make_inputs(dist, batch=B, heads=Hq, heads_kv=Hkv, n=nq, n_kv=nk, d=d, seed=seed, device="cuda",
                          dtype=dtype)
    if layout == "NHD":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return q, k, v


def emulate(spec, q, k, v, *, causal_align="bottom_right", layout="HND", sm_scale=None):
    """The torch emulation of exactly what ``spec`` computes (scale groups, key blocks, P.V format and
    accumulator): SageAttention2 with FP16 P.V for attn_mma, with the variant's P.V format (FP8 with two-level
    fp32 accumulation, or FP16 with fp32 accumulation) for attn_wgmma."""
    kw = spec.emulation()
    gran = kw["granularity"]
    assert q_groups(gran, spec.m, kw["warp_m"]) == spec.q_groups and k_groups(gran, spec.n) == spec.k_groups, \
        f"no emulation granularity for {spec.qg}/{spec.kg}"
    return sage2_attention(q, k, v, causal=spec.causal, causal_align=causal_align, sm_scale=sm_scale, layout=layout,
                           **kw)


def exact(q, k, v, *, causal=False, causal_align="bottom_right", layout="HND", sm_scale=None):
    return attention_exact(q, k, v, causal=causal, causal_align=causal_align, layout=layout, sm_scale=sm_scale)


def errors(o, lse, ref, ref_lse, emu, emu_lse) -> dict:
    """rel-L1 / LSE errors of the kernel against exact attention and against the emulation rounded to o's dtype
    (so that the output rounding both share does not count as a difference), ``round``: the rel-L1 of that
    rounding itself, and ``scheme``: the emulation's own error against exact attention (what the scheme allows).

    Tightness test: emul < 0.5 * exact + round. Where kernel and emulation differ by far less than one output ulp
    in fp32, their rounded values differ only where a rounding boundary falls between them, by one ulp; the
    rounding error averages ~1/4 ulp, so ``round`` allows such flips on up to ~1/4 of the elements. The term
    matters only where the quantization error is itself below the output rounding (channel-offset V, whose large
    mean dominates the output)."""
    emu_r = emu.to(o.dtype)
    return {"exact": rel_l1(o, ref), "emul": rel_l1(o, emu_r), "round": rel_l1(emu_r, emu), "scheme": rel_l1(emu, ref),
            "lse_exact": lse_max_abs(lse, ref_lse) if lse is not None else 0.0,
            "lse_emul": lse_max_abs(lse, emu_lse) if lse is not None else 0.0,
            "lse_scheme": lse_max_abs(emu_lse, ref_lse) if lse is not None else 0.0}


class Report:
    """Rows the GPU tests measured; written as JSON at the end of the session when $SAGEGEN_TEST_REPORT is set
    (the numbers behind ACCURACY.md)."""

    def __init__(self):
        self.rows = []

    def add(self, **row):
        self.rows.append(row)

    def write(self):
        path = os.environ.get("SAGEGEN_TEST_REPORT")
        if path and self.rows:
            with open(path, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(), "rows": self.rows}, f, indent=1)
