"""The GPU tests' own logic (inputs, emulation arguments, metrics, bounds, the no-key-row checks) run on the CPU,
with the variant's emulation standing in for the kernel: keeps tests/runtime/test_gpu_*.py from rotting on
machines without a GPU. Says nothing about the kernels."""
from __future__ import annotations

import pytest
import torch

from sagegen.runtime import api, ops, quant

from . import gpu_util as G
from . import test_gpu_api as TA
from . import test_gpu_variants as TV


@pytest.fixture
def emulated_gpu(fake_gpu, monkeypatch):
    real_inputs = G.make_inputs
    monkeypatch.setattr(G, "make_inputs", lambda dist, **kw: real_inputs(dist, **{**kw, "device": "cpu"}))

    def kernel(q, k, v, scale, layout, q_tile, q_sub, k_tile, k_sub, v_mode, variant, nq, nk, d, offset, return_lse):
        spec = ops.spec_for(variant)
        assert offset in (0, nk - nq)
        o, lse = G.emulate(spec, q, k, v, causal_align="top_left" if offset == 0 else "bottom_right", layout=layout,
                           sm_scale=scale)
        o = o.to(G.OUT_DTYPES[spec.o])
        return (o, lse) if return_lse else o

    monkeypatch.setattr(api, "_kernel_forward", kernel)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)


class _Report:
    def add(self, **row):
        self.row = row


class _Request:
    class node:
        name = "cpu"


def _two_variants() -> list[str]:
    from sagegen.variants import select

    every = select(["sm90a"], "attn_mma_*")
    a = next(s for s in every if s.acc == "f16" and s.d == 128 and s.causal and s.qg == "thread")
    b = next(s for s in every if s.acc == "f32" and s.d == 64 and not s.causal and s.o == "f16")
    return [a.name, b.name]


@pytest.mark.parametrize("case", list(TV.CASES))
@pytest.mark.parametrize("name", _two_variants())
def test_variant_test_logic(emulated_gpu, name, case):
    from sagegen.build import BuildResult

    TV.test_variant(BuildResult(), _Report(), name, case)


@pytest.mark.parametrize("nq,nk", [(17, 1000), (1000, 17)])
@pytest.mark.parametrize("causal,align", [(True, "bottom_right"), (True, "top_left")])
def test_odd_length_test_logic(emulated_gpu, nq, nk, causal, align):
    TA.test_odd_lengths(None, _Report(), _Request(), nq, nk, causal, align)


def test_distribution_test_logic(emulated_gpu):
    TA.test_distributions(None, _Report(), _Request(), "heavy", 64, True)


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
