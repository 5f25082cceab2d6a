"""The GPU tests' own logic (inputs, emulation arguments, metrics, bounds, the no-key-row checks) run on the CPU,
with the variant's emulation standing in for the kernel: keeps tests/runtime/test_gpu_*.py from rotting on
machines without a GPU. Says nothing about the kernels."""
from __future__ import annotations

import pytest
import torch

from sagegen.runtime import api, attn_wgmma, ops, quant, registry

from . import gpu_util as G
from . import test_gpu_api as TA
from . import test_gpu_variants as TV
from . import test_gpu_wgmma as TW


def _emulate_kernels(monkeypatch):
    """Inputs on the CPU; attention()'s two ops and attn_wgmma.forward replaced by the variant's emulation."""
    real_inputs = G.make_inputs
    monkeypatch.setattr(G, "make_inputs", lambda dist, **kw: real_inputs(dist, **{**kw, "device": "cpu"}))

    def kernel(q, k, v, scale, layout, q_tile, q_sub, k_tile, k_sub, v_mode, variant, nq, nk, d, offset, return_lse):
        spec = ops.spec_for(variant)
        assert offset in (0, nk - nq)
        assert v_mode == (spec.v_mode if spec.family == "attn_wgmma" else v_mode), v_mode
        assert (q_tile, q_sub, k_tile, k_sub) == (spec.q_groups.tile, spec.q_groups.sub, spec.k_groups.tile,
                                                  spec.k_groups.sub)
        o, lse = G.emulate(spec, q, k, v, causal_align="top_left" if offset == 0 else "bottom_right", layout=layout,
                           sm_scale=scale)
        o = o.to(G.OUT_DTYPES[spec.o])
        return (o, lse) if return_lse else o

    def wgmma_forward(q, k, v, spec, *, layout, sm_scale, causal_offset=0, return_lse=False, out=None):
        nq, nk = (q.shape[2], k.shape[2]) if layout == "HND" else (q.shape[1], k.shape[1])
        assert causal_offset == (nk - nq if spec.causal else 0)
        o, lse = G.emulate(spec, q, k, v, causal_align="bottom_right", layout=layout, sm_scale=sm_scale)
        out = torch.empty(q.shape, dtype=G.OUT_DTYPES[spec.o]) if out is None else out
        out.copy_(o)
        return out, (lse if return_lse else None)

    def short(q, k, v, scale, variant, layout, offset, return_lse):  # attn_short: one op, the emulation the same
        spec = ops.spec_for(variant)
        nq, nk = (q.shape[2], k.shape[2]) if layout == "HND" else (q.shape[1], k.shape[1])
        assert spec.family == "attn_short" and nk <= 128 and offset in (0, nk - nq)
        o, lse = G.emulate(spec, q, k, v, causal_align="top_left" if offset == 0 else "bottom_right", layout=layout,
                           sm_scale=scale)
        o = o.to(G.OUT_DTYPES[spec.o])
        return (o, lse) if return_lse else o

    monkeypatch.setattr(api, "_kernel_forward", kernel)
    monkeypatch.setattr(api, "_short_forward", short)
    monkeypatch.setattr(attn_wgmma, "forward", wgmma_forward)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)


@pytest.fixture
def emulated_gpu(fake_gpu, monkeypatch):
    _emulate_kernels(monkeypatch)


@pytest.fixture
def emulated_hopper(fake_hopper, monkeypatch):
    _emulate_kernels(monkeypatch)
    monkeypatch.setattr(TW, "_require_sm90a", lambda: None)


class _Report:
    def add(self, **row):
        self.row = row


class _Request:
    class node:
        name = "cpu"


def _request(name: str):
    """A request whose node has ``name``: the GPU test's own id, so that seed_of gives its inputs."""
    return type("Request", (), {"node": type("Node", (), {"name": name})})()


def _two_variants() -> list[str]:
    from sagegen.variants import select

    every = select(["sm89"], "attn_mma_*")  # fake_gpu's arch
    a = next(s for s in every if s.acc == "f16" and s.d == 128 and s.causal and s.qg == "thread")
    b = next(s for s in every if s.acc == "f32" and s.d == 64 and not s.causal and s.o == "f16")
    return [a.name, b.name]


def _two_short_variants() -> list[str]:
    from sagegen.variants import select

    every = select(["sm89"], "attn_short_*")  # fake_gpu's arch
    a = next(s for s in every if s.d == 128 and s.causal and s.qg == "thread" and s.x == "bf16")
    b = next(s for s in every if s.d == 64 and not s.causal and s.qg == "block" and s.x == "f16")
    return [a.name, b.name]


@pytest.mark.parametrize("case", list(TV.SHORT_CASES))
@pytest.mark.parametrize("name", _two_short_variants())
def test_short_variant_test_logic(emulated_gpu, name, case):
    from sagegen.build import BuildResult

    TV.test_short_variant(BuildResult(), _Report(), name, case)


@pytest.mark.parametrize("case", list(TV.CASES))
@pytest.mark.parametrize("name", _two_variants())
def test_variant_test_logic(emulated_gpu, name, case):
    from sagegen.build import BuildResult

    TV.test_variant(BuildResult(), _Report(), name, case)


def _two_wgmma_variants() -> list[str]:
    from sagegen.variants.attn_wgmma import enumerate_variants

    every = enumerate_variants("sm90a")
    a = next(s for s in every if s.d == 128 and s.causal and s.qg == "thread" and s.o == "bf16")
    b = next(s for s in every if s.d == 64 and not s.causal and s.qg == "warp" and s.o == "f16")
    return [a.name, b.name]


