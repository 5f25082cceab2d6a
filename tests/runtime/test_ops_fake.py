"""The custom ops' fake kernels and torch.compile: fake shapes/dtypes equal the real kernels' (run on the fake GPU),
and torch.compile(fullgraph=True) traces attention()/sdpa() into exactly the two sagegen ops, static or dynamic."""
from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import sagegen
from sagegen.runtime import ops

BF16, F16 = torch.bfloat16, torch.float16
VARIANT = "attn_mma_sm90a_qk_i8_pv_f16_acc_f32_o_{o}_d{d}_m128_n32_w4_s2_b1_qg_warp_kg_block_{c}"


def make(layout, B, Hq, Hkv, nq, nk, d, dtype, device="cpu"):
    shape = (lambda h, n: (B, h, n, d)) if layout == "HND" else (lambda h, n: (B, n, h, d))
    return tuple(torch.zeros(*shape(h, n), dtype=dtype, device=device) for h, n in ((Hq, nq), (Hkv, nk), (Hkv, nk)))


def meta_of(t: torch.Tensor):
    return (tuple(t.shape), t.dtype)


CASES = [("HND", 2, 4, 2, 100, 130, 128, BF16, "f16", (32, 1, 32, 1), True),
         ("NHD", 1, 3, 1, 1, 517, 64, F16, "none", (32, 8, 64, 4), False),
         ("HND", 1, 2, 2, 257, 257, 72, F16, "f16", (128, 1, 64, 1), True),
         ("NHD", 2, 2, 2, 64, 64, 128, BF16, "e4m3t", (64, 1, 64, 1), False)]


@pytest.mark.parametrize("layout,B,Hq,Hkv,nq,nk,d,dtype,v_mode,groups,lse", CASES)
def test_quantize_fake_matches_real(fake_gpu, layout, B, Hq, Hkv, nq, nk, d, dtype, v_mode, groups, lse):
    q, k, v = make(layout, B, Hq, Hkv, nq, nk, d, dtype)
    real = ops.quantize_op(q, k, v, layout, *groups, v_mode, lse)
    fake = ops._quantize_fake(q, k, v, layout, *groups, v_mode, lse)
    assert [meta_of(t) for t in real] == [meta_of(t) for t in fake]
    with FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
        traced = ops.quantize_op(fq, fk, fv, layout, *groups, v_mode, lse)
    assert [meta_of(t) for t in traced] == [meta_of(t) for t in real]


@pytest.mark.parametrize("layout,B,Hq,Hkv,nq,nk,d,dtype,v_mode,groups,lse", [c for c in CASES if c[8] != "e4m3t"])
@pytest.mark.parametrize("o", ["bf16", "f16"])
def test_attn_fake_matches_real(fake_gpu, layout, B, Hq, Hkv, nq, nk, d, dtype, v_mode, groups, lse, o):
    q, k, v = make(layout, B, Hq, Hkv, nq, nk, d, dtype)
    z = ops.quantize_op(q, k, v, layout, *groups, v_mode, lse)
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
    qargs = (q, k, v, "HND", 32, 1, 32, 1, "f16", True)
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
def test_compile_fullgraph_two_ops(layout, causal):
    catcher = GraphCatcher()

    def f(q, k, v):
        o, lse = sagegen.attention(q, k, v, is_causal=causal, tensor_layout=layout, return_lse=True)
        return o.float() * 2, lse

    q, k, v = make(layout, 2, 8, 2, 300, 517, 128, BF16, device="meta")
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
    name = VARIANT.format(o="bf16", d=128, c="causal").replace("sm90a", "sm80")

    def f(q, k, v):
        return sagegen.sdpa(q, k, v, is_causal=True, enable_gqa=True), \
            sagegen.attention(q, k, v, is_causal=True, variant=name)

    a, b = torch.compile(f, fullgraph=True, backend=catcher)(q, k, v)
    assert a.shape == b.shape == q.shape
    assert catcher.sagegen_ops().count("sagegen.attn_mma.default") == 2
    assert any(name in str(n.args) for n in catcher.graphs[-1].graph.nodes)


def test_compile_reports_bad_input():
    q, k, v = make("HND", 1, 4, 3, 64, 64, 128, BF16, device="meta")
    with pytest.raises(Exception, match="multiple of"):
        torch.compile(lambda q, k, v: sagegen.attention(q, k, v), fullgraph=True, backend="eager")(q, k, v)
