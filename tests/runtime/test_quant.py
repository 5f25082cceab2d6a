"""runtime/quant.py: the launches of the quantization passes (on the CPU, launches recorded) and, on a GPU, the
operand-image layouts (qk_image, v_mode="e4m3w" / "f16w") against the plain buffers rearranged by quant_layout's
helpers, and INT8 V (v_mode="i8w") against reference.quantize_v_int8 bit for bit."""
from __future__ import annotations

import os
import re

import pytest
import torch

from sagegen.arch import ARCHES
from sagegen.quant_layout import (ScaleGroups, k_groups, padded_dim, padded_len, q_groups, qk_to_image,
                                  v_f16_to_image, v_from_image, v_to_image)
from sagegen.render import render
from sagegen.runtime import launch, quant

QG, KG = q_groups("thread", 128, 64), k_groups("thread", 128)  # what a wgmma kernel (m128, n128) would ask


@pytest.fixture
def recorded(monkeypatch):
    """quantize() on CPU tensors as on an sm90a GPU; its launches recorded as (spec, grid, args), not run."""
    launches = []
    monkeypatch.setattr(launch, "launch", lambda spec, params, grid, block, smem, dev, stream, *args:
                        launches.append((spec, grid, args)) or params.packer.pack(*args))
    monkeypatch.setattr(quant, "device_arch", lambda idx: ARCHES["sm90a"])
    monkeypatch.setattr(quant, "stream_handle", lambda dev: 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return launches


def _qkv(B=2, H=3, n=1000, d=128):
    return [torch.randn(B, H, n, d, dtype=torch.bfloat16) for _ in range(3)]


def _param_count(spec) -> int:
    signature = re.search(rf"{spec.name}\((.*?)\)\s*{{", render(spec), re.S).group(1)
    return signature.count(",") + 1


@pytest.mark.parametrize("qk_image", [False, True])
def test_image_launch_reuses_the_fp8_stats_and_passes_qk_image(recorded, qk_image):
    z = quant.quantize(*_qkv(), layout="HND", q_groups=QG, k_groups=KG, v_mode="e4m3w", qk_image=qk_image)
    (stats, _, stats_args), (qkv, grid, args) = recorded
    assert (stats.op, stats.v) == ("stats", "e4m3t") and (qkv.op, qkv.v) == ("qkv", "e4m3w")
    assert stats_args[-1] != 0  # V amax is computed
    assert len(args) == _param_count(qkv) and len(stats_args) == _param_count(stats)
    # q(4) k(4) v(4) Hq..nk_pad(7) q_tile q_sub k_tile k_sub splits, then qk_image
    assert args[24] == int(qk_image) and quant.QKV_PARAMS.codes[24] == "i"
    assert z.v.shape == (2, 3, padded_len(1000) // 128, 128, 128) and z.v.dtype == torch.float8_e4m3fn
    assert z.v_scale.shape == (2, 3, 128) and z.q8.shape == z.k8.shape == (2, 3, 1024, 128)


def test_int8_v_image_launch_reuses_the_fp8_stats(recorded):
    """i8w: the stats pass is the e4m3t one (V's amax), the qkv pass writes int8 + 128 (u8) in the e4m3w image's
    shape."""
    z = quant.quantize(*_qkv(), layout="HND", q_groups=QG, k_groups=KG, v_mode="i8w", qk_image=True)
    (stats, _, stats_args), (qkv, _, args) = recorded
    assert (stats.op, stats.v) == ("stats", "e4m3t") and (qkv.op, qkv.v) == ("qkv", "i8w")
    assert stats_args[-1] != 0 and args[26] == stats_args[-1]  # V amax: written by stats, read by qkv
    assert len(args) == _param_count(qkv) and int(args[24]) == 1
    assert "constexpr int kVMode = 5;" in render(qkv)
    assert z.v.shape == (2, 3, padded_len(1000) // 128, 128, 128) and z.v.dtype == torch.uint8
    assert z.v_scale.shape == (2, 3, 128) and z.v_scale.dtype == torch.float32
    assert quant.v_buffers("i8w", 2, 3, 1024, 128) == {
        "v": ((2, 3, 8, 128, 128), torch.uint8), "v_scale": ((2, 3, 128), torch.float32)}


def test_plain_launch_passes_qk_image_off(recorded):
    quant.quantize(*_qkv(d=64), layout="HND", q_groups=QG, k_groups=KG, v_mode="f16")
    (stats, _, _), (qkv, _, args) = recorded
    assert stats.v == "none" and int(args[24]) == 0 and len(args) == _param_count(qkv)


def test_fp16_image_launch_needs_no_v_statistics(recorded):
    z = quant.quantize(*_qkv(n=300, d=64), layout="HND", q_groups=QG, k_groups=KG, v_mode="f16w", qk_image=True)
    (stats, _, stats_args), (qkv, _, args) = recorded
    assert (stats.v, qkv.v) == ("none", "f16w") and stats_args[-1] == 0 and int(args[24]) == 1
    assert z.v.shape == (2, 3, 3, 1, 128, 64) and z.v.dtype == torch.float16 and z.v_scale is None


@pytest.mark.parametrize("v_mode", ["e4m3w", "f16", "f16w", "i8w"])
def test_one_chunk_of_keys_takes_its_statistics_locally(recorded, v_mode):
    """nk <= 128 without the LSE's q.mean(k): the qkv pass alone (splits = 0), no statistics buffers; with the LSE
    (or one key more) both passes."""
    image = v_mode != "f16"
    quant.quantize(*_qkv(n=128, d=64), layout="HND", q_groups=QG, k_groups=KG, v_mode=v_mode, qk_image=image)
    ((qkv, grid, args),) = recorded
    assert qkv.op == "qkv" and args[23] == 0 and quant.QKV_PARAMS.codes[23] == "i"
    assert args[25] == args[26] == 0 and quant.QKV_PARAMS.codes[25:27] == "pp"  # ksum, vamax: no buffers
    recorded.clear()
    quant.quantize(*_qkv(n=128, d=64), layout="HND", q_groups=QG, k_groups=KG, v_mode=v_mode, qk_image=image,
                   with_qk_bias=True)
    assert [spec.op for spec, _, _ in recorded] == ["stats", "qkv"] and recorded[1][2][23] == 1
    recorded.clear()
    quant.quantize(*_qkv(n=129, d=64), layout="HND", q_groups=QG, k_groups=KG, v_mode=v_mode, qk_image=image)
    assert [spec.op for spec, _, _ in recorded] == ["stats", "qkv"] and recorded[1][2][23] == 2


@pytest.mark.parametrize("d", [129, 256])
def test_qk_image_above_128_runs_the_d256_pass_with_the_image_flag(recorded, d):
    z = quant.quantize(*_qkv(n=300, d=d), layout="HND", q_groups=QG, k_groups=KG, v_mode="f16w", qk_image=True)
    (stats, _, _), (qkv, _, args) = recorded
    assert (stats.d, qkv.d, qkv.v) == (256, 256, "f16w") and int(args[24]) == 1
    assert z.q8.shape == z.k8.shape == (2, 3, 384, 256) and z.v.shape == (2, 3, 3, 4, 128, 64)


def test_inputs_not_vector_ready_are_copied_to_aligned_rows(recorded):
    """A contiguous q at a base 2 bytes past a 16-byte boundary, and k in rows of 132 elements: both copied."""
    q, k, v = _qkv(n=200, d=128)  # two chunks of keys: both passes
    shifted = torch.empty(q.numel() + 1, dtype=q.dtype)[1:].view(q.shape).copy_(q)
    wide = torch.zeros(*k.shape[:-1], 132, dtype=k.dtype)[..., :128].copy_(k)
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 and wide.stride(2) == 132
    quant.quantize(shifted, wide, v, layout="HND", q_groups=QG, k_groups=KG, v_mode="f16")
    (_, _, stats_args), (_, _, args) = recorded
    assert args[0] % 16 == 0 and args[0] != shifted.data_ptr()
    assert stats_args[0] % 16 == 0 and args[4] == stats_args[0] != wide.data_ptr()
    assert tuple(stats_args[1:4]) == tuple(args[5:8]) == (3 * 200 * 128, 200 * 128, 128)  # k's copy: contiguous


# --- on the GPU: the image kernels write exactly the rearranged plain buffers -----------------------------------
@pytest.fixture(scope="session")
def quant_kernels(gpu_arch, session_cache_dir):
    """The quant variants of the device's arch, compiled in parallel once (not every attention variant)."""
    from sagegen.build import build
    from sagegen.render import default_out_dir
    from sagegen.variants import select

    return build(select([gpu_arch], "quant_*"), out_dir=default_out_dir(), jobs=os.cpu_count(),
                 cache_root=session_cache_dir, progress=False)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128, 72, 256, 200])
def test_operand_images_equal_the_rearranged_plain_buffers(quant_kernels, layout, dtype, d):
    from .gpu_util import inputs

    assert not quant_kernels.failed, sorted(quant_kernels.failed)
    q, k, v = inputs("outliers", B=2, Hq=3, nq=1000, nk=1000, d=d, dtype=dtype, layout=layout, seed=d)
    kw = dict(layout=layout, q_groups=QG, k_groups=ScaleGroups(64, 4), with_qk_bias=True)
    plain = quant.quantize(q, k, v, v_mode="e4m3t", **kw)
    image = quant.quantize(q, k, v, v_mode="e4m3w", qk_image=True, **kw)
    torch.cuda.synchronize()
    assert torch.equal(image.q8, qk_to_image(plain.q8)) and torch.equal(image.k8, qk_to_image(plain.k8))
    assert torch.equal(image.v.view(torch.uint8), v_to_image(plain.v).view(torch.uint8))
    for name in ("q_scale", "k_scale", "v_scale", "qk_bias"):
        assert torch.equal(getattr(image, name), getattr(plain, name)), name


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 128, 72, 256, 200])
def test_fp16_v_image_equals_the_rearranged_fp16_copy(quant_kernels, layout, dtype, d):
    from .gpu_util import inputs

    assert not quant_kernels.failed, sorted(quant_kernels.failed)
    q, k, v = inputs("outliers", B=2, Hq=3, nq=300, nk=1000, d=d, dtype=dtype, layout=layout, seed=d + 1)
    kw = dict(layout=layout, q_groups=QG, k_groups=KG)
    plain = quant.quantize(q, k, v, v_mode="f16", **kw)
    image = quant.quantize(q, k, v, v_mode="f16w", qk_image=True, **kw)
    torch.cuda.synchronize()
    assert torch.equal(image.v, v_f16_to_image(plain.v)) and image.v_scale is None
    v_hnd = v if layout == "HND" else v.transpose(1, 2)
    assert torch.equal(plain.v[:, :, :1000, :d], v_hnd.half()) and not plain.v[:, :, 1000:].any()
    assert not plain.v[..., d:].any()  # the padded channels are zero


