"""attention() / sdpa() argument checks: each bad input gets TypeError or ValueError naming the argument, before any
device work. Runs on the CPU: meta tensors pass the device check (shape inference) and reach every later check."""
from __future__ import annotations

import math

import pytest
import torch

import sagegen
from sagegen.runtime import api

BF16, F16 = torch.bfloat16, torch.float16


def meta(*shape, dtype=BF16):
    return torch.empty(*shape, device="meta", dtype=dtype)


def qkv(B=2, Hq=4, Hkv=2, nq=100, nk=130, d=128, dtype=BF16, layout="HND"):
    if layout == "HND":
        return meta(B, Hq, nq, d, dtype=dtype), meta(B, Hkv, nk, d, dtype=dtype), meta(B, Hkv, nk, d, dtype=dtype)
    return meta(B, nq, Hq, d, dtype=dtype), meta(B, nk, Hkv, d, dtype=dtype), meta(B, nk, Hkv, d, dtype=dtype)


def raises(exc, *words):
    """pytest.raises whose message must contain every word (the argument's name among them)."""
    class _Ctx:
        def __enter__(self):
            self.cm = pytest.raises(exc)
            self.info = self.cm.__enter__()
            return self.info

        def __exit__(self, *a):
            out = self.cm.__exit__(*a)
            msg = str(self.info.value)
            for w in words:
                assert w in msg, f"{w!r} not in error message {msg!r}"
            return out

    return _Ctx()


# --- valid calls on meta tensors: shape inference -----------------------------------------------------------------
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("dtype,out_dtype", [(BF16, None), (F16, None), (BF16, F16), (F16, BF16)])
def test_meta_shapes_and_dtypes(layout, dtype, out_dtype):
    q, k, v = qkv(dtype=dtype, layout=layout)
    o, lse = sagegen.attention(q, k, v, tensor_layout=layout, return_lse=True, out_dtype=out_dtype, is_causal=True)
    assert o.shape == q.shape and o.device.type == "meta"
    assert o.dtype == (out_dtype or dtype)
    assert lse.shape == (2, 4, 100) and lse.dtype == torch.float32
    assert sagegen.attention(q, k, v, tensor_layout=layout).shape == q.shape


@pytest.mark.parametrize("d", [8, 64, 72, 120, 128, 136, 192, 256])
def test_meta_head_dims_up_to_256(d):
    q, k, v = qkv(d=d)
    assert sagegen.attention(q, k, v).shape == q.shape


@pytest.mark.parametrize("precision", ["fast", "accurate"])
def test_head_dims_above_128_run_the_mma_family_compiled_for_256(precision):
    # meta tensors plan for sm80 (no FP8 family); test_api_wgmma checks sm90a, whose FP8 family lacks d = 256
    for d in (136, 256):
        spec = api.describe(*qkv(d=d, nq=4096, nk=4096), precision=precision, sdpa_fallback=False).spec
        assert (spec.family, spec.d, spec.acc) == ("attn_mma", 256, "f32"), spec.name


def test_mqa_and_odd_lengths():
    q, k, v = qkv(Hq=8, Hkv=1, nq=1, nk=4097)
    assert sagegen.attention(q, k, v, is_causal=True).shape == q.shape


# --- tensors: type, layout, rank, dtype, device -----------------------------------------------------------------
@pytest.mark.parametrize("pos,name", [(0, "q"), (1, "k"), (2, "v")])
def test_not_a_tensor(pos, name):
    args = list(qkv())
    args[pos] = [[1.0]]
    with raises(TypeError, name, "torch.Tensor"):
        sagegen.attention(*args)


def test_bad_layout():
    with raises(ValueError, "tensor_layout", "HND", "NHD"):
        sagegen.attention(*qkv(), tensor_layout="BHSD")


@pytest.mark.parametrize("pos,name", [(0, "q"), (1, "k"), (2, "v")])
def test_wrong_rank(pos, name):
    args = list(qkv())
    args[pos] = args[pos][0]
    with raises(ValueError, name, "4-D"):
        sagegen.attention(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int8, torch.float8_e4m3fn])
def test_wrong_dtype_names_q(dtype):
    q, k, v = qkv()
    with raises(TypeError, "q", "float16", "bfloat16"):
        sagegen.attention(q.to(dtype), k, v)


@pytest.mark.parametrize("pos,name", [(1, "k"), (2, "v")])
def test_mixed_dtypes(pos, name):
    args = list(qkv())
    args[pos] = args[pos].to(F16)
    with raises(TypeError, name, "dtype"):
        sagegen.attention(*args)


def test_wrong_dtype_is_reported_for_cpu_tensors_too():
    q = torch.zeros(1, 1, 8, 64)  # fp32 on the CPU: the dtype check comes first
    with raises(TypeError, "q", "float16"):
        sagegen.attention(q, q, q)


def test_cpu_tensors_rejected():
    q = torch.zeros(1, 2, 8, 64, dtype=BF16)
    with raises(ValueError, "q", "cpu", "CUDA"):
        sagegen.attention(q, q, q)


