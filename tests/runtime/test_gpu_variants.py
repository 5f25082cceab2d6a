"""Every enumerated attn_mma and attn_short variant of this GPU's arch, run through
sagegen.attention(variant=...), against exact attention and against the variant's own emulation
(sagegen.reference.sage2_attention with its scale groups, key block and P.V accumulator).

The kernel must match its emulation far more tightly than it matches exact attention: rel-L1(kernel, emulation)
< 0.5 * rel-L1(kernel, exact) + (rel-L1 of the output rounding; see gpu_util.errors). The emulation reproduces the
quantization exactly, so what is left between them is fp32 summation order, exp2 approximation and the rare int8
value that differs by one (K's mean summed in another order), all orders of magnitude below the quantization error
that rel-L1(kernel, exact) measures. The emulation is rounded to the output dtype before comparing, so the shared
output rounding does not count. LSE (fp32): within 0.01 of the emulation's, 0.05 of exact attention's.

Four cases per variant (fresh inputs per test from a per-test seed): N(0,1) with GQA and Nq != Nk; channel
outliers in K and V, NHD, a padded head dim (d - 8) and top-left alignment; all-zero rows, blocks and a V channel;
17 keys for 40 queries (fewer key blocks than stages; causal variants leave 23 rows with no key).
"""
from __future__ import annotations

import pytest
import torch

import sagegen
from sagegen.variants import spec_from_name

from .gpu_util import OUT_DTYPES, compiled_spec, device_variants, emulate, errors, exact, inputs, seed_of

pytestmark = pytest.mark.gpu


# (dist, B, Hq, Hkv, nq, nk, d - spec.d, layout, input dtype, causal alignment, bound vs exact)
CASES = {
    "normal-gqa": ("normal", 1, 4, 2, 300, 517, 0, "HND", torch.float16, "bottom_right", 0.03),
    "outliers-nhd-pad": ("outliers", 2, 2, 2, 200, 333, -8, "NHD", torch.bfloat16, "top_left", 0.05),
    "zeros": ("zeros", 1, 2, 1, 600, 600, 0, "HND", torch.bfloat16, "bottom_right", 0.03),
    # fewer key blocks than stages (the 4-stage loop's partial first round) and 23 query rows that see no key
    "few-keys": ("normal", 2, 2, 1, 40, 17, 0, "NHD", torch.bfloat16, "bottom_right", 0.05),
}


def check_variant(report, test: str, name: str, case: str, q, k, v, *, layout: str, align: str, bound: float):
    """attention(variant=name) with the LSE against exact attention and the variant's emulation (the bounds in
    the module docstring); rows that see no key (bottom-right causal, nq > nk) must give 0 and LSE -inf and are
    left out of the error numbers."""
    spec = spec_from_name(name)
    hd, nd = (1, 2) if layout == "HND" else (2, 1)
    B, Hq, nq, nk = q.shape[0], q.shape[hd], q.shape[nd], k.shape[nd]
    o, lse = sagegen.attention(q, k, v, is_causal=spec.causal, causal_alignment=align, tensor_layout=layout,
                               return_lse=True, out_dtype=OUT_DTYPES[spec.o], variant=spec)
    assert o.shape == q.shape and o.dtype == OUT_DTYPES[spec.o] and lse.shape == (B, Hq, nq)
    assert torch.isfinite(o).all(), "non-finite output"
    ref, ref_lse = exact(q, k, v, causal=spec.causal, causal_align=align, layout=layout)
    emu, emu_lse = emulate(spec, q, k, v, causal_align=align, layout=layout)
    if spec.causal and align == "bottom_right" and nq > nk:  # rows that see no key: output 0, LSE -inf
        rows = (slice(None), slice(None), slice(0, nq - nk)) if layout == "HND" else (slice(None), slice(0, nq - nk))
        assert (o[rows] == 0).all() and torch.isneginf(lse[:, :, : nq - nk]).all()
        keep = (slice(None), slice(None), slice(nq - nk, None)) if layout == "HND" else \
            (slice(None), slice(nq - nk, None))
        o, ref, emu = o[keep], ref[keep], emu[keep]
        lse, ref_lse, emu_lse = lse[:, :, nq - nk:], ref_lse[:, :, nq - nk:], emu_lse[:, :, nq - nk:]
    e = errors(o, lse, ref, ref_lse, emu, emu_lse)
    report.add(test=test, variant=name, case=case, **e)
    assert e["exact"] < bound, e
    assert e["emul"] <= 0.5 * e["exact"] + e["round"], e
    assert e["lse_exact"] < 0.05 and e["lse_emul"] < 0.01, e


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", device_variants("attn_mma"))
def test_variant(gpu_kernels, report, name, case):
    spec = compiled_spec(gpu_kernels, name)
    dist, B, Hq, Hkv, nq, nk, dd, layout, dtype, align, bound = CASES[case]
    q, k, v = inputs(dist, B=B, Hq=Hq, Hkv=Hkv, nq=nq, nk=nk, d=spec.d + dd, dtype=dtype, layout=layout,
                     seed=seed_of(name + case))
    check_variant(report, "variant", name, case, q, k, v, layout=layout, align=align, bound=bound)


# attn_short (nk <= 128, quantization inside the kernel): the same scheme and emulation as attn_mma, so the same
# bounds. (dist, B, Hq, Hkv, nq, nk, d - spec.d, layout, causal alignment, bound vs exact); inputs in spec.x.
SHORT_CASES = {
    "normal-gqa": ("normal", 1, 4, 2, 300, 117, 0, "HND", "bottom_right", 0.03),
    "outliers-nhd-pad": ("outliers", 2, 2, 2, 200, 128, -8, "NHD", "top_left", 0.05),
    "zeros": ("zeros", 1, 2, 1, 100, 100, 0, "HND", "bottom_right", 0.03),
    "one-key": ("normal", 2, 2, 1, 17, 1, 0, "NHD", "bottom_right", 0.05),
}


@pytest.mark.parametrize("case", list(SHORT_CASES))
@pytest.mark.parametrize("name", device_variants("attn_short"))
def test_short_variant(gpu_kernels, report, name, case):
    spec = compiled_spec(gpu_kernels, name)
    dist, B, Hq, Hkv, nq, nk, dd, layout, align, bound = SHORT_CASES[case]
    q, k, v = inputs(dist, B=B, Hq=Hq, Hkv=Hkv, nq=nq, nk=nk, d=spec.d + dd, dtype=OUT_DTYPES[spec.x],
                     layout=layout, seed=seed_of(name + case))
    check_variant(report, "short", name, case, q, k, v, layout=layout, align=align, bound=bound)