def test_operand_image_test_logic(monkeypatch):
    """The GPU test above on the CPU, the reference quantizers (and their .image()) standing in for the kernels:
    keeps its logic from rotting without a GPU. Says nothing about the kernels."""
    from sagegen.build import BuildResult
    from sagegen.reference import quantize_int8, quantize_v_fp8

    from . import gpu_util as G

    def reference_quantize(q, k, v, *, layout, q_groups, k_groups, v_mode, with_qk_bias=False, qk_image=False):
        rq, rk = quantize_int8(q, q_groups, layout=layout), quantize_int8(k, k_groups, smooth=True, layout=layout)
        rv = quantize_v_fp8(v, layout=layout)
        q8, k8 = (rq.image(), rk.image()) if qk_image else (rq.data, rk.data)
        vo = rv.image() if v_mode == "e4m3w" else rv.data
        bias = torch.zeros(1)  # not what the kernel computes: equal in both runs is all the test asks
        return quant.Quantized(q8, rq.scale, k8, rk.scale, vo, rv.scale, bias, 0, 0, 0, 0)

    real_inputs = G.make_inputs
    monkeypatch.setattr(G, "make_inputs", lambda dist, **kw: real_inputs(dist, **{**kw, "device": "cpu"}))
    monkeypatch.setattr(quant, "quantize", reference_quantize)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    for layout, d in (("NHD", 64), ("HND", 72), ("NHD", 200)):
        test_operand_images_equal_the_rearranged_plain_buffers(BuildResult(), layout, torch.bfloat16, d)


