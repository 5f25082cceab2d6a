"""Helpers of the GPU tests: seeded inputs, the emulation of a variant, the error numbers, the session report."""
from __future__ import annotations

import json
import os
import zlib

import torch

from sagegen.quant_layout import k_groups
from sagegen.reference import attention_exact, lse_max_abs, make_inputs, rel_l1, sage2_attention

OUT_DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


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
    """The torch emulation of exactly what ``spec`` computes (scale groups, key blocks, P.V accumulator)."""
    assert k_groups(spec.qg, spec.n) == spec.k_groups, f"no emulation granularity for {spec.qg}/{spec.kg}"
    return sage2_attention(q, k, v, causal=spec.causal, causal_align=causal_align, sm_scale=sm_scale, layout=layout,
                           qk_format="int8", granularity=spec.qg, block_m=spec.m, warp_m=spec.warp_m, block_n=spec.n,
                           smooth_k=True, pv="fp16", pv_accum="fp32" if spec.acc == "f32" else "fp16")


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
            "lse_emul": lse_max_abs(lse, emu_lse) if lse is not None else 0.0}


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
