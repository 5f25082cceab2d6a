"""Exact attention against an independent naive fp64 softmax(QK^T)V: causal alignments, GQA, layouts, chunks."""
from __future__ import annotations

import pytest
import torch

from .ref_helpers import naive_attention, qkv, randn
from sagegen.reference import attention_exact


@pytest.mark.parametrize("causal,align", [(False, "bottom_right"), (True, "top_left"), (True, "bottom_right")])
@pytest.mark.parametrize("nq,nk", [(37, 37), (20, 53), (53, 20)])
@pytest.mark.parametrize("hq,hkv", [(4, 4), (4, 2), (4, 1)])
def test_exact_matches_naive(causal, align, nq, nk, hq, hkv):
    q, k, v = qkv(100 + nq + hkv, b=2, hq=hq, hkv=hkv, nq=nq, nk=nk, d=32, dv=24, dtype=torch.float64)
    out, lse = attention_exact(q, k, v, causal=causal, causal_align=align, chunk_elems=700)  # several chunks
    ref, ref_lse = naive_attention(q, k, v, causal=causal, align=align)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse, ref_lse, atol=1e-12, rtol=1e-12)  # -inf rows included


def test_bottom_right_rows_without_keys_are_zero_with_minus_inf_lse():
    q, k, v = qkv(110, nq=10, nk=4, d=16)
    out, lse = attention_exact(q, k, v, causal=True)
    assert not out[:, :, :6].any() and torch.isneginf(lse[:, :, :6]).all()
    assert torch.isfinite(lse[:, :, 6:]).all()


def test_top_left_and_bottom_right_differ_when_lengths_differ():
    q, k, v = qkv(111, nq=8, nk=16, d=16)
    a, _ = attention_exact(q, k, v, causal=True, causal_align="top_left")
    b, _ = attention_exact(q, k, v, causal=True, causal_align="bottom_right")
    assert (a - b).abs().max() > 0.1


def test_nhd_layout_and_sm_scale_and_fp32():
    q, k, v = qkv(112, b=1, hq=2, nq=40, d=16, dtype=torch.float64)
    ref, ref_lse = naive_attention(q, k, v, sm_scale=0.3)
    out, lse = attention_exact(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), sm_scale=0.3, layout="NHD")
    assert out.shape == (1, 40, 2, 16)
    torch.testing.assert_close(out.transpose(1, 2), ref)
    torch.testing.assert_close(lse, ref_lse)
    out32, _ = attention_exact(q, k, v, sm_scale=0.3, dtype=torch.float32)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref, atol=1e-5, rtol=1e-5)


def test_softmax_is_invariant_to_a_k_mean_shift():
    q, k, v = qkv(113, nq=64, d=32, dtype=torch.float64)
    shift = randn(114, 1, 1, 1, 32, dtype=torch.float64, scale=5.0)
    a, la = attention_exact(q, k, v)
    b, lb = attention_exact(q, k + shift, v)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    expected = la + (q @ shift.transpose(-1, -2)).squeeze(-1) / 32 ** 0.5
    torch.testing.assert_close(lb, expected)
    assert (lb - la).abs().max() > 0.5  # the LSE does move


def test_large_sequence_is_chunked():
    q, k, v = qkv(115, b=1, hq=1, nq=3000, d=16, dtype=torch.float32)
    out, lse = attention_exact(q, k, v, chunk_elems=1 << 20)  # < 350 rows per chunk
    ref, ref_lse = naive_attention(q[:, :, -50:], k, v)
    torch.testing.assert_close(out[:, :, -50:], ref)
    torch.testing.assert_close(lse[:, :, -50:], ref_lse)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(layout="BHND"), ValueError, "layout"),
    (dict(causal_align="center", causal=True), ValueError, "causal_align"),
    (dict(sm_scale=-1.0), ValueError, "sm_scale"),
    (dict(dtype=torch.float16), ValueError, "dtype"),
    (dict(causal=1), TypeError, "causal"),
])
def test_exact_argument_errors(kwargs, exc, match):
    q, k, v = qkv(116, nq=8, d=16)
    with pytest.raises(exc, match=match):
        attention_exact(q, k, v, **kwargs)


def test_exact_shape_errors():
    q, k, v = qkv(117, hq=3, hkv=2, nq=8, d=16)
    with pytest.raises(ValueError, match="multiple of k/v heads"):
        attention_exact(q, k, v)
    with pytest.raises(ValueError, match="q must be 4-D"):
        attention_exact(q[0], k, v)
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        attention_exact(q, k.numpy(), v)