# --- INT8 V (v_mode="i8w"): the kernel against reference.quantize_v_int8 ------------------------------------------
# The kernel's arithmetic (templates/quant/quant.cuh, quantize_v8_chunk with V8::kInt8): amax_c over the tokens with
# a NaN-keeping max; inv = 127 / amax_c (IEEE division) if amax_c > 0, else 0 for amax_c = 0 and NaN for NaN;
# x = v * inv (fp32), clamped to [-127, 127] by fmaxf / fminf (which send NaN to -127); then round half to even by
# adding 1.5 * 2^23 (int8x4_rn) and keeping the low byte; scale amax_c / 127; stored + 128 as u8 (decode_i8w
# undoes that). Against the reference that gives:
#   * bit-identical values and scales wherever the reference's value is a number;
#   * -127 where the reference's value is NaN: a zero of a bf16 channel whose 0 < amax_c < 127 / FLT_MAX (inv is
#     +inf there, 0 * inf; its nonzero values are +-127 in both), an infinite element (inf * 0);
#   * a channel with a NaN: every value -127, where the reference has 0 (inv = 0 there) and NaN at the NaN; both
#     scales are NaN, so both dequantize the channel to NaN.
def i8w_emulation(v: torch.Tensor, layout: str = "HND") -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's INT8 V arithmetic in torch (fp32, CPU): (values [B, H, D, N_pad] int8, scale [B, H, D])."""
    vh = v if layout == "HND" else v.transpose(1, 2)
    B, H, N, d = vh.shape
    vp = torch.zeros(B, H, padded_len(N), padded_dim(d))
    vp[:, :, :N, :d] = vh.float()
    amax = vp.abs().amax(dim=-2)  # torch's amax keeps NaN, as max_keep_nan does
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.where(amax == 0, torch.zeros_like(amax), amax))
    x = (vp * inv[..., None, :]).fmax(torch.tensor(-127.0)).fmin(torch.tensor(127.0))
    bits = (x + 12582912.0).view(torch.int32)  # fp32 add: rounds half to even onto the integers
    values = (bits & 0xFF).to(torch.uint8).view(torch.int8)
    return values.transpose(-1, -2).contiguous(), amax / torch.tensor(127.0)


