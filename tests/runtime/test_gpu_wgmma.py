"""The sm90a wgmma family on the GPU (skipped elsewhere): every enumerated attn_wgmma variant against exact
attention and against its SageAttention2 emulation (sagegen.reference.sage2_attention with FP8 P.V and the
variant's scale groups: granularity from (qg, kg), block_m = m, warp_m = 16, block_n = n), and
sagegen.attention's default precision on sm90a.

Each variant runs through attn_wgmma.forward into an output poisoned with NaN (every element must be written),
causal variants bottom-right aligned, on five cases: N(0,1) 1000x1000 (B=2, H=4); GQA 257 queries x 4097 keys,
NHD; a padded head dim (d - 8) with channel outliers in K and V (17 x 17); an all-zero 128-row block of Q and K
with 4097 queries x 300 keys (causal: most rows see no key: output 0, LSE -inf); a single query (x 300 keys).
Bounds (scripts/wgmma_check.py measured the family on an H200: rel-L1 0.020-0.041 against exact attention,
<= 0.0016 against the emulation): rel-L1 <= 0.05 against exact attention, <= 0.005 against the emulation and, on
N(0,1), at least 5x tighter than against exact attention; LSE within 0.05 of exact attention's and 0.01 of the
emulation's (0.07 with the row sum on the MMA, see LSE_EMUL_BOUND_MMA_ROWSUM); all finite.
"""
from __future__ import annotations

import math

import pytest
import torch

import sagegen
from sagegen.reference import rel_l1
from sagegen.runtime import api
from sagegen.runtime import attn_wgmma as W

from .gpu_util import OUT_DTYPES, compiled_spec, device_variants, emulate, errors, exact, inputs, seed_of

pytestmark = pytest.mark.gpu

BF16, F16 = torch.bfloat16, torch.float16


# (B, Hq, Hkv, nq, nk, d - spec.d, layout, kind)
CASES = {
    "normal": (2, 4, 4, 1000, 1000, 0, "HND", "normal"),
    "gqa-long-nhd": (1, 8, 2, 257, 4097, 0, "NHD", "normal"),
    "outliers-pad": (2, 4, 2, 17, 17, -8, "HND", "outliers"),
    "zero-block": (1, 2, 2, 4097, 300, 0, "HND", "zeros"),
    "one-query": (2, 8, 2, 1, 300, 0, "NHD", "normal"),
}
# Enough heads in the small cases that rel-L1 averages over a few thousand outputs: the emulation's own error
# against exact attention is then at most 0.041 over every variant's seed (0.047 with 2 heads of one query).
EXACT_BOUND, EMUL_BOUND, TIGHTER, LSE_BOUND, LSE_EMUL_BOUND = 0.05, 0.005, 5.0, 0.05, 0.01
# FP16 P.V (pv=f16): the accurate scheme's emulation is within ~0.012 of exact attention here (attn_mma's bounds,
# tests/runtime/test_gpu_variants.py), and the kernel must sit within half of that of its emulation (plus the
# output rounding both share: test_gpu_variants' rule)
EXACT_BOUND_F16 = 0.03
# rowsum=mma: the denominator sums the e4m3 P, so an e4m3 rounding that flips between kernel and emulation (their p
# differ by ~1e-5) moves l by up to 2^-4 of one element: for a causal row that sees 2 keys, up to log(1 + 1/16)
# = 0.06 in LSE. (The fp32 row sum is insensitive to it.) The output is normalized by the same sum: unaffected.
LSE_EMUL_BOUND_MMA_ROWSUM = 0.07
# INT8 P.V (pv=i8, the "balanced" precision): on N(0,1) its scheme is within ~0.016 of exact attention (CPU
# emulation, ACCURACY.md); the kernel must show it. (Its dp4a row sum also sums the quantized P, but a u8 rounding
# flip moves l by at most 1/255 of the block's largest element: LSE_EMUL_BOUND holds.)
EXACT_BOUND_I8_NORMAL = 0.03


