"""The eager path on a fake GPU (tests/runtime/conftest.py: fake_gpu): plan caching, what gets launched with which
arguments, the ops being the path, and the Python overhead of a call."""
from __future__ import annotations

import math
import os
import time
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import sagegen
from sagegen.quant_layout import padded_len
from sagegen.runtime import api, registry

BF16, F16 = torch.bfloat16, torch.float16
LOG2E = 1.4426950408889634


def inputs(B=2, Hq=4, Hkv=2, nq=100, nk=130, d=128, dtype=BF16, layout="HND"):
    g = torch.Generator().manual_seed(0)
    shape = (lambda h, n: (B, h, n, d)) if layout == "HND" else (lambda h, n: (B, n, h, d))
    return tuple(torch.randn(*shape(h, n), generator=g).to(dtype) for h, n in ((Hq, nq), (Hkv, nk), (Hkv, nk)))


def test_three_launches_with_the_attention_grid(fake_gpu):
    q, k, v = inputs()
    o = sagegen.attention(q, k, v)
    assert o.shape == q.shape and o.dtype == BF16
    assert [s.family for s, *_ in fake_gpu] == ["quant", "quant", "attn_mma"]
    spec, grid, block, smem, args = fake_gpu.attn()[0]
    assert grid == (padded_len(100) // spec.m, 4, 2) and block == spec.threads and smem == spec.smem_bytes()
    assert spec.d == 128 and spec.o == "bf16" and not spec.causal and spec.acc == "f32"


@pytest.mark.parametrize("dtype,d,v_op", [(F16, 128, "v_none"), (F16, 64, "v_none"), (F16, 120, "v_f16"),
                                          (BF16, 128, "v_f16"), (BF16, 64, "v_f16")])
def test_v_is_read_in_place_only_when_it_can_be(fake_gpu, dtype, d, v_op):
    sagegen.attention(*inputs(d=d, dtype=dtype))
    qkv_pass = [s for s, *_ in fake_gpu if s.family == "quant" and s.op == "qkv"][0]
    assert v_op in qkv_pass.name and qkv_pass.d == (64 if d <= 64 else 128)


@pytest.mark.parametrize("align,offset", [("bottom_right", 30), ("top_left", 0)])
def test_causal_alignment_reaches_the_kernel(fake_gpu, align, offset):
    sagegen.attention(*inputs(nq=100, nk=130), is_causal=True, causal_alignment=align)
    spec, *_, args = fake_gpu.attn()[0]
    assert spec.causal and int(args[-1]) == offset


def test_sdpa_is_top_left(fake_gpu):
    sagegen.sdpa(*inputs(Hq=2, Hkv=2, nq=100, nk=130), is_causal=True)
    assert int(fake_gpu.attn()[0][-1][-1]) == 0


def test_sm_scale_is_folded_with_log2e(fake_gpu):
    q, k, v = inputs(d=64)
    sagegen.attention(q, k, v)
    sagegen.attention(q, k, v, sm_scale=0.25)
    (*_, a0), (*_, a1) = fake_gpu.attn()
    assert float(a0[-2]) == pytest.approx(LOG2E / 8, rel=1e-6)
    assert float(a1[-2]) == pytest.approx(0.25 * LOG2E, rel=1e-6)


def test_nhd_output_and_strides(fake_gpu):
    q, k, v = inputs(layout="NHD", dtype=F16)
    o, lse = sagegen.attention(q, k, v, tensor_layout="NHD", return_lse=True)
    assert o.shape == q.shape and o.is_contiguous() and lse.shape == (2, 4, 100)
    *_, args = fake_gpu.attn()[0]
    # v read in place (fp16, d=128) with NHD strides (batch, head, token) = (nk*H*d, d, H*d)
    assert tuple(int(a) for a in args[5:8]) == (130 * 2 * 128, 128, 2 * 128)
    assert tuple(int(a) for a in args[9:12]) == (100 * 4 * 128, 128, 4 * 128)


def test_out_dtype_selects_the_variant(fake_gpu):
    o = sagegen.attention(*inputs(dtype=BF16), out_dtype=F16)
    assert o.dtype == F16 and fake_gpu.attn()[0][0].o == "f16"


def test_forced_variant(fake_gpu):
    name = "attn_mma_sm89_qk_i8_pv_f16_acc_f16_o_bf16_d128_m128_n64_w8_s2_b1_qg_thread_kg_thread_full"
    sagegen.attention(*inputs(), variant=name)
    assert fake_gpu.attn()[0][0].name == name
    qkv_pass = [e for e in fake_gpu if e[0].family == "quant" and e[0].op == "qkv"][0]
    # per-thread groups reach the quantization pass (q: warp_m=16 rows, 8 scales; k: n=64 keys, 4 scales);
    # arguments 19..22 of quant.py's qkv launch are q_tile, q_sub, k_tile, k_sub
    assert tuple(int(a) for a in qkv_pass[4][19:23]) == (16, 8, 64, 4)


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_attention_goes_through_the_custom_ops(fake_gpu):
    q, k, v = inputs()
    with OpRecorder() as rec:
        sagegen.attention(q, k, v)
    sage_ops = [o for o in rec.ops if o.startswith("sagegen.")]
    assert sage_ops == ["sagegen.quantize.default", "sagegen.attn_mma.default"]


def test_plan_is_cached_per_shape(fake_gpu, monkeypatch):
    calls = []
    real = api._new_plan
    monkeypatch.setattr(api, "_new_plan", lambda *a: calls.append(1) or real(*a))
    q, k, v = inputs()
    for _ in range(3):
        sagegen.attention(q, k, v)
    assert len(calls) == 1
    sagegen.attention(q, k, v, is_causal=True)
    sagegen.attention(q[:, :, :50], k, v)  # a different shape (and a non-contiguous view: strides are free)
    assert len(calls) == 3
    assert len(fake_gpu.attn()) == 5


def test_plan_cache_is_bounded(fake_gpu, monkeypatch):
    monkeypatch.setattr(api, "MAX_PLANS", 4)
    q, k, v = inputs(nq=8, nk=8, d=64)
    for n in range(1, 10):
        sagegen.attention(q[:, :, :n], k, v)
    assert len(api._plans) <= 4


def test_registry_change_drops_plans(fake_gpu, tmp_path):
    q, k, v = inputs()
    sagegen.attention(q, k, v)
    assert api._plans
    key = api.inspect_inputs(q, k, v).key()
    registry.record("test-gpu", {}, key, {"x": 1.0}, {})
    assert not api._plans


def test_grad_warning_once_per_plan(fake_gpu):
    q, k, v = inputs()
    q.requires_grad_(True)
    with pytest.warns(UserWarning, match="inference-only"):
        sagegen.attention(q, k, v)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sagegen.attention(q, k, v)
        with torch.no_grad():
            sagegen.attention(q.detach(), k, v, is_causal=True)


def per_call_us(fn, n=300):
    for _ in range(20):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def test_hot_path_overhead_of_the_api_layer(fake_gpu, monkeypatch):
    """Validation is skipped on a plan hit: the api layer alone (lookup, scale, plan call) costs a few us; the
    number is printed with the ops and the launch wrappers included (launches mocked) for the report."""
    q, k, v = inputs(B=1, Hq=8, Hkv=8, nq=128, nk=128, d=128, dtype=F16)
    full = per_call_us(lambda: sagegen.attention(q, k, v))
    o = torch.empty_like(q)
    monkeypatch.setattr(api, "_kernel_forward", lambda *a: o)
    monkeypatch.setattr(api, "_short_forward", lambda *a: o)  # (128 keys: the attn_short plan)
    api_only = per_call_us(lambda: sagegen.attention(q, k, v), n=2000)
    print(f"\nCPU (launches mocked): api layer {api_only:.1f} us/call; whole eager path {full:.1f} us/call")
    limit = float(os.environ.get("SAGEGEN_API_OVERHEAD_LIMIT_US", "25"))  # generous: a loaded 2-core CI box
    assert api_only < limit


def test_default_scale_is_one_over_sqrt_d(fake_gpu):
    q, k, v = inputs(d=72)
    sagegen.attention(q, k, v)
    assert float(fake_gpu.attn()[0][-1][-2]) == pytest.approx(LOG2E / math.sqrt(72), rel=1e-6)


@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_auto_path_runs_gqa_in_either_layout(layout, causal):
    """The traced SDPA route (torch picks the backend; here the CPU's math one) on GQA inputs: kv head h // group
    serves query head h, in the caller's layout, as attention() defines it."""
    q, k, v = (t.float() for t in inputs(Hq=6, Hkv=2, nq=40, nk=40, d=64, layout=layout))
    o = api._sdpa_forward(q, k, v, "auto", layout, causal, True, False, q.dtype, 0.125)
    hnd = (lambda t: t) if layout == "HND" else (lambda t: t.transpose(1, 2))
    kk, vv = (hnd(t).repeat_interleave(3, dim=1) for t in (k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(hnd(q), kk, vv, is_causal=causal, scale=0.125)
    assert o.shape == q.shape and o.is_contiguous()
    torch.testing.assert_close(hnd(o), ref)


@pytest.mark.parametrize("nq,nk,align,eligible,sdpa_causal", [
    (100, 100, "bottom_right", True, True),  # Nq == Nk: both alignments are SDPA's mask
    (100, 130, "top_left", True, True),  # SDPA's is_causal is top-left
    (100, 130, "bottom_right", False, None),  # a mask SDPA does not have
    (1, 130, "bottom_right", True, False),  # one query at the bottom right sees every key: no mask
    (1, 130, "top_left", True, True)])
def test_sdpa_computes_causal_calls_only_with_its_own_mask(nq, nk, align, eligible, sdpa_causal):
    q, k, v = (t.to("meta") for t in inputs(nq=nq, nk=nk))
    shape = api.inspect_inputs(q, k, v, is_causal=True, causal_alignment=align)
    shape.device = torch.device("cuda", 0)  # (meta tensors are never eligible: no device to run SDPA on)
    assert api.sdpa_eligible(shape) == eligible
    if eligible:
        assert api._sdpa_causal(shape) == sdpa_causal


def test_sdpa_route_casts_to_the_output_dtype():
    q, k, v = (t.float() for t in inputs(Hq=2, Hkv=2, nq=20, nk=30, d=64))
    o = api._sdpa_forward(q.to(BF16), k.to(BF16), v.to(BF16), "auto", "HND", False, False, False, F16, 0.125)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.125)
    assert o.dtype == F16 and o.shape == q.shape
    torch.testing.assert_close(o.float(), ref, rtol=0.02, atol=0.02)