def decode_i8w(image: torch.Tensor) -> torch.Tensor:
    """The i8w image (u8, each value + 128) -> the int8 values [B, H, D, N_pad]."""
    assert image.dtype == torch.uint8, image.dtype
    return (v_from_image(image).to(torch.int16) - 128).to(torch.int8)


def encode_i8w(values: torch.Tensor) -> torch.Tensor:
    """int8 values [B, H, D, N_pad] -> the i8w image the kernel writes."""
    return v_to_image((values.to(torch.int16) + 128).to(torch.uint8))


def _expected_int8(ref_values: torch.Tensor) -> torch.Tensor:
    """reference.quantize_v_int8's values [B, H, N_pad, D] -> the kernel's int8 [B, H, D, N_pad]: NaN -> -127."""
    return torch.nan_to_num(ref_values, nan=-127.0).transpose(-1, -2).to(torch.int8)


def _same_scales(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()])


def _i8w_inputs(dist, n, d, dtype, layout, seed, device):
    from sagegen.reference import make_inputs

    q, k, v = make_inputs(dist, batch=2, heads=4, heads_kv=2, n=n + 5, n_kv=n, d=d, seed=seed, device=device,
                          dtype=dtype)
    v[..., d // 2] = 0  # an all-zero channel: scale 0, values 0
    v[:, :, n // 2, 1] = -300.0  # a lone outlier in a channel (the outliers distribution shifts whole channels)
    if layout == "NHD":
        q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    return q, k, v


I8W_SHAPES = [(128, 1000), (64, 4097), (72, 17), (256, 1), (128, 128), (200, 129)]  # nk <= 128: one chunk


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d,n", I8W_SHAPES)
def test_int8_v_image_equals_the_reference(quant_kernels, layout, dtype, d, n):
    """i8w's image, decoded, is quantize_v_int8's values exactly; the scales too. With and without the LSE's
    q.mean(k) (for nk <= 128: the qkv pass's local statistics, then the two passes). Q and K are the e4m3w run's."""
    from sagegen.reference.quant import quantize_v_int8

    assert not quant_kernels.failed, sorted(quant_kernels.failed)
    q, k, v = _i8w_inputs("outliers", n, d, dtype, layout, seed=n * 7 + d, device="cuda")
    ref_values, ref_scale = quantize_v_int8(v.cpu(), layout=layout)
    kw = dict(layout=layout, q_groups=QG, k_groups=KG, qk_image=True)
    fp8 = quant.quantize(q, k, v, v_mode="e4m3w", **kw)
    for with_qk_bias in (False, True):
        z = quant.quantize(q, k, v, v_mode="i8w", with_qk_bias=with_qk_bias, **kw)
        torch.cuda.synchronize()
        got = decode_i8w(z.v.cpu())
        assert z.v.dtype == torch.uint8 and got.shape == (2, 2, padded_dim(d), padded_len(n))
        assert torch.equal(got, _expected_int8(ref_values)), with_qk_bias
        assert torch.equal(z.v_scale.cpu(), ref_scale), with_qk_bias
        assert not got[:, :, d // 2].any() and not z.v_scale[:, :, d // 2].any()  # the zero channel
        assert got.abs().amax(dim=-1)[:, :, :d][ref_scale[:, :, :d] > 0].eq(127).all()  # amax -> +-127
        for name in ("q8", "q_scale", "k8", "k_scale"):
            assert torch.equal(getattr(z, name), getattr(fp8, name)), name


def _special_v(device):
    """bf16 V [1, 1, 300, 64] of normal values with special channels: 0 a NaN, 1 a +inf, 2 a -inf, 3 tiny (amax
    2e-38 < 127 / FLT_MAX: inv = +inf; half of its values 0), 4 amax 3e38 (inv near FLT_MIN), 5 amax 1e-30, 6 ties
    (amax 127: inv 1, values k + 0.5)."""
    v = torch.randn(1, 1, 300, 64, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    v[0, 0, 17, 0] = float("nan")
    v[0, 0, 5, 1] = float("inf")
    v[0, 0, 250, 2] = float("-inf")
    v[0, 0, :, 3] = torch.where(torch.arange(300) % 2 == 0, 0.0, 2e-38 * torch.sign(torch.randn(300)))
    v[0, 0, 9, 4] = 3e38
    v[0, 0, :, 5] *= 1e-30 / v[0, 0, :, 5].float().abs().max()
    v[0, 0, :, 6] = torch.tensor([127.0] + [(i % 9 - 4) + 0.5 for i in range(299)])
    return v.to(device)


def _check_special(values: torch.Tensor, scale: torch.Tensor, ref_values: torch.Tensor, ref_scale: torch.Tensor):
    """values [1, 1, D, N_pad] int8 against the reference's, by the rules above."""
    assert _same_scales(scale, ref_scale)
    assert scale[0, 0, 0].isnan() and scale[0, 0, 1].isinf() and scale[0, 0, 2].isinf()
    expected = _expected_int8(ref_values)
    assert (values[0, 0, 0] == -127).all() and not ref_values[0, 0, :, 0].nan_to_num().any()  # the NaN channel
    assert torch.equal(values[0, 0, 1:], expected[0, 0, 1:])
    assert (values[0, 0, 1, 5] == -127) and not values[0, 0, 1, :5].any()  # inf * 0: NaN -> -127; 0 elsewhere
    tiny = values[0, 0, 3, :300]
    assert (tiny[1::2].abs() == 127).all() and (tiny[0::2] == -127).all()  # +-inf -> +-127; 0 * inf -> -127
    assert values[0, 0, 4, 9] == 127 and values[0, 0, 5].abs().max() == 127
    assert torch.equal(values[0, 0, 6, 1:10].float(), torch.tensor([-4.0, -2, -2, 0, 0, 2, 2, 4, 4]))  # x.5: even


def test_int8_v_emulation_equals_the_reference():
    """The kernel's arithmetic (i8w_emulation) against quantize_v_int8 on the CPU: bit-identical on ordinary
    inputs, and the documented values on the special ones. Says nothing about the kernel; the GPU tests do."""
    from sagegen.reference.quant import quantize_v_int8

    for dtype, d, n, layout in ((torch.float16, 128, 1000, "HND"), (torch.bfloat16, 72, 17, "NHD"),
                                (torch.bfloat16, 64, 129, "HND")):
        _, _, v = _i8w_inputs("outliers", n, d, dtype, layout, seed=n + d, device="cpu")
        ref_values, ref_scale = quantize_v_int8(v, layout=layout)
        values, scale = i8w_emulation(v, layout)
        assert torch.equal(values, _expected_int8(ref_values)) and torch.equal(scale, ref_scale)
    v = _special_v("cpu")
    _check_special(*i8w_emulation(v), *quantize_v_int8(v))


@pytest.mark.gpu
@pytest.mark.parametrize("n", [300, 100])  # two passes; one chunk (local statistics)
def test_int8_v_non_finite_and_tiny_channels(quant_kernels, n):
    """The exceptions to bit-identity, as documented above: NaN, +-inf and tiny (inv = +inf) channels."""
    from sagegen.reference.quant import quantize_v_int8

    assert not quant_kernels.failed, sorted(quant_kernels.failed)
    v = _special_v("cuda")[:, :, :n].contiguous()
    if n < 300:  # keep every special element inside the first n keys
        v[0, 0, 50, 2] = float("-inf")
    q = torch.randn(1, 1, n, 64).to(v.device, torch.bfloat16)
    z = quant.quantize(q, q, v, layout="HND", q_groups=QG, k_groups=KG, v_mode="i8w", qk_image=True)
    torch.cuda.synchronize()
    values, scale = decode_i8w(z.v.cpu()), z.v_scale.cpu()
    ref_values, ref_scale = quantize_v_int8(v.cpu())
    assert torch.equal(values, i8w_emulation(v.cpu())[0]) and _same_scales(scale, ref_scale)
    if n == 300:
        _check_special(values, scale, ref_values, ref_scale)


def test_int8_v_test_logic(monkeypatch):
    """The i8w GPU tests on the CPU, i8w_emulation (and the reference for Q/K) standing in for the kernels: keeps
    their logic from rotting without a GPU. Says nothing about the kernels."""
    from sagegen.build import BuildResult
    from sagegen.reference import make_inputs as real_make_inputs
    from sagegen.reference import quantize_int8

    def emulated_quantize(q, k, v, *, layout, q_groups, k_groups, v_mode, with_qk_bias=False, qk_image=False):
        rq, rk = quantize_int8(q, q_groups, layout=layout), quantize_int8(k, k_groups, smooth=True, layout=layout)
        values, scale = i8w_emulation(v, layout)
        vo = encode_i8w(values) if v_mode == "i8w" else None
        return quant.Quantized(rq.image(), rq.scale, rk.image(), rk.scale, vo, scale, None, 0, 0, 0, 0)

    import sagegen.reference as R

    monkeypatch.setattr(R, "make_inputs", lambda dist, **kw: real_make_inputs(dist, **{**kw, "device": "cpu"}))
    monkeypatch.setattr(quant, "quantize", emulated_quantize)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    real_special = _special_v
    monkeypatch.setitem(globals(), "_special_v", lambda device: real_special("cpu"))
    for layout, dtype, (d, n) in (("NHD", torch.bfloat16, (72, 17)), ("HND", torch.float16, (200, 129))):
        test_int8_v_image_equals_the_reference(BuildResult(), layout, dtype, d, n)
    for n in (300, 100):
        test_int8_v_non_finite_and_tiny_channels(BuildResult(), n)
