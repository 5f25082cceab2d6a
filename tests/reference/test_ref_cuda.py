"""The reference on CUDA tensors: same results as on the CPU (up to fp32 summation order). Skipped without a GPU."""
from __future__ import annotations

import pytest
import torch

from .ref_helpers import qkv
from sagegen.quant_layout import q_groups
from sagegen.reference import (attention_exact, quantize_int8, quantize_nvfp4, quantize_v_fp8, rel_l1,
                               sage1_attention, sage2_attention, sage2pp_attention, sage3_attention)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_quantizers_are_bit_identical_on_cuda():
    q, k, v = qkv(400, b=1, hq=2, nq=300, d=128)
    g = q_groups("thread", 128, 32)
    for x, smooth in ((q, False), (k, True)):
        a, b = quantize_int8(x, g, smooth=smooth), quantize_int8(x.cuda(), g, smooth=smooth)
        if not smooth:
            assert torch.equal(a.scale, b.scale.cpu()) and torch.equal(a.data, b.data.cpu())
        else:  # the token mean may differ in its last bit (summation order): nearly all values agree
            torch.testing.assert_close(a.scale, b.scale.cpu(), rtol=1e-6, atol=0)
            assert (a.data != b.data.cpu()).float().mean() < 1e-3
    v8, v8_gpu = quantize_v_fp8(v).data, quantize_v_fp8(v.cuda()).data.cpu()
    assert torch.equal(v8.view(torch.uint8), v8_gpu.view(torch.uint8))
    x = q.float().reshape(-1, 128)
    assert torch.equal(quantize_nvfp4(x).values, quantize_nvfp4(x.cuda()).values.cpu())


@pytest.mark.parametrize("fn,kwargs", [
    (sage1_attention, {}), (sage1_attention, {"pv_accum": "fp16"}), (sage2_attention, {"smooth_q": True}),
    (sage2_attention, {"qk_format": "int4"}), (sage2_attention, {"pv": "int8", "row_sum": "pv"}),
    (sage2pp_attention, {}), (sage3_attention, {})])
def test_emulations_agree_with_the_cpu(fn, kwargs):
    q, k, v = qkv(401, b=1, hq=4, hkv=2, nq=512, nk=700, d=128)
    cpu, cpu_lse = fn(q, k, v, causal=True, **kwargs)
    gpu, gpu_lse = fn(q.cuda(), k.cuda(), v.cuda(), causal=True, **kwargs)
    assert gpu.is_cuda and torch.isfinite(gpu).all()
    ref, _ = attention_exact(q, k, v, causal=True)
    assert rel_l1(gpu.cpu(), cpu) < 0.05 * rel_l1(cpu, ref)  # rounding flips are far rarer than quantization error
    assert (gpu_lse.cpu() - cpu_lse).abs().max() < 1e-3


def test_exact_attention_on_cuda_long_sequence():
    q, k, v = qkv(402, b=1, hq=2, hkv=1, nq=8192, d=128)
    out, lse = attention_exact(q.cuda(), k.cuda(), v.cuda(), causal=True)
    ref, ref_lse = attention_exact(q[:, :, -64:], k, v, causal=True)  # bottom-right: the last 64 queries
    torch.testing.assert_close(out[:, :, -64:].cpu(), ref)
    torch.testing.assert_close(lse[:, :, -64:].cpu(), ref_lse)