def case_inputs(kind, *, B, Hq, Hkv, nq, nk, d, layout, dtype, seed):
    """N(0,1) inputs in ``layout``; "outliers": K channel 3 shifted by 20 (what smoothing K is for), V channel 5
    scaled by 30; "zeros": query and key rows 0..127 (one whole 128-row block) all zero."""
    q, k, v = inputs("normal", B=B, Hq=Hq, Hkv=Hkv, nq=nq, nk=nk, d=d, dtype=torch.float32, layout=layout, seed=seed)
    if kind == "outliers":
        k[..., 3] += 20.0
        v[..., 5] *= 30.0
    elif kind == "zeros":
        rows = (slice(None), slice(None), slice(0, 128)) if layout == "HND" else (slice(None), slice(0, 128))
        q[rows] = 0.0
        k[rows] = 0.0
    return q.to(dtype), k.to(dtype), v.to(dtype)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name", device_variants("attn_wgmma"))
def test_wgmma_variant(gpu_kernels, report, name, case):
    spec = compiled_spec(gpu_kernels, name)
    B, Hq, Hkv, nq, nk, dd, layout, kind = CASES[case]
    d = spec.d + dd
    q, k, v = case_inputs(kind, B=B, Hq=Hq, Hkv=Hkv, nq=nq, nk=nk, d=d, layout=layout, dtype=OUT_DTYPES[spec.o],
                          seed=seed_of(name + case))
    offset = nk - nq if spec.causal else 0  # bottom-right
    out = torch.full(q.shape, float("nan"), device=q.device, dtype=OUT_DTYPES[spec.o])  # poison
    o, lse = W.forward(q, k, v, spec, layout=layout, sm_scale=1 / math.sqrt(d), causal_offset=offset,
                       return_lse=True, out=out)
    torch.cuda.synchronize()
    assert o.data_ptr() == out.data_ptr() and o.shape == q.shape and lse.shape == (B, Hq, nq)
    assert torch.isfinite(o).all(), "non-finite (or unwritten) output"
    ref, ref_lse = exact(q, k, v, causal=spec.causal, causal_align="bottom_right", layout=layout)
    emu, emu_lse = emulate(spec, q, k, v, causal_align="bottom_right", layout=layout)
    e = errors(o, lse, ref, ref_lse, emu, emu_lse)
    report.add(test="wgmma_variant", variant=name, case=case, **e)
    # rows that see no key: output 0 and LSE -inf, as exact attention
    none_seen = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), none_seen) and not torch.isnan(lse).any()
    rows = none_seen.transpose(1, 2) if layout == "NHD" else none_seen
    assert (o[rows] == 0).all()
    if spec.pv == "f16":
        assert e["exact"] <= (EXACT_BOUND if kind == "outliers" else EXACT_BOUND_F16), e
        assert e["emul"] <= 0.5 * e["exact"] + e["round"], e
    else:
        assert e["exact"] <= EXACT_BOUND, e
        assert e["emul"] <= EMUL_BOUND, e
        if case == "normal":
            assert TIGHTER * e["emul"] <= e["exact"], e
            if spec.pv == "i8":
                assert e["exact"] <= EXACT_BOUND_I8_NORMAL, e
    lse_emul_bound = LSE_EMUL_BOUND_MMA_ROWSUM if spec.rowsum == "mma" else LSE_EMUL_BOUND
    # against exact attention: 0.05, or what the scheme itself allows on these inputs (the emulation's own LSE
    # error, from the INT8 Q.K^T: per-block scales at d=64 reach 0.053 on one seed) plus the emulation bound
    assert e["lse_exact"] <= max(LSE_BOUND, e["lse_scheme"] + lse_emul_bound), e
    assert e["lse_emul"] <= lse_emul_bound, e
    if case == "normal":  # the same kernel through sagegen.attention and the two ops: the same bits
        o2, lse2 = sagegen.attention(q, k, v, is_causal=spec.causal, return_lse=True, out_dtype=OUT_DTYPES[spec.o],
                                     variant=spec)
        assert torch.equal(o2, o) and torch.equal(lse2, lse)


