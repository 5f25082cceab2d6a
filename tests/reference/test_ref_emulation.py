"""Emulations: their plumbing against exact attention of the quantized operands, their accumulator models against
scalar loops, convergence to exact attention as precision grows, and the accuracy ranges the papers report."""
from __future__ import annotations

import math

import pytest
import torch

from .ref_helpers import naive_attention, qkv, randn
from sagegen.quant_layout import k_groups, q_groups
from sagegen.reference import (attention_exact, cosine, fp16_accum_v_max, make_inputs, quantize_int, rel_l1,
                               sage1_attention, sage2_attention, sage2pp_attention, sage3_attention)
from sagegen.reference import quant as Q
from sagegen.reference import sage3 as S3
from sagegen.reference._engine import accumulate_pv
from sagegen.reference.formats import round_e4m3, round_fp16, round_mantissa

EMULATIONS = [sage1_attention, sage2_attention, sage2pp_attention, sage3_attention]


def _scores_with_dequantized_operands(q, k, *, bits, gran, block_m, warp_m, block_n, smooth_q):
    """Independent fp64 scores from the quantizers' dequantized buffers (+ the Q-smoothing term)."""
    nq, d, nk = q.shape[2], q.shape[3], k.shape[2]
    qt = quantize_int(q, q_groups(gran, block_m, warp_m), bits=bits, smooth=block_m if smooth_q else False)
    kt = quantize_int(k, k_groups(gran, block_n), bits=bits, smooth=True)
    qd = qt.dequantize()[:, :, :nq, :d].double()
    if smooth_q:
        k_s, _ = Q.smooth_pad(k, True)
        qd = qd + qt.mean.repeat_interleave(block_m, dim=2)[:, :, :nq, :d].double()
        # (q_s,deq + mean_q) . k_deq + mean_q . (k_s - k_deq): the emulation adds mean_q . k_s exactly
        corr = (qt.mean.repeat_interleave(block_m, dim=2)[:, :, :nq, :d].double()
                @ (k_s[:, :, :nk, :d].double() - kt.dequantize()[:, :, :nk, :d].double()).transpose(-1, -2)
                .repeat_interleave(q.shape[1] // k.shape[1], dim=1))
    else:
        corr = 0
    kd = kt.dequantize()[:, :, :nk, :d].double().repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    return qd @ kd.transpose(-1, -2) + corr, kt.mean[:, :, 0, :d].double()


@pytest.mark.parametrize("causal,align", [(False, "bottom_right"), (True, "top_left"), (True, "bottom_right")])
@pytest.mark.parametrize("nq,nk,hq,hkv", [(200, 200, 2, 2), (96, 300, 4, 2), (300, 130, 4, 1)])
@pytest.mark.parametrize("gran,smooth_q", [("block", False), ("warp", True), ("thread", False)])
def test_int_qk_emulation_is_exact_attention_of_its_quantized_operands(causal, align, nq, nk, hq, hkv, gran,
                                                                       smooth_q):
    """With pv="fp32" the only error left is Q.K quantization: the online-softmax loop, masking, GQA, padding,
    scale maps, Q-smoothing bias and LSE correction must all agree with a one-shot fp64 softmax."""
    q, k, v = qkv(200 + nq + hkv, b=1, hq=hq, hkv=hkv, nq=nq, nk=nk, d=48, dv=40)
    k = k + randn(201, 1, hkv, 1, 48, scale=3.0).half()  # a K mean, so smoothing is exercised
    opts = dict(block_m=64, warp_m=16, block_n=32)
    out, lse = sage2_attention(q, k, v, causal=causal, causal_align=align, granularity=gran, smooth_q=smooth_q,
                               pv="fp32", **opts)
    s, mean_k = _scores_with_dequantized_operands(q, k, bits=8, gran=gran, smooth_q=smooth_q, **opts)
    scale = 1 / math.sqrt(48)
    s = s * scale
    if causal:
        shift = 0 if align == "top_left" else nk - nq
        s = s.masked_fill(~torch.ones(nq, nk, dtype=torch.bool).tril(shift), float("-inf"))
    ref = torch.nan_to_num(torch.softmax(s, -1), nan=0.0) @ v.double().repeat_interleave(hq // hkv, dim=1)
    q_dot_mean_k = (q.double() @ mean_k.repeat_interleave(hq // hkv, 1)[..., None]).squeeze(-1)
    ref_lse = torch.logsumexp(s, -1) + q_dot_mean_k * scale
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-4)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-4, rtol=1e-5)


def test_sage3_plumbing_without_p_quantization(monkeypatch):
    """sage3 with P left unquantized is exact attention of its NVFP4-dequantized Q, K, V."""
    q, k, v = qkv(210, b=1, hq=4, hkv=2, nq=150, nk=170, d=64)
    monkeypatch.setattr(S3, "quantize_p_nvfp4", lambda p, two_level: (p, None))
    out, lse = sage3_attention(q, k, v, causal=True, smooth_q=False, smooth_k=False)
    deq = [Q.quantize_nvfp4(Q.pad_fp32(t.float(), 256, 64), dim=dim).dequantize()[:, :, :t.shape[2]]
           for t, dim in ((q, -1), (k, -1), (v, -2))]
    ref, ref_lse = naive_attention(*deq, causal=True)
    torch.testing.assert_close(out.double(), ref, atol=2e-6, rtol=1e-4)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-4, rtol=1e-5)


def _naive_accumulate(p, v, k_step, flush, rnd):
    """Scalar-loop model of an inner accumulator: parts are integer sums (exact), rnd rounds the accumulator."""
    R, bn = p.shape
    out = torch.zeros(R, v.shape[1])
    for r in range(R):
        for c in range(v.shape[1]):
            o, acc = 0.0, torch.zeros(())
            for s0 in range(0, bn, k_step):
                part = sum(float(p[r, j]) * float(v[j, c]) for j in range(s0, s0 + k_step))
                acc = rnd(acc + part)
                if (s0 + k_step) % flush == 0:
                    o += float(acc)
                    acc = torch.zeros(())
            out[r, c] = o
    return out


@pytest.mark.parametrize("k_step,flush,name", [(16, 64, "fp16"), (32, 64, "fp22"), (32, 32, "fp22")])
def test_stepped_accumulator_matches_a_scalar_loop(k_step, flush, name):
    g = torch.Generator().manual_seed(220 + k_step + flush)
    p = torch.randint(0, 256, (3, 64), generator=g).float()
    v = torch.randint(-127, 128, (64, 5), generator=g).float()
    rnd = round_fp16 if name == "fp16" else (lambda x: round_mantissa(x, 13, "truncate"))
    got = accumulate_pv(p, v, torch.zeros(3, 5), k_step=k_step, flush_keys=flush, round_acc=rnd)
    assert torch.equal(got, _naive_accumulate(p, v, k_step, flush, rnd))
    assert not torch.equal(got, p @ v)  # the rounding did something


def _one_fp8_block(seed: int):
    """q, k, v of one 64-key block (so no online rescaling), its probabilities p (per-thread INT8 scores, exact
    softmax numerators), V quantized to e4m3 per channel, and P~ = e4m3(448 p)."""
    q, k, v = qkv(seed, b=1, hq=2, nq=64, nk=64, d=64)
    opts = dict(gran="thread", block_m=64, warp_m=16, block_n=64, smooth_q=False)
    s, _ = _scores_with_dequantized_operands(q, k, bits=8, **opts)
    p = torch.exp(s / 8 - (s / 8).amax(-1, keepdim=True))
    vq = Q.quantize_v_fp8(v)
    return q, k, v, p, vq, round_e4m3((448 * p).float()).double()


def test_fp8_pv_follows_its_definition_on_one_key_block():
    """One key block, so no online rescaling: out = sum_j e4m3(448 p_j) v8_j / l * v_scale / 448, l = sum_j p_j."""
    q, k, v, p, vq, pq = _one_fp8_block(225)
    ref = pq @ vq.values()[:, :, :64].double() / p.sum(-1, keepdim=True) * vq.scale[:, :, None].double() / 448
    out, _ = sage2_attention(q, k, v, granularity="thread", block_m=64, warp_m=16, block_n=64, inner_bits=None)
    unquantized_p = p @ vq.dequantize()[:, :, :64].double() / p.sum(-1, keepdim=True)
    assert rel_l1(out, ref) < 1e-5 and rel_l1(out, unquantized_p) > 0.01


def test_fp8_pv_row_sum_from_the_mma_divides_by_the_quantized_p():
    """row_sum="pv" (a kernel that appends ones to V): l = sum_j e4m3(448 p_j) / 448 instead of sum_j p_j."""
    q, k, v, p, vq, pq = _one_fp8_block(226)
    ref = pq @ vq.values()[:, :, :64].double() / pq.sum(-1, keepdim=True) * vq.scale[:, :, None].double()
    kw = dict(granularity="thread", block_m=64, warp_m=16, block_n=64, inner_bits=None)
    out, lse = sage2_attention(q, k, v, row_sum="pv", **kw)
    out_p, lse_p = sage2_attention(q, k, v, **kw)
    assert rel_l1(out, ref) < 1e-5 and not torch.equal(out, out_p)
    # the two LSEs differ by the log of the quantized sum over the exact one (K smoothing's correction cancels)
    assert (lse.double() - lse_p.double() - torch.log(pq.sum(-1) / 448 / p.sum(-1))).abs().max() < 1e-4
    with pytest.raises(ValueError, match="row_sum"):
        sage2_attention(q, k, v, row_sum="fma", **kw)


def test_int8_pv_follows_its_definition_on_one_key_block():
    """pv="int8": out = sum_j P_j v8_j / sum_j P_j * v_scale with P_j = round(fp16(255 p_j / max_j p_j)) (one
    block, so the per-row scale cancels; fp16 first, as the kernel packs P) and v8 = round(v * 127 / amax_c)."""
    q, k, v, p, _, _ = _one_fp8_block(227)
    pq = torch.round((255 * p / p.amax(-1, keepdim=True)).half().double())
    v8, v_scale = Q.quantize_v_int8(v)
    assert v8.abs().max() == 127 and torch.equal(v8, v8.round())
    ref = pq @ v8[:, :, :64].double() / pq.sum(-1, keepdim=True) * v_scale[:, :, None].double()
    kw = dict(granularity="thread", block_m=64, warp_m=16, block_n=64)
    out, _ = sage2_attention(q, k, v, pv="int8", row_sum="pv", **kw)
    assert rel_l1(out, ref) < 1e-5
    with pytest.raises(ValueError, match="pv_accum"):
        sage2_attention(q, k, v, pv="int8", pv_accum="fp16", **kw)


def test_int8_pv_scales_each_block_row_to_its_own_maximum():
    """A block far below the running max keeps its resolution. Two blocks, the second one's scores ~10.8 log2 units
    lower: round(255 p) would make all of its P zero (255 * 2^-10.8 < 0.5), per-block scaling keeps them, and the
    output matches exact attention to the u8 rounding."""
    torch.manual_seed(228)
    q = torch.zeros(1, 1, 1, 64)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, 128, 64)
    k[0, 0, :64, 0] = 60.0 + torch.rand(64)  # block 0: large scores
    k[0, 0, 64:, 0] = torch.rand(64)         # block 1: 60 / 8 * log2(e) = 10.8 log2 units lower (sm_scale 1/8)
    v = torch.zeros(1, 1, 128, 64)
    v[0, 0, 64:, 1] = 1000.0  # only block 1 writes channel 1
    v[0, 0, :64, 2] = 1.0
    t = (q[0, 0, 0] @ k[0, 0].T) / 8 * math.log2(math.e)
    assert torch.round(255 * torch.exp2(t[64:] - t.max())).max() == 0  # what unscaled u8 P would keep of block 1
    kw = dict(granularity="thread", block_m=64, warp_m=16, block_n=64, smooth_k=False, row_sum="pv")
    out, _ = sage2_attention(q, k, v, pv="int8", **kw)
    ref, _ = attention_exact(q, k, v)
    assert ref[0, 0, 0, 1] > 0.1  # block 1 matters
    assert abs(out[0, 0, 0, 1] - ref[0, 0, 0, 1]) / ref[0, 0, 0, 1] < 0.02


def test_fp16_accumulator_bound_is_tight():
    assert [fp16_accum_v_max(b) for b in (32, 64, 128)] == [4.5, 2.25, 1.125]
    p = torch.full((1, 64), 448.0)  # every p = 1: the largest sum the accumulator can see
    for v_max, finite in ((2.25, True), (2.5, False)):
        out = accumulate_pv(p, torch.full((64, 1), v_max), torch.zeros(1, 1), k_step=32, flush_keys=64,
                            round_acc=round_fp16)
        assert bool(torch.isfinite(out).all()) == finite


def test_sage2pp_survives_the_worst_case_and_rejects_a_larger_v_range():
    q = torch.zeros(1, 1, 256, 64, dtype=torch.float16)  # equal scores: p = 1 for every key
    k = randn(230, 1, 1, 256, 64, dtype=torch.float16)
    v = torch.full((1, 1, 256, 64), 3.0, dtype=torch.float16)
    out, lse = sage2pp_attention(q, k, v)
    torch.testing.assert_close(out, torch.full_like(out, 3.0))
    torch.testing.assert_close(lse, torch.full_like(lse, math.log(256)))
    with pytest.raises(ValueError, match="v_max"):
        sage2pp_attention(q, k, v, v_max=2.5)


@pytest.fixture(scope="module")
def normal_case():
    q, k, v = qkv(240, b=1, hq=2, nq=512, d=128)
    ref, ref_lse = attention_exact(q, k, v)
    return q, k, v, ref, ref_lse


@pytest.mark.parametrize("fn,kwargs,cos_min,rel_l1_range", [
    # SageAttention1 (INT8 Q.K, FP16 P.V): rel-L1 about 0.01
    (sage1_attention, {}, 0.9998, (0.005, 0.02)),
    (sage1_attention, {"pv_accum": "fp16"}, 0.9998, (0.005, 0.02)),
    # INT8 Q.K with FP8 P.V: cos >= 0.999
    (sage2_attention, {"granularity": "warp"}, 0.999, (0.025, 0.06)),
    (sage2_attention, {"granularity": "thread"}, 0.999, (0.025, 0.06)),
    (sage2pp_attention, {}, 0.999, (0.025, 0.06)),
    # INT8 P.V (a study): finer than e4m3 on N(0, 1) (coarser on heavy-tailed V; perf-notes, tenth session)
    (sage2_attention, {"pv": "int8", "row_sum": "pv"}, 0.9995, (0.01, 0.03)),
    # INT4 Q.K and NVFP4: far coarser
    (sage2_attention, {"qk_format": "int4", "smooth_q": True}, 0.97, (0.1, 0.3)),
    (sage3_attention, {}, 0.975, (0.1, 0.3)),
])
def test_accuracy_on_normal_inputs_is_in_the_papers_range(normal_case, fn, kwargs, cos_min, rel_l1_range):
    q, k, v, ref, ref_lse = normal_case
    out, lse = fn(q, k, v, **kwargs)
    assert out.shape == ref.shape and out.dtype == torch.float32 and lse.shape == ref_lse.shape
    c, r = cosine(out, ref), rel_l1(out, ref)
    assert c >= cos_min and c < 0.99999, c  # and not exact: the quantization must show
    assert rel_l1_range[0] < r < rel_l1_range[1], r
    assert (lse.double() - ref_lse).abs().max() < 0.2


def test_more_qk_bits_converge_to_exact(normal_case):
    q, k, v, ref, _ = normal_case
    errs = [rel_l1(sage2_attention(q, k, v, qk_format=b, pv="fp32")[0], ref) for b in (4, 6, 8, 10, 12, 16)]
    assert all(a > 3 * b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-4


def test_finer_pv_formats_converge_to_exact(normal_case):
    q, k, v, ref, _ = normal_case
    err = {pv: rel_l1(sage2_attention(q, k, v, qk_format=16, pv=pv)[0], ref) for pv in ("fp8", "fp16", "fp32")}
    assert err["fp8"] > 20 * err["fp16"] > 2 * err["fp32"], err
    f16acc = rel_l1(sage2_attention(q, k, v, qk_format=16, pv="fp16", pv_accum="fp16")[0], ref)
    assert err["fp16"] < f16acc < 10 * err["fp16"]
    inner = [rel_l1(sage2_attention(q, k, v, qk_format=16, inner_bits=b)[0], ref) for b in (4, 8, None)]
    assert inner[0] > 1.2 * inner[1] and inner[1] >= inner[2] * 0.999, inner


def test_finer_granularity_converges_on_heavy_tails():
    q, k, v = make_inputs("heavy", n=512, d=128, seed=250)
    ref, _ = attention_exact(q, k, v)
    errs = [rel_l1(sage2_attention(q, k, v, granularity=g, pv="fp32")[0], ref) for g in ("block", "warp", "thread")]
    assert errs[0] > 1.1 * errs[1] > 1.1 * 1.1 * errs[2], errs
    blocks = [rel_l1(sage1_attention(q, k, v, block_m=bm, block_n=bn)[0], ref) for bm, bn in ((128, 128), (16, 16))]
    assert blocks[0] > 1.3 * blocks[1], blocks


def test_k_smoothing_makes_the_emulation_shift_invariant():
    q, k, v = qkv(260, b=1, hq=2, nq=256, d=64)
    k2 = k + randn(261, 1, 2, 1, 64, scale=8.0).half()  # per-channel offsets shared by all tokens
    ref, _ = attention_exact(q, k, v)
    ref2, ref2_lse = attention_exact(q, k2, v)
    a, _ = sage1_attention(q, k, v)
    b, lb = sage1_attention(q, k2, v)
    assert rel_l1(b, ref2) < 1.3 * rel_l1(a, ref)  # the offsets cost (almost) nothing
    assert (lb.double() - ref2_lse).abs().max() < 0.02  # and the LSE follows them (added back)
    c, _ = sage1_attention(q, k2, v, smooth_k=False)
    assert rel_l1(c, ref2) > 3 * rel_l1(b, ref2)


def test_two_level_p_scaling_keeps_small_probabilities():
    """Key blocks far below the running max have p << 1. One-level scales amax / 6 then fall into e4m3's
    subnormals (< 2^-6) or to zero and lose P; the per-row first level makes the error independent of p's size."""
    z = randn(270, 1, 64, 128)
    two, one = [], []
    for shift in (0, 4, 8):
        p = torch.exp(z - shift)
        pq, s1 = S3.quantize_p_nvfp4(p, two_level=True)
        two.append(rel_l1(pq * s1, p))
        one.append(rel_l1(S3.quantize_p_nvfp4(p, two_level=False)[0], p))
    assert 0.05 < two[0] < 0.2 and max(two) - min(two) < 1e-4, two
    assert one[0] < 1.1 * two[0] and one[2] > 0.5, one


@pytest.mark.parametrize("fn", EMULATIONS)
def test_zero_rows_blocks_and_tensors_give_finite_results(fn):
    q, k, v = make_inputs("zeros", n=300, d=64, seed=280)
    out, lse = fn(q, k, v, causal=True)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    ref, _ = attention_exact(q, k, v, causal=True)
    assert cosine(out, ref) > 0.97
    z = torch.zeros(1, 2, 100, 64, dtype=torch.float16)
    out, lse = fn(z, z, z)
    assert not out.any() and torch.allclose(lse, torch.full_like(lse, math.log(100)))


@pytest.mark.parametrize("fn", EMULATIONS)
def test_rows_without_keys_and_layouts(fn):
    q, k, v = qkv(290, b=1, hq=4, hkv=2, nq=100, nk=40, d=64)
    out, lse = fn(q, k, v, causal=True)
    assert not out[:, :, :60].any() and torch.isneginf(lse[:, :, :60]).all()
    assert torch.isfinite(lse[:, :, 60:]).all()
    nhd, lse2 = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, layout="NHD")
    assert torch.equal(nhd.transpose(1, 2), out) and torch.equal(lse2, lse)


@pytest.mark.parametrize("fn,kwargs,exc,match", [
    (sage2_attention, {"granularity": "lane"}, ValueError, "granularity"),
    (sage2_attention, {"block_n": 48}, ValueError, "block_n"),
    (sage2_attention, {"warp_m": 64, "block_m": 32}, ValueError, "warp_m"),
    (sage2_attention, {"qk_format": "int2"}, ValueError, "qk_format"),
    (sage2_attention, {"pv": "fp4"}, ValueError, "pv"),
    (sage2_attention, {"inner_keys": 48}, ValueError, "inner_keys"),
    (sage2_attention, {"inner_rounding": "up"}, ValueError, "inner_rounding"),
    (sage1_attention, {"pv_accum": "bf16"}, ValueError, "pv_accum"),
    (sage2_attention, {"pv": "fp32", "pv_accum": "fp16"}, ValueError, "pv_accum"),
    (sage1_attention, {"smooth_k": 1}, TypeError, "smooth_k"),
    (sage3_attention, {"block_n": 24}, ValueError, "block_n"),
    (sage2pp_attention, {"layout": "BNHD"}, ValueError, "layout"),
])
def test_emulation_argument_errors(fn, kwargs, exc, match):
    q, k, v = qkv(300, nq=64, d=64)
    with pytest.raises(exc, match=match):
        fn(q, k, v, **kwargs)


def test_head_dim_past_256_is_rejected():
    q, k, v = qkv(301, nq=16, d=272)
    with pytest.raises(ValueError, match="head dim"):
        sage1_attention(q, k, v)