@pytest.mark.parametrize("case", list(TW.CASES))
@pytest.mark.parametrize("name", _two_wgmma_variants())
def test_wgmma_variant_test_logic(emulated_hopper, name, case):
    """Also checks the bounds against the scheme itself: the emulation is within 0.05 of exact attention."""
    from sagegen.build import BuildResult

    report = _Report()
    TW.test_wgmma_variant(BuildResult(), report, name, case)
    assert report.row["exact"] <= TW.EXACT_BOUND and report.row["emul"] == 0.0


@pytest.mark.parametrize("causal", [False, True])
def test_precisions_test_logic(emulated_hopper, monkeypatch, causal):
    real_inputs = TW.inputs
    monkeypatch.setattr(TW, "inputs", lambda **kw: real_inputs(**{**kw, "nq": 512, "nk": 512}))  # CPU-sized
    report = _Report()
    TW.test_precisions_of_attention_on_sm90a(None, report, _Request(), 64, causal)
    assert report.row["fast"] > report.row["accurate"] > 0


@pytest.mark.parametrize("nq,nk", [(17, 1000), (1000, 17)])
@pytest.mark.parametrize("causal,align", [(True, "bottom_right"), (True, "top_left")])
def test_odd_length_test_logic(emulated_gpu, nq, nk, causal, align):
    TA.test_odd_lengths(None, _Report(), _Request(), nq, nk, causal, align)


def test_distribution_test_logic(emulated_gpu):
    TA.test_distributions(None, _Report(), _Request(), "heavy", 64, True, "fast")


# On a fake sm90a the default precision runs the wgmma family: its emulation (FP8 P.V) must pass the GPU tests'
# bounds against exact attention (gpu_util.bound_for) on the very inputs the GPU tests draw (same test ids, so the
# same seeds).
@pytest.mark.parametrize("nq,nk", TA.LENGTHS)
@pytest.mark.parametrize("causal,align", [(False, "bottom_right"), (True, "bottom_right"), (True, "top_left")])
def test_odd_length_test_logic_on_hopper(emulated_hopper, fake_hopper, nq, nk, causal, align):
    report = _Report()
    TA.test_odd_lengths(None, report, _request(f"test_odd_lengths[{causal}-{align}-{nq}-{nk}]"), nq, nk, causal,
                        align)
    # short keys run attn_short (FP16 P.V, one launch, d <= 128), on the same bounds; the rest the wgmma family
    # (d > 128, drawn as 200 / 256: its FP16 P.V d = 256 kernel)
    d = TA.ODD_LENGTH_DIMS[TA.LENGTHS.index((nq, nk)) % len(TA.ODD_LENGTH_DIMS)]
    short = nk <= 128 and nq <= registry.SHORT_MAX_QUERIES and d <= 128
    family = "attn_short_" if short else "attn_wgmma_"
    assert fake_hopper.attn() == [] and report.row["variant"].startswith(family)


@pytest.mark.parametrize("dist", list(TA.DISTS))
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("precision", ["fast", "balanced"])
def test_distribution_test_logic_on_hopper(emulated_hopper, dist, d, causal, precision):
    report = _Report()
    TA.test_distributions(None, report, _request(f"test_distributions[{precision}-{causal}-{d}-{dist}]"), dist, d,
                          causal, precision)
    # fast: FP8 P.V at every d; balanced: INT8 P.V up to d = 128, the accurate kernel (FP16 P.V) at 256
    pv = "e4m3" if precision == "fast" else ("i8" if d <= 128 else "f16")
    assert report.row["variant"].startswith(f"attn_wgmma_sm90a_qk_i8_pv_{pv}_")


def test_quantization_test_logic(emulated_gpu, monkeypatch):
    """The reference quantizers standing in for the quantization kernels."""
    from sagegen.quant_layout import padded_dim, padded_len
    from sagegen.reference import quantize_int8, quantize_v_fp8

    def reference_quantize(q, k, v, *, layout, q_groups, k_groups, v_mode, with_qk_bias=False):
        hnd = (lambda t: t) if layout == "HND" else (lambda t: t.transpose(1, 2))
        rq, rk = quantize_int8(q, q_groups, layout=layout), quantize_int8(k, k_groups, smooth=True, layout=layout)
        B, Hkv, nk, d = hnd(k).shape
        if v_mode == "f16":
            vo, vs = torch.zeros(B, Hkv, padded_len(nk), padded_dim(d), dtype=torch.float16), None
            vo[:, :, :nk, :d] = hnd(v).half()
        else:
            rv = quantize_v_fp8(v, layout=layout)
            vo, vs = rv.data, rv.scale
        qh = hnd(q).float()
        Hq, nq = qh.shape[1], qh.shape[2]
        bias = torch.einsum("bhgnd,bhd->bhgn", qh.reshape(B, Hkv, Hq // Hkv, nq, d), hnd(k).float().mean(2))
        return quant.Quantized(rq.data, rq.scale, rk.data, rk.scale, vo, vs, bias.reshape(B, Hq, nq), nq, nk, d,
                               padded_dim(d))

    monkeypatch.setattr(quant, "quantize", reference_quantize)
    TA.test_quantization_kernels_match_reference(None, "NHD", torch.bfloat16, 72, 17, ("thread", 128, 32, 64))