# --- sagegen.attention's precisions on sm90a ------------------------------------------------------------------
def _require_sm90a():
    from sagegen.runtime.device import device_arch

    arch = device_arch(torch.cuda.current_device()).name
    if arch != "sm90a":
        pytest.skip(f"the wgmma family is sm90a only; this GPU is {arch}")


@pytest.mark.parametrize("d", [64, 128, 240])
@pytest.mark.parametrize("causal", [False, True])
def test_precisions_of_attention_on_sm90a(gpu_kernels, report, request, d, causal):
    """Default ("fast": INT8 Q.K^T, FP8 P.V) within 0.05 rel-L1 of exact attention; "balanced" (INT8 P.V) within
    0.03; "accurate" (FP16 P.V) within 0.015, and at least as accurate as balanced, which is at least as accurate
    as fast; all the wgmma family (d = 240: its d = 256 kernels, FP8 P.V in channel halves; balanced has no d = 256
    kernel and runs the accurate one there)."""
    _require_sm90a()
    q, k, v = inputs(B=2, Hq=8, Hkv=4, nq=2048, nk=2048, d=d, seed=seed_of(request.node.name))
    ref, _ = exact(q, k, v, causal=causal)
    kw = dict(is_causal=causal, sdpa_fallback=False)
    fast, accurate = api.describe(q, k, v, **kw), api.describe(q, k, v, precision="accurate", **kw)
    balanced = api.describe(q, k, v, precision="balanced", **kw)
    assert fast.spec.family == accurate.spec.family == balanced.spec.family == "attn_wgmma"
    assert (fast.spec.pv, balanced.spec.pv, accurate.spec.pv) == ("e4m3", "f16" if d > 128 else "i8", "f16")
    o_fast = sagegen.attention(q, k, v, **kw)
    o_bal = sagegen.attention(q, k, v, precision="balanced", **kw)
    o_acc = sagegen.attention(q, k, v, precision="accurate", **kw)
    e_fast, e_bal, e_acc = rel_l1(o_fast, ref), rel_l1(o_bal, ref), rel_l1(o_acc, ref)
    report.add(test=request.node.name, fast=e_fast, balanced=e_bal, accurate=e_acc, fast_variant=fast.spec.name,
               balanced_variant=balanced.spec.name, accurate_variant=accurate.spec.name)
    assert torch.isfinite(o_fast).all() and torch.isfinite(o_bal).all() and torch.isfinite(o_acc).all()
    assert e_fast <= 0.05 and e_bal <= 0.03 and e_acc <= 0.015, (e_fast, e_bal, e_acc)
    assert e_acc <= e_bal < e_fast  # in the order the precisions promise


@pytest.mark.parametrize("precision", ["fast", "accurate"])
def test_wgmma_opcheck(gpu_kernels, precision):
    _require_sm90a()
    q, k, v = inputs(B=1, Hq=4, Hkv=2, nq=200, nk=300, d=128, dtype=BF16, seed=20)
    spec = api.describe(q, k, v, is_causal=True, return_lse=True, sdpa_fallback=False, precision=precision).spec
    assert spec.family == "attn_wgmma" and spec.v_mode == {"fast": "e4m3w", "accurate": "f16w"}[precision]
    qg, kg = spec.q_groups, spec.k_groups
    qargs = (q, k, v, "HND", qg.tile, qg.sub, kg.tile, kg.sub, spec.v_mode, True, True)
    torch.library.opcheck(torch.ops.sagegen.quantize.default, qargs)
    z = torch.ops.sagegen.quantize.default(*qargs)
    aargs = (z[0], z[1], z[2], z[3], z[4], z[5], z[6], spec.name, "HND", 200, 300, 128, 0.1, 100, True)
    # no test_schema: its mutation check compares the inputs with torch.allclose, which float8 tensors lack
    torch.library.opcheck(torch.ops.sagegen.attn_wgmma.default, aargs,
                          test_utils=("test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"))