@pytest.mark.parametrize("pos,name", [(1, "k"), (2, "v")])
def test_different_devices(pos, name):
    args = list(qkv())
    args[pos] = torch.zeros(args[pos].shape, dtype=BF16)
    with raises(ValueError, name, "cpu", "one device"):
        sagegen.attention(*args)


# --- shapes ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pos,name,shape", [
    (0, "q", (2, 4, 0, 128)), (0, "q", (0, 4, 100, 128)), (0, "q", (2, 0, 100, 128)),
    (1, "k", (2, 2, 0, 128)), (2, "v", (2, 2, 0, 128))])
def test_empty_tensors(pos, name, shape):
    args = list(qkv())
    args[pos] = meta(*shape)
    with raises(ValueError, name, "empty"):
        sagegen.attention(*args)


def test_batch_mismatch_names_k():
    q, k, v = qkv()
    with raises(ValueError, "k", "batch"):
        sagegen.attention(q, meta(3, 2, 130, 128), meta(3, 2, 130, 128))


def test_head_dim_mismatch_names_k():
    q, _, _ = qkv()
    with raises(ValueError, "k", "head dim"):
        sagegen.attention(q, meta(2, 2, 130, 64), meta(2, 2, 130, 64))


@pytest.mark.parametrize("vshape", [(2, 2, 131, 128), (2, 1, 130, 128), (2, 2, 130, 64), (1, 2, 130, 128)])
def test_v_shape_mismatch_names_v(vshape):
    q, k, _ = qkv()
    with raises(ValueError, "v", "shape"):
        sagegen.attention(q, k, meta(*vshape))


def test_gqa_ratio_must_divide():
    q, k, v = qkv(Hq=6, Hkv=4)
    with raises(ValueError, "q", "6 heads", "4 heads"):
        sagegen.attention(q, k, v)


def test_nhd_shapes_are_read_in_nhd():
    q, k, v = qkv(layout="NHD", Hq=6, Hkv=4)
    with raises(ValueError, "6 heads"):
        sagegen.attention(q, k, v, tensor_layout="NHD")


@pytest.mark.parametrize("d", [264, 320, 512])
def test_head_dim_above_256(d):
    q, k, v = qkv(d=d)
    with raises(ValueError, str(d), "256", "of q "):
        sagegen.attention(q, k, v)


@pytest.mark.parametrize("d", [4, 20, 100, 127])
def test_head_dim_multiple_of_8(d):
    q, k, v = qkv(d=d)
    with raises(ValueError, str(d), "multiple of 8"):
        sagegen.attention(q, k, v)


@pytest.mark.parametrize("pos,name", [(0, "q"), (1, "k"), (2, "v")])
def test_non_contiguous_last_dim(pos, name):
    args = list(qkv())
    B, H, N, d = args[pos].shape
    args[pos] = meta(B, H, d, N).transpose(-1, -2)  # right shape, stride(-1) == N
    with raises(ValueError, name, "last dimension", "contiguous"):
        sagegen.attention(*args)


def test_other_strides_are_free():
    q, k, v = qkv(layout="NHD")
    # NHD data read as HND through a transpose view: only the last dim must be contiguous
    o = sagegen.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    assert o.shape == q.transpose(1, 2).shape


# --- flags ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,exc,words", [
    ({"is_causal": 1}, TypeError, ("is_causal", "bool")),
    ({"is_causal": "yes"}, TypeError, ("is_causal",)),
    ({"causal_alignment": "center"}, ValueError, ("causal_alignment", "top_left", "bottom_right")),
    ({"return_lse": None}, TypeError, ("return_lse",)),
    ({"precision": "turbo"}, ValueError, ("precision", "fast", "accurate", "turbo")),
    ({"precision": "Fast"}, ValueError, ("precision",)),
    ({"out_dtype": torch.float32}, ValueError, ("out_dtype",)),
    ({"out_dtype": "bf16"}, ValueError, ("out_dtype",)),
    ({"sm_scale": "0.1"}, TypeError, ("sm_scale",)),
    ({"sm_scale": True}, TypeError, ("sm_scale",)),
    ({"sm_scale": -0.5}, ValueError, ("sm_scale", "positive")),
    ({"sm_scale": 0.0}, ValueError, ("sm_scale",)),
    ({"sm_scale": math.nan}, ValueError, ("sm_scale",)),
    ({"sm_scale": math.inf}, ValueError, ("sm_scale",)),
    ({"variant": 3}, TypeError, ("variant",)),
])
def test_bad_flags(kw, exc, words):
    with raises(exc, *words):
        sagegen.attention(*qkv(), **kw)


def test_is_causal_int_is_rejected_even_after_a_cached_bool_call(fake_gpu):
    q = torch.zeros(1, 2, 64, 64, dtype=F16)
    sagegen.attention(q, q, q, is_causal=True)
    sagegen.attention(q, q, q, is_causal=True)
    # 1 == True hashes equal: a cached plan may serve it, which is harmless (same meaning); a str never is cached
    with raises(TypeError, "is_causal"):
        sagegen.attention(q, q, q, is_causal="yes")


