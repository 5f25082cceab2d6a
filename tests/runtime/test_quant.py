"""runtime/quant.py: the launches of the quantization passes (on the CPU, launches recorded) and, on a GPU, the
operand-image layouts (qk_image, v_mode="e4m3w" / "f16w") against the plain buffers rearranged by quant_layout's
helpers."""
from __future__ import annotations

import os
import re

import pytest
import torch

from sagegen.arch import ARCHES
from sagegen.quant_layout import (ScaleGroups, k_groups, padded_len, q_groups, qk_to_image, v_f16_to_image,
                                  v_to_image)
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


def test_plain_launch_passes_qk_image_off(recorded):
    quant.quantize(*_qkv(d=64), layout="HND", q_groups=QG, k_groups=KG, v_mode="f16")
    (stats, _, _), (qkv, _, args) = recorded
    assert stats.v == "none" and int(args[24]) == 0 and len(args) == _param_count(qkv)


def test_fp16_image_launch_needs_no_v_statistics(recorded):
    z = quant.quantize(*_qkv(n=300, d=64), layout="HND", q_groups=QG, k_groups=KG, v_mode="f16w", qk_image=True)
    (stats, _, stats_args), (qkv, _, args) = recorded
    assert (stats.v, qkv.v) == ("none", "f16w") and stats_args[-1] == 0 and int(args[24]) == 1
    assert z.v.shape == (2, 3, 3, 1, 128, 64) and z.v.dtype == torch.float16 and z.v_scale is None


@pytest.mark.parametrize("v_mode", ["e4m3w", "f16", "f16w"])
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
