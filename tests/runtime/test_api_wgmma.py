"""sagegen.attention's precisions on a fake sm90a GPU (tests/runtime/conftest.py: fake_hopper): the wgmma
family's launches and their arguments, the precision switch and its fallback on archs without an FP8 family,
forced attn_wgmma variants."""
from __future__ import annotations

import math
import re

import pytest
import torch

import sagegen
from sagegen.quant_layout import padded_len
from sagegen.render import render
from sagegen.runtime import api, attn_wgmma, quant, registry
from sagegen.variants.attn_mma import AttnMmaSpec
from sagegen.variants.attn_wgmma import AttnWgmmaSpec, enumerate_variants

from .test_api_plans import BF16, F16, LOG2E, inputs  # the fake-GPU eager path's inputs and constants


def wgmma_spec(o="bf16", d=128, causal=False, qg="thread", **fields) -> AttnWgmmaSpec:
    """An enumerated variant, found by its fields."""
    want = dict(o=o, d=d, causal=causal, qg=qg, **fields)
    return next(s for s in enumerate_variants("sm90a") if all(getattr(s, f) == v for f, v in want.items()))


def qkv_launch(launches):
    (entry,) = [e for e in launches if e[0].family == "quant" and e[0].op == "qkv"]
    return entry


# --- the default precision on sm90a ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("nq,nk,d", [(100, 130, 128), (1000, 300, 64), (1, 517, 72)])
def test_default_precision_on_sm90a_runs_the_wgmma_family(fake_hopper, layout, nq, nk, d):
    q, k, v = inputs(nq=nq, nk=nk, d=d, layout=layout)
    o = sagegen.attention(q, k, v, tensor_layout=layout)
    assert o.shape == q.shape and o.dtype == BF16
    assert [(s.family, getattr(s, "op", None)) for s, *_ in fake_hopper] == \
        [("quant", "stats"), ("quant", "qkv"), ("attn_wgmma", None)]
    (stats, *_), (qkv, _, _, _, qargs) = fake_hopper[0], qkv_launch(fake_hopper)
    assert stats.v == "e4m3t"  # V amax for its FP8 scales (the image needs the same ones)
    assert qkv.v == "e4m3w" and qkv.d == (64 if d <= 64 else 128)
    assert qargs[24] == 1 and quant.QKV_PARAMS.codes[24] == "i"  # qk_image: Q and K in their operand image
    spec, grid, block, smem, args = fake_hopper.attn()[0]
    assert spec == registry.heuristic(api.inspect_inputs(q, k, v, tensor_layout=layout).key(), sm_count=132)
    assert spec.d == (64 if d <= 64 else 128) and spec.o == "bf16" and not spec.causal
    assert grid == (-(-padded_len(nq) // spec.m), 4, 2)  # a 192-row tiling's last CTA may reach past nq_pad
    assert block == 128 * (spec.m // 64 + 1) == spec.threads and smem == spec.smem_bytes()
    # per-thread scale groups of the variant reach the quantization pass (q_tile, q_sub, k_tile, k_sub)
    qg, kg = spec.q_groups, spec.k_groups
    assert tuple(int(a) for a in qargs[19:23]) == (qg.tile, qg.sub, kg.tile, kg.sub) == (16, 8, 128, 4)


@pytest.mark.parametrize("precision, pv, v_mode, stats_v", [("fast", "e4m3", "e4m3w", "e4m3t"),
                                                           ("accurate", "f16", "f16w", "none")])
@pytest.mark.parametrize("d", [136, 256])
def test_head_dims_above_128_run_the_d256_wgmma_kernels_on_sm90a(fake_hopper, precision, pv, v_mode, stats_v, d):
    """d = 256 has a wgmma kernel in either precision, one block at a time: the quantization pass writes Q and K in
    their d = 256 image and V in the P.V format's image."""
    q, k, v = inputs(nq=300, nk=300, d=d)
    o = sagegen.attention(q, k, v, precision=precision, sdpa_fallback=False)
    assert o.shape == q.shape
    (stats, *_), (qkv, _, _, _, qargs) = fake_hopper[0], qkv_launch(fake_hopper)
    assert (qkv.d, qkv.v, stats.v) == (256, v_mode, stats_v) and qargs[24] == 1  # qk_image
    spec = fake_hopper.attn()[0][0]
    assert isinstance(spec, AttnWgmmaSpec) and (spec.d, spec.pv, spec.m, spec.overlap) == (256, pv, 128, False)


def _kernel_params(spec) -> list[tuple[str, str]]:
    """(C type, name) of the rendered kernel's parameters, in order."""
    signature = re.search(rf"{spec.name}\((.*?)\)\s*{{", render(spec), re.S).group(1)
    return [re.fullmatch(r"(.*?)\s*\b(\w+)", p.strip()).groups() for p in signature.split(",")]


def test_launch_arguments_match_the_kernel_signature(fake_hopper):
    """The arguments follow the kernel's parameters: attn_wgmma.PARAMS declares them (test_launch.py checks it
    against every rendered variant), and each value has the Python type its code packs without conversion."""
    q, k, v = inputs(layout="NHD", dtype=F16)
    o, lse = sagegen.attention(q, k, v, tensor_layout="NHD", return_lse=True, is_causal=True)
    spec, *_, args = fake_hopper.attn()[0]
    params = _kernel_params(spec)
    assert len(args) == len(params) == len(attn_wgmma.PARAMS.codes)
    for (ctype, _), code, a in zip(params, attn_wgmma.PARAMS.codes, args):
        if "*" in ctype or ctype == "long long":
            assert code in "pq" and type(a) is int, (ctype, a)
        elif ctype == "int":
            assert code == "i" and type(a) is int, (ctype, a)
        elif ctype == "float":
            assert code == "f" and type(a) is float, (ctype, a)
        else:
            pytest.fail(f"unexpected parameter type {ctype}")
    named = {name: a for (_, name), a in zip(params, args)}
    assert named["o"] == o.data_ptr() and named["lse"] == lse.data_ptr()
    # o is [B, N, H, d] (NHD): (batch, head, token) strides in elements
    assert (named["o_sb"], named["o_sh"], named["o_sn"]) == (100 * 4 * 128, 128, 4 * 128)
    assert [int(named[n]) for n in ("Hq", "Hkv", "nq", "nk", "nq_pad", "nk_pad", "d", "causal_offset")] == \
        [4, 2, 100, 130, 128, 256, 128, 30]
    assert float(named["sm_scale_log2"]) == pytest.approx(LOG2E / math.sqrt(128), rel=1e-6)


def test_lse_is_returned_and_the_qk_bias_computed(fake_hopper):
    q, k, v = inputs()
    o, lse = sagegen.attention(q, k, v, return_lse=True)
    assert lse.shape == (2, 4, 100) and lse.dtype == torch.float32
    *_, qargs = qkv_launch(fake_hopper)
    assert qargs[-1] != 0  # the qkv pass writes q . mean(k) for the LSE
    sagegen.attention(q, k, v)
    *_, qargs = [e for e in fake_hopper if e[0].family == "quant" and e[0].op == "qkv"][-1]
    assert qargs[-1] == 0 and fake_hopper.attn()[-1][-1][10] == 0  # no LSE: null pointers


@pytest.mark.parametrize("align,offset", [("bottom_right", 30), ("top_left", 0)])
def test_causal_alignment_and_scale_reach_the_wgmma_kernel(fake_hopper, align, offset):
    sagegen.attention(*inputs(nq=100, nk=130), is_causal=True, causal_alignment=align, sm_scale=0.25)
    spec, *_, args = fake_hopper.attn()[0]
    assert isinstance(spec, AttnWgmmaSpec) and spec.causal and int(args[-1]) == offset
    assert float(args[-2]) == pytest.approx(0.25 * LOG2E, rel=1e-6)


def test_out_dtype_selects_the_wgmma_variant(fake_hopper):
    o = sagegen.attention(*inputs(dtype=BF16), out_dtype=F16)
    spec = fake_hopper.attn()[0][0]
    assert o.dtype == F16 and isinstance(spec, AttnWgmmaSpec) and spec.o == "f16"


def test_describe_says_what_runs(fake_hopper):
    q, k, v = inputs()
    fast = api.describe(q, k, v)
    accurate = api.describe(q, k, v, precision="accurate")
    assert isinstance(fast.spec, AttnWgmmaSpec) and fast.source == "heuristic"
    assert isinstance(accurate.spec, AttnWgmmaSpec) and (fast.spec.pv, accurate.spec.pv) == ("e4m3", "f16")
    assert not fake_hopper  # describing launches nothing


# --- the precision switch -------------------------------------------------------------------------------------
def test_accurate_on_sm90a_runs_the_fp16_pv_wgmma_family(fake_hopper):
    q, k, v = inputs()
    sagegen.attention(q, k, v, precision="accurate")
    spec, grid, block, smem, _ = fake_hopper.attn()[0]
    assert isinstance(spec, AttnWgmmaSpec) and spec.arch == "sm90a" and spec.pv == "f16"
    assert block == spec.threads and smem == spec.smem_bytes()
    (stats, *_), (qkv, *_, qargs) = fake_hopper[0], qkv_launch(fake_hopper)
    assert stats.v == "none"  # fp16 V has no per-channel scales: no V statistics
    assert qkv.v == "f16w" and int(qargs[24]) == 1  # fp16 V image; Q/K in their operand image
    assert [s.family for s, *_ in fake_hopper] == ["quant", "quant", "attn_wgmma"]


def test_accurate_mma_family_still_runs_when_named_on_sm90a(fake_hopper):
    q, k, v = inputs()
    mma = next(s for s in registry.candidate_specs(api.inspect_inputs(q, k, v, precision="accurate").key())
               if isinstance(s, AttnMmaSpec))
    sagegen.attention(q, k, v, variant=mma)
    assert fake_hopper.attn()[0][0] == mma
    qkv, *_, qargs = qkv_launch(fake_hopper)
    assert qkv.v == "f16" and int(qargs[24]) == 0  # bf16 V copied to fp16; plain Q/K


def test_each_precision_has_its_own_plan(fake_hopper):
    q, k, v = inputs()
    for precision in ("fast", "accurate", "fast", "accurate"):
        sagegen.attention(q, k, v, precision=precision)
    assert [(s.family, s.pv) for s, *_ in fake_hopper.attn()] == [("attn_wgmma", "e4m3"), ("attn_wgmma", "f16")] * 2
    assert len(api._plans) == 2


@pytest.mark.parametrize("precision", ["fast", "accurate"])
def test_fast_on_sm89_runs_the_accurate_mma_family(fake_gpu, precision):
    q, k, v = inputs()
    sagegen.attention(q, k, v, precision=precision)
    spec = fake_gpu.attn()[0][0]
    assert isinstance(spec, AttnMmaSpec) and spec.arch == "sm89" and spec.acc == "f32"
    assert spec == registry.heuristic(api.inspect_inputs(q, k, v, precision="accurate").key(), sm_count=132)
    assert qkv_launch(fake_gpu)[0].v == "f16"


@pytest.mark.parametrize("precision", ["turbo", "FAST", "", None, 1])
def test_invalid_precision_raises_naming_precision(fake_hopper, precision):
    with pytest.raises(ValueError, match="precision") as e:
        sagegen.attention(*inputs(), precision=precision)
    assert "fast" in str(e.value) and "accurate" in str(e.value)
    assert not fake_hopper  # before any launch


# --- forced variants ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("by", ["name", "spec"])
def test_forced_wgmma_variant(fake_hopper, by):
    spec = wgmma_spec(qg="block", s=3)
    sagegen.attention(*inputs(), variant=spec.name if by == "name" else spec)
    assert fake_hopper.attn()[0][0] == spec
    qkv, *_, qargs = qkv_launch(fake_hopper)
    assert qkv.v == "e4m3w" and int(qargs[24]) == 1
    assert tuple(int(a) for a in qargs[19:23]) == (128, 1, 128, 1)  # per-block groups of the named variant


def test_a_forced_variant_wins_over_precision(fake_hopper):
    wg = wgmma_spec()
    sagegen.attention(*inputs(), variant=wg.name, precision="accurate")
    mma = next(s for s in registry.candidate_specs(api.inspect_inputs(*inputs(), precision="accurate").key())
               if isinstance(s, AttnMmaSpec))
    sagegen.attention(*inputs(), variant=mma.name, precision="fast")
    assert [e[0] for e in fake_hopper.attn()] == [wg, mma]
    assert [e[0].v for e in fake_hopper if e[0].family == "quant" and e[0].op == "qkv"] == ["e4m3w", "f16"]


def test_forced_wgmma_variant_with_padded_head_dim_and_gqa(fake_hopper):
    q, k, v = inputs(B=1, Hq=8, Hkv=2, nq=257, nk=4097, d=56, layout="NHD", dtype=F16)
    spec = wgmma_spec(o="f16", d=64, causal=True)
    o, lse = sagegen.attention(q, k, v, tensor_layout="NHD", is_causal=True, return_lse=True, variant=spec)
    assert o.shape == q.shape and o.dtype == F16 and lse.shape == (1, 8, 257)
    _, grid, *_, args = fake_hopper.attn()[0]
    assert grid == (padded_len(257) // 128, 8, 1)
    assert [int(a) for a in args[11:18]] == [8, 2, 257, 4097, 384, padded_len(4097), 56] and int(args[-1]) == 3840


@pytest.mark.parametrize("change,words", [
    (dict(d=64), ("d 64", "128")), (dict(causal=True), ("causal",)), (dict(o="f16"), ("output",)),
])
def test_mismatched_wgmma_variant_is_rejected(fake_hopper, change, words):
    spec = wgmma_spec(**{**dict(o="bf16", d=128, causal=False), **change})
    with pytest.raises(ValueError, match="cannot run") as e:
        sagegen.attention(*inputs(d=128), variant=spec.name)
    for w in words:
        assert w in str(e.value)
    assert not fake_hopper


def test_wgmma_variant_is_rejected_on_an_arch_without_it(fake_gpu):
    with pytest.raises(ValueError, match="arch sm90a != device arch sm89"):
        sagegen.attention(*inputs(), variant=wgmma_spec().name)
    assert not fake_gpu


def test_forced_wgmma_variant_on_meta():
    """Meta tensors have no arch: a named attn_wgmma variant gives its output's shape and dtype."""
    q, k, v = (t.to("meta") for t in inputs(nq=300, nk=517, d=120))
    o, lse = sagegen.attention(q, k, v, variant=wgmma_spec(o="f16", causal=True), is_causal=True, return_lse=True,
                               out_dtype=F16)
    assert o.device.type == "meta" and o.shape == q.shape and o.dtype == F16 and lse.shape == (2, 4, 300)


def test_three_warpgroup_variant_grid_covers_the_padding(fake_hopper):
    """m=192 does not divide the padded length (a multiple of 128): the grid rounds up and the kernel copies only
    the Q rows that exist (templates/attn_wgmma/kernel.cuh, produce)."""
    q, k, v = inputs(nq=1000, nk=300, d=64)
    spec = wgmma_spec(d=64, m=192, pv="f16", s=3, overlap=True, pingpong=True)
    sagegen.attention(q, k, v, variant=spec)
    got, grid, block, smem, _ = fake_hopper.attn()[0]
    assert got == spec and spec.consumers == 3
    assert grid[0] == 6 and grid[0] * 192 >= padded_len(1000) > (grid[0] - 1) * 192
    assert block == 512 and smem == spec.smem_bytes()