def test_sm_scale_checked_on_the_hot_path_too(fake_gpu):
    q = torch.zeros(1, 2, 64, 64, dtype=F16)
    sagegen.attention(q, q, q)  # plan cached
    with raises(ValueError, "sm_scale"):
        sagegen.attention(q, q, q, sm_scale=-1.0)
    with raises(TypeError, "sm_scale"):
        sagegen.attention(q, q, q, sm_scale="x")


def test_sdpa_fallback_must_be_bool(fake_gpu):
    q = torch.zeros(1, 2, 64, 64, dtype=F16)
    with raises(TypeError, "sdpa_fallback"):
        sagegen.attention(q, q, q, sdpa_fallback="no")


@pytest.mark.parametrize("name,words", [
    ("attn_mma_sm80_qk_i8_pv_f16_acc_f32_o_bf16_d64_m64_n64_w4_s2_b1_qg_warp_kg_block_full", ("d 64", "128")),
    ("attn_mma_sm80_qk_i8_pv_f16_acc_f32_o_bf16_d128_m64_n64_w4_s2_b1_qg_warp_kg_block_causal", ("causal",)),
    ("attn_mma_sm80_qk_i8_pv_f16_acc_f32_o_f16_d128_m64_n64_w4_s2_b1_qg_warp_kg_block_full", ("output",)),
])
def test_variant_that_cannot_run_this_call(name, words):
    with raises(ValueError, "cannot run", *words):
        sagegen.attention(*qkv(), variant=name)


def test_variant_of_another_arch_is_rejected_on_a_gpu(fake_gpu):
    q = torch.zeros(1, 2, 64, 128, dtype=BF16)
    name = "attn_mma_sm80_qk_i8_pv_f16_acc_f32_o_bf16_d128_m64_n64_w4_s2_b1_qg_warp_kg_block_full"
    with raises(ValueError, "arch sm80", "sm89"):  # fake_gpu is an sm89
        sagegen.attention(q, q, q, variant=name)
    assert not fake_gpu  # nothing launched


def test_validation_happens_before_any_launch(fake_gpu):
    q = torch.zeros(1, 4, 64, 128, dtype=BF16)
    k = torch.zeros(1, 3, 64, 128, dtype=BF16)
    with pytest.raises(ValueError):
        sagegen.attention(q, k, k)
    with pytest.raises(TypeError):
        sagegen.attention(q, q.half(), q)
    assert not fake_gpu


# --- sdpa() ---------------------------------------------------------------------------------------------------------
def test_sdpa_rejects_masks():
    q, k, v = qkv(Hq=2, Hkv=2)
    with raises(ValueError, "attn_mask", "scaled_dot_product_attention"):
        sagegen.sdpa(q, k, v, attn_mask=meta(100, 130))


@pytest.mark.parametrize("p", [0.1, 1.0])
def test_sdpa_rejects_dropout(p):
    q, k, v = qkv(Hq=2, Hkv=2)
    with raises(ValueError, "dropout_p", "0.0"):
        sagegen.sdpa(q, k, v, dropout_p=p)


def test_sdpa_dropout_type():
    with raises(TypeError, "dropout_p"):
        sagegen.sdpa(*qkv(Hq=2, Hkv=2), dropout_p="0")


def test_sdpa_gqa_needs_enable_gqa():
    q, k, v = qkv(Hq=4, Hkv=2)
    with raises(ValueError, "enable_gqa"):
        sagegen.sdpa(q, k, v)
    assert sagegen.sdpa(q, k, v, enable_gqa=True).shape == q.shape


def test_sdpa_value_head_dim_must_match():
    q, k, _ = qkv(Hq=2, Hkv=2)
    with raises(ValueError, "value", "head dim"):
        sagegen.sdpa(q, k, meta(2, 2, 130, 64))


def test_sdpa_names_its_own_arguments():
    q, k, v = qkv(Hq=2, Hkv=2)
    with raises(TypeError, "query", "float16"):
        sagegen.sdpa(q.float(), k, v)
    with raises(ValueError, "key", "batch"):
        sagegen.sdpa(q, meta(1, 2, 130, 128), meta(1, 2, 130, 128))
    with raises(ValueError, "scale"):
        sagegen.sdpa(q, k, v, scale=-1.0)
    with raises(ValueError, "query", "at least 3"):
        sagegen.sdpa(q[0, 0], k[0, 0], v[0, 0])


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
def test_sdpa_leading_dims(lead):
    q, k, v = (meta(*lead, 4, 50, 64), meta(*lead, 4, 70, 64), meta(*lead, 4, 70, 64))
    o = sagegen.sdpa(q, k, v, is_causal=True)
    assert o.shape == q.shape and o.dtype == q.dtype


def test_sdpa_leading_dims_must_agree():
    with raises(ValueError, "key", "leading"):
        sagegen.sdpa(meta(2, 3, 4, 50, 64), meta(3, 2, 4, 50, 64), meta(3, 2, 4, 50, 64))


def test_lazy_package_exports():
    assert sagegen.attention is api.attention and sagegen.sdpa is api.sdpa
