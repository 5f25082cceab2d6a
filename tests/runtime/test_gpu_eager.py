"""attention()'s direct path (runtime/eager.py) on the GPU: bit-identical to the same plan through the torch ops
(same kernels, same arguments, its buffers carved from one workspace), for both families, both layouts, GQA, LSE,
odd lengths and padded head dims; also from another thread (per-thread argument buffers) and under CUDA-graph
capture."""
from __future__ import annotations

import threading

import pytest
import torch

import sagegen
from sagegen.runtime import api

from .gpu_util import inputs

pytestmark = pytest.mark.gpu

BF16, F16 = torch.bfloat16, torch.float16


def plan_of(q, k, v, **kw):
    api.clear_plans()
    sagegen.attention(q, k, v, sdpa_fallback=False, **kw)
    (plan,) = api._plans.values()
    return plan


# (layout, B, Hq, Hkv, nq, nk, d, dtype, causal, return_lse, precision)
CASES = [("HND", 2, 4, 2, 100, 130, 128, BF16, False, True, "fast"),
         ("NHD", 1, 3, 1, 1, 517, 64, F16, True, True, "accurate"),  # fp16 V read in place (mma)
         ("HND", 1, 2, 2, 257, 300, 72, F16, True, False, "accurate"),  # padded d: V copied
         ("NHD", 2, 8, 8, 128, 128, 128, BF16, False, False, "fast"),
         ("HND", 1, 4, 1, 1000, 17, 64, BF16, True, True, "fast")]


@pytest.mark.parametrize("layout,B,Hq,Hkv,nq,nk,d,dtype,causal,lse,precision", CASES)
def test_direct_path_equals_the_ops(gpu_kernels, layout, B, Hq, Hkv, nq, nk, d, dtype, causal, lse, precision):
    q, k, v = inputs(B=B, Hq=Hq, Hkv=Hkv, nq=nq, nk=nk, d=d, dtype=dtype, layout=layout, seed=nq + nk + d)
    kw = dict(tensor_layout=layout, is_causal=causal, return_lse=lse, precision=precision)
    plan = plan_of(q, k, v, **kw)
    short = plan.choice.spec.family == "attn_short"  # nk <= 128: one launch, one op
    assert plan.run == (plan._run_short_direct if short else plan._run_direct), plan.choice
    direct = plan.direct(q, k, v, plan.scale)
    ops = (plan._run_short if short else plan._run_kernel)(q, k, v, plan.scale)
    torch.cuda.synchronize()
    for a, b in zip(direct if lse else (direct,), ops if lse else (ops,)):
        assert torch.equal(a, b)
    again = sagegen.attention(q, k, v, sdpa_fallback=False, **kw)
    assert torch.equal(again[0] if lse else again, ops[0] if lse else ops)


def test_direct_path_from_another_thread(gpu_kernels):
    q, k, v = inputs(B=1, Hq=4, nq=300, nk=300, d=128, seed=31)
    ref = sagegen.attention(q, k, v, sdpa_fallback=False)
    results, errors = [], []

    def worker():  # no torch.cuda.set_device: a thread that only ever calls attention()
        try:
            for _ in range(20):
                results.append(sagegen.attention(q, k, v, sdpa_fallback=False))
            torch.cuda.synchronize()
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 60
    assert all(torch.equal(o, ref) for o in results)


@pytest.mark.parametrize("n", [256, 100])  # (100: attn_short)
def test_direct_path_under_graph_capture(gpu_kernels, n):
    q, k, v = inputs(B=1, Hq=4, nq=n, nk=n, d=64, seed=32)
    plan = plan_of(q, k, v, return_lse=True)
    direct_run = plan._run_short_direct if n <= 128 else plan._run_direct
    ref_o, ref_lse = sagegen.attention(q, k, v, sdpa_fallback=False, return_lse=True)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        sagegen.attention(q, k, v, sdpa_fallback=False, return_lse=True)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        o, lse = sagegen.attention(q, k, v, sdpa_fallback=False, return_lse=True)
    assert plan.run == direct_run
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(o, ref_o) and torch.equal(lse, ref_lse)
