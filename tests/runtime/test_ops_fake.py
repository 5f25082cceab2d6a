"""The custom ops' fake kernels and torch.compile: fake shapes/dtypes equal the real kernels' (run on the fake GPU),
and torch.compile(fullgraph=True) traces attention()/sdpa() into exactly the two sagegen ops, static or dynamic."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import sagegen
from sagegen.runtime import ops

BF16, F16 = torch.bfloat16, torch.float16
VARIANT = "attn_mma_sm89_qk_i8_pv_f16_acc_f32_o_{o}_d{d}_m128_n32_w4_s2_b1_qg_warp_kg_block_{c}"


def make(layout, B, Hq, Hkv, nq, nk, d, dtype, device="cpu"):
    shape = (lambda h, n: (B, h, n, d)) if layout == "HND" else (lambda h, n: (B, n, h, d))
    return tuple(torch.zeros(*shape(h, n), dtype=dtype, device=device) for h, n in ((Hq, nq), (Hkv, nk), (Hkv, nk)))


def meta_of(t: torch.Tensor):
    return (tuple(t.shape), t.dtype)


# (layout, B, Hq, Hkv, nq, nk, d, dtype, v_mode, (q_tile, q_sub, k_tile, k_sub), with_qk_bias, qk_image)
CASES = [("HND", 2, 4, 2, 100, 130, 128, BF16, "f16", (32, 1, 32, 1), True, False),
         ("NHD", 1, 3, 1, 1, 517, 64, F16, "none", (32, 8, 64, 4), False, False),
         ("HND", 1, 2, 2, 257, 257, 72, F16, "f16", (128, 1, 64, 1), True, False),
         ("NHD", 2, 2, 2, 64, 64, 128, BF16, "e4m3t", (64, 1, 64, 1), False, False),
         # the wgmma family's pass: V in its operand image, Q/K in theirs (the shapes do not change)
         ("HND", 2, 4, 2, 100, 130, 128, BF16, "e4m3w", (16, 8, 128, 4), True, True),
         ("NHD", 1, 3, 1, 1, 517, 64, F16, "e4m3w", (128, 1, 128, 1), False, True),
         ("HND", 1, 2, 2, 257, 300, 72, F16, "e4m3w", (16, 1, 128, 1), True, True),
         # INT8 V in the same image (one chunk of keys: the qkv pass alone; then both passes)
         ("NHD", 1, 3, 1, 1, 100, 64, BF16, "i8w", (128, 1, 128, 1), False, True),
         ("HND", 2, 4, 2, 100, 130, 128, F16, "i8w", (16, 8, 128, 4), True, True)]
FIELDS = "layout,B,Hq,Hkv,nq,nk,d,dtype,v_mode,groups,lse,qk_image"


@pytest.mark.parametrize(FIELDS, CASES)
def test_quantize_fake_matches_real(fake_gpu, layout, B, Hq, Hkv, nq, nk, d, dtype, v_mode, groups, lse, qk_image):
    q, k, v = make(layout, B, Hq, Hkv, nq, nk, d, dtype)
    real = ops.quantize_op(q, k, v, layout, *groups, v_mode, lse, qk_image)
    fake = ops._quantize_fake(q, k, v, layout, *groups, v_mode, lse, qk_image)
    assert [meta_of(t) for t in real] == [meta_of(t) for t in fake]
    with FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
        traced = ops.quantize_op(fq, fk, fv, layout, *groups, v_mode, lse, qk_image)
    assert [meta_of(t) for t in traced] == [meta_of(t) for t in real]


def test_quantize_fake_v_image_shape(fake_gpu):
    q, k, v = make("HND", 2, 4, 2, 100, 130, 72, BF16)
    z = ops._quantize_fake(q, k, v, "HND", 16, 8, 128, 4, "e4m3w", True, True)
    assert meta_of(z[4]) == ((2, 2, 2, 128, 128), torch.float8_e4m3fn)  # [B, Hkv, nk_pad / 128, D, 128]
    assert meta_of(z[5]) == ((2, 2, 128), torch.float32) and meta_of(z[6]) == ((2, 4, 100), torch.float32)
    assert meta_of(z[0]) == ((2, 4, 128, 128), torch.int8) and meta_of(z[1]) == ((2, 4, 64), torch.float32)
    z = ops._quantize_fake(q, k, v, "HND", 16, 8, 128, 4, "i8w", False, True)  # INT8 V + 128: the same image, u8
    assert meta_of(z[4]) == ((2, 2, 2, 128, 128), torch.uint8) and meta_of(z[5]) == ((2, 2, 128), torch.float32)


@pytest.mark.parametrize(FIELDS, [c for c in CASES if c[8] in ("none", "f16")])
@pytest.mark.parametrize("o", ["bf16", "f16"])
def test_attn_fake_matches_real(fake_gpu, layout, B, Hq, Hkv, nq, nk, d, dtype, v_mode, groups, lse, qk_image, o):
    q, k, v = make(layout, B, Hq, Hkv, nq, nk, d, dtype)
    z = ops.quantize_op(q, k, v, layout, *groups, v_mode, lse, qk_image)
    D = 64 if d <= 64 else 128
    name = VARIANT.format(o=o, d=D, c="full")
    args = (z[0], z[1], z[2], z[3], v if v_mode == "none" else z[4], z[6], name, layout,
            "input" if v_mode == "none" else "copy", nq, nk, d, 0.125, 0, lse)
    real = ops.attn_mma_op(*args)
    fake = ops._attn_fake(*args)
    assert [meta_of(t) for t in real] == [meta_of(t) for t in fake]
    assert real[0].shape == q.shape and real[0].dtype == {"bf16": BF16, "f16": F16}[o]


def test_opcheck_schema_and_fake(fake_gpu):
    """torch.library.opcheck's checks that do not compare output values (the fake GPU's outputs are unwritten)."""
    q, k, v = make("HND", 1, 2, 1, 100, 130, 128, BF16)
    qargs = (q, k, v, "HND", 32, 1, 32, 1, "f16", True, False)
    torch.library.opcheck(torch.ops.sagegen.quantize.default, qargs,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    z = ops.quantize_op(*qargs)
    aargs = (z[0], z[1], z[2], z[3], z[4], z[6], VARIANT.format(o="bf16", d=128, c="causal"), "HND", "copy", 100,
             130, 128, 0.125, 30, True)
    torch.library.opcheck(torch.ops.sagegen.attn_mma.default, aargs,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# --- torch.compile on meta tensors (no GPU needed: the ops' fake kernels serve meta) ----------------------------
def _meta(*shape, dtype=BF16):
    return torch.empty(*shape, device="meta", dtype=dtype)


class GraphCatcher:
    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    def sagegen_ops(self, i=-1):
        return [str(n.target) for n in self.graphs[i].graph.nodes
                if n.op == "call_function" and str(n.target).startswith("sagegen.")]


@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [128, 200])  # 200: the d = 256 kernel
def test_compile_fullgraph_two_ops(layout, causal, d):
    catcher = GraphCatcher()

    def f(q, k, v):
        o, lse = sagegen.attention(q, k, v, is_causal=causal, tensor_layout=layout, return_lse=True)
        return o.float() * 2, lse

    q, k, v = make(layout, 2, 8, 2, 300, 517, d, BF16, device="meta")
    o, lse = torch.compile(f, fullgraph=True, backend=catcher)(q, k, v)
    assert o.shape == q.shape and lse.shape == (2, 8, 300)
    assert catcher.sagegen_ops() == ["sagegen.quantize.default", "sagegen.attn_mma.default"]


def test_compile_with_inductor_on_meta():
    q, k, v = make("HND", 1, 4, 4, 128, 128, 64, F16, device="meta")
    o = torch.compile(lambda q, k, v: sagegen.attention(q, k, v) + 1, fullgraph=True)(q, k, v)
    assert o.shape == q.shape and o.dtype == F16


def test_compile_dynamic_recompiles_per_bucket_only():
    catcher = GraphCatcher()
    f = torch.compile(lambda q, k, v: sagegen.attention(q, k, v, is_causal=True), fullgraph=True, dynamic=True,
                      backend=catcher)
    for n, graphs in ((1000, 1), (900, 1), (600, 1), (2000, 2)):
        q, k, v = make("HND", 2, 8, 2, n, n, 128, BF16, device="meta")
        assert f(q, k, v).shape == q.shape
        assert len(catcher.graphs) == graphs, n


def test_compile_sdpa_and_forced_variant():
    catcher = GraphCatcher()
    q, k, v = make("HND", 1, 4, 2, 64, 96, 128, BF16, device="meta")
    name = VARIANT.format(o="bf16", d=128, c="causal").replace("sm89", "sm80")

    def f(q, k, v):
        return sagegen.sdpa(q, k, v, is_causal=True, enable_gqa=True), \
            sagegen.attention(q, k, v, is_causal=True, variant=name)

    a, b = torch.compile(f, fullgraph=True, backend=catcher)(q, k, v)
    assert a.shape == b.shape == q.shape
    # sdpa's 96 keys fit attn_short (one op, quantization inside); the forced variant runs the pass and attn_mma
    assert catcher.sagegen_ops().count("sagegen.attn_short.default") == 1
    assert catcher.sagegen_ops().count("sagegen.attn_mma.default") == 1
    assert any(name in str(n.args) for n in catcher.graphs[-1].graph.nodes)


def test_compile_reports_bad_input():
    q, k, v = make("HND", 1, 4, 3, 64, 64, 128, BF16, device="meta")
    with pytest.raises(Exception, match="multiple of"):
        torch.compile(lambda q, k, v: sagegen.attention(q, k, v), fullgraph=True, backend="eager")(q, k, v)


# --- sagegen::attn_wgmma (the sm90a family): fake kernel, opcheck, torch.compile ------------------------------
def wgmma_spec(o="bf16", d=128, causal=False):
    """An enumerated sm90a attn_wgmma variant (per-thread scales; found by its fields, so that the family's
    schedule flags can change without touching these tests)."""
    from sagegen.variants.attn_wgmma import enumerate_variants

    return next(s for s in enumerate_variants("sm90a") if (s.o, s.d, s.causal, s.qg) == (o, d, causal, "thread"))


def _wgmma_args(q, k, v, layout, nq, nk, d, lse, o, causal=False, offset=0):
    """quantize for the wgmma family (the variant's groups, V image, Q/K image), then attn_wgmma's arguments."""
    spec = wgmma_spec(o, 64 if d <= 64 else 128, causal)
    qg, kg = spec.q_groups, spec.k_groups
    z = ops.quantize_op(q, k, v, layout, qg.tile, qg.sub, kg.tile, kg.sub, "e4m3w", lse, True)
    return (z[0], z[1], z[2], z[3], z[4], z[5], z[6], spec.name, layout, nq, nk, d, 0.125, offset, lse)


@pytest.mark.parametrize("layout,B,Hq,Hkv,nq,nk,d,dtype,lse", [("HND", 2, 4, 2, 100, 130, 128, BF16, True),
                                                              ("NHD", 1, 3, 1, 1, 517, 64, F16, False),
                                                              ("HND", 1, 2, 2, 257, 300, 72, F16, True),
                                                              ("NHD", 2, 2, 2, 64, 64, 120, BF16, False)])
@pytest.mark.parametrize("o", ["bf16", "f16"])
def test_wgmma_fake_matches_real(fake_hopper, layout, B, Hq, Hkv, nq, nk, d, dtype, lse, o):
    q, k, v = make(layout, B, Hq, Hkv, nq, nk, d, dtype)
    args = _wgmma_args(q, k, v, layout, nq, nk, d, lse, o)
    real = ops.attn_wgmma_op(*args)
    fake = ops._wgmma_fake(*args)
    assert [meta_of(t) for t in real] == [meta_of(t) for t in fake]
    assert real[0].shape == q.shape and real[0].dtype == {"bf16": BF16, "f16": F16}[o]
    assert meta_of(real[1]) == (((B, Hq, nq) if lse else (0,)), torch.float32)
    with FakeTensorMode() as mode:
        traced = ops.attn_wgmma_op(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
    assert [meta_of(t) for t in traced] == [meta_of(t) for t in real]
    local = nk <= 128 and not lse  # one chunk of keys, no LSE: no stats pass (quant.QuantPlan.local_stats)
    assert [e[0].family for e in fake_hopper] == ["quant"] * (1 if local else 2) + ["attn_wgmma"]


def test_wgmma_opcheck_schema_and_fake(fake_hopper):
    q, k, v = make("HND", 1, 2, 1, 100, 130, 128, BF16)
    qargs = (q, k, v, "HND", 16, 8, 128, 4, "e4m3w", True, True)
    torch.library.opcheck(torch.ops.sagegen.quantize.default, qargs,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    args = _wgmma_args(q, k, v, "HND", 100, 130, 128, True, "bf16", causal=True, offset=30)
    assert args[4].dtype == torch.float8_e4m3fn
    # no test_schema: its mutation check compares inputs with torch.allclose, which float8 tensors do not have
    torch.library.opcheck(torch.ops.sagegen.attn_wgmma.default, args,
                          test_utils=("test_autograd_registration", "test_faketensor"))


def _quantize_node_args(catcher):
    (node,) = [n for n in catcher.graphs[-1].graph.nodes if str(n.target) == "sagegen.quantize.default"]
    return node.args


@pytest.mark.parametrize("layout", ["HND", "NHD"])
def test_compile_forced_wgmma_variant_on_meta(layout):
    """Meta tensors have no arch: a named attn_wgmma variant traces to quantize (V and Q/K images) + attn_wgmma."""
    catcher = GraphCatcher()
    name = wgmma_spec("bf16", 128, causal=True).name

    def f(q, k, v):
        return sagegen.attention(q, k, v, is_causal=True, tensor_layout=layout, return_lse=True, variant=name)

    q, k, v = make(layout, 2, 8, 2, 300, 517, 120, BF16, device="meta")
    o, lse = torch.compile(f, fullgraph=True, backend=catcher)(q, k, v)
    assert o.shape == q.shape and o.dtype == BF16 and lse.shape == (2, 8, 300)
    assert catcher.sagegen_ops() == ["sagegen.quantize.default", "sagegen.attn_wgmma.default"]
    qargs = _quantize_node_args(catcher)
    spec = ops.spec_for(name)
    assert tuple(qargs[4:]) == (spec.q_groups.tile, spec.q_groups.sub, spec.k_groups.tile, spec.k_groups.sub,
                                "e4m3w", True, True)
    assert any(name in str(n.args) for n in catcher.graphs[-1].graph.nodes)


@pytest.mark.parametrize("precision,v_mode", [("fast", "e4m3w"), ("accurate", "f16w")])
def test_compile_on_fake_hopper_follows_precision(fake_hopper, monkeypatch, precision, v_mode):
    """The traced path asks the registry at trace time: on sm90a both precisions are the wgmma family, with FP8 or
    FP16 V images (CPU tensors stand for the GPU's, as in the eager fake-GPU tests)."""
    from sagegen.runtime import api

    real_choice = api._traced_choice

    @torch.compiler.assume_constant_result
    def on_device_0(*args):  # CPU tensors have no device index; the GPU's tensors would say 0
        return real_choice(*args[:9], 0 if args[9] is None else args[9], *args[10:])

    monkeypatch.setattr(api, "_traced_choice", on_device_0)
    catcher = GraphCatcher()
    q, k, v = make("HND", 1, 4, 2, 300, 517, 128, BF16)
    # (sdpa_fallback=False: these GQA lengths would go to cuDNN by the registry's rule, registry.SDPA_FASTER_GQA)
    f = torch.compile(lambda q, k, v: sagegen.attention(q, k, v, precision=precision, sdpa_fallback=False),
                      fullgraph=True, backend=catcher)
    assert f(q, k, v).shape == q.shape
    assert catcher.sagegen_ops() == ["sagegen.quantize.default", "sagegen.attn_wgmma.default"]
    assert _quantize_node_args(catcher)[8:] == (v_mode, False, True)
