"""The contract's quantizers: buffer shapes and padding, scale maps, error bounds, zero groups, NVFP4."""
from __future__ import annotations

import pytest
import torch

from .ref_helpers import randn
from sagegen.quant_layout import ScaleGroups, k_groups, padded_dim, padded_len, q_groups
from sagegen.reference import quant as Q
from sagegen.reference.formats import round_e4m3


def _lane_q_rows(lane: int, warp_m: int) -> list[int]:
    """Rows of a warp's query tile that lane t multiplies in mma.sync m16n8k32 (C fragment rows t//4, t//4+8)."""
    return [16 * i + lane // 4 + h for i in range(warp_m // 16) for h in (0, 8)]


def _lane_k_cols(lane: int, block_n: int) -> list[int]:
    """Columns (keys) of a block_n-wide score tile lane t holds: 2(t%4), 2(t%4)+1 of every 8-column chunk."""
    return [8 * c + 2 * (lane % 4) + h for c in range(block_n // 8) for h in (0, 1)]


@pytest.mark.parametrize("warp_m", [16, 32, 64])
def test_thread_q_groups_follow_the_mma_fragment(warp_m):
    g = q_groups("thread", 128, warp_m)
    rows = torch.arange(128)
    for warp in range(128 // warp_m):
        seen = set()
        for lane in range(32):
            idx = {int(g.index(warp * warp_m + r)) for r in _lane_q_rows(lane, warp_m)}
            assert len(idx) == 1, "one lane's rows must share one scale"
            seen |= idx
        assert len(seen) == 8  # lanes with different t//4 use different scales
    assert g.count(100) == 128 // warp_m * 8
    assert int(g.index(rows).max()) == g.count(128) - 1


@pytest.mark.parametrize("block_n", [32, 64, 128])
def test_thread_k_groups_follow_the_mma_fragment(block_n):
    g = k_groups("thread", block_n)
    for lane in range(32):
        idx = {int(g.index(c)) for c in _lane_k_cols(lane, block_n)}
        assert len(idx) == 1
    assert len({int(g.index(c)) for lane in range(32) for c in _lane_k_cols(lane, block_n)}) == 4


@pytest.mark.parametrize("groups", [ScaleGroups(128), ScaleGroups(32), ScaleGroups(16, 8), ScaleGroups(64, 4),
                                    q_groups("thread", 64, 16)])
def test_scales_are_amax_of_the_contract_groups(groups):
    x = randn(11, 2, 3, 200, 80, scale=3.0)
    qt = Q.quantize_int8(x, groups)
    n_pad, D = padded_len(200), padded_dim(80)
    assert qt.data.shape == (2, 3, n_pad, D) and qt.data.dtype == torch.int8
    assert qt.scale.shape == (2, 3, groups.count(200)) and qt.scale.dtype == torch.float32
    idx = groups.index(torch.arange(n_pad))
    for gi in range(groups.count(200)):
        rows = [r for r in range(200) if int(idx[r]) == gi]
        amax = x[:, :, rows].abs().amax(dim=(-1, -2)) if rows else torch.zeros(2, 3)
        assert torch.equal(qt.scale[..., gi], amax / 127)


def test_int8_buffer_is_bit_exact_to_the_contract_formula():
    x = randn(12, 1, 2, 130, 64, dtype=torch.float16)
    g = ScaleGroups(64)
    qt = Q.quantize_int8(x, g, smooth=True)
    xs = x.float() - x.float().mean(dim=-2, keepdim=True)
    idx = g.index(torch.arange(130))
    amax = torch.stack([xs[:, :, idx == i].abs().amax(dim=(-1, -2)) for i in range(3)], dim=-1)
    inv = (torch.tensor(127.0, dtype=torch.float64) / amax.double()).float()  # IEEE fp32 division, like CUDA C
    expected = torch.round(xs * inv[..., idx, None]).clamp(-127, 127).to(torch.int8)
    assert torch.equal(qt.data[:, :, :130, :64], expected)
    assert torch.equal(qt.scale[..., :3], (amax.double() / 127).float())
    assert torch.equal(qt.mean[:, :, 0, :64], x.float().mean(dim=-2))
    assert not qt.data[:, :, 130:].any() and not qt.mean[..., 64:].any()
    assert not qt.scale[..., 3:].any()  # the fourth group holds only padding rows


@pytest.mark.parametrize("bits,quant", [(8, Q.quantize_int8), (4, Q.quantize_int4)])
@pytest.mark.parametrize("gran", ["block", "warp", "thread"])
def test_int_dequantization_error_is_at_most_half_a_step(bits, quant, gran):
    x = randn(13 + bits, 1, 2, 300, 96, scale=2.0)
    qt = quant(x, k_groups(gran, 64))
    qmax = 127 if bits == 8 else 7
    assert qt.data.abs().max() <= qmax and qt.data.abs().max() == qmax
    err = (qt.dequantize()[:, :, :300, :96] - x).abs()
    step = qt.row_scale()[:, :, :300, None]
    assert (err <= 0.5 * step * (1 + 1e-5) + 1e-7).all()
    assert err.max() > 0.3 * step.min()  # not trivially exact


def test_finer_groups_quantize_more_accurately():
    x = randn(14, 1, 4, 512, 128) * randn(15, 1, 4, 512, 1).exp()  # rows of very different magnitudes
    errs = [(Q.quantize_int8(x, g).dequantize()[:, :, :512, :] - x).square().mean().item()
            for g in (ScaleGroups(128), ScaleGroups(32), ScaleGroups(32, 8))]
    assert errs[0] > 1.5 * errs[1] > 1.5 * 1.2 * errs[2]


def test_all_zero_groups_give_zero_scale_and_no_nan():
    x = randn(16, 1, 1, 256, 64)
    x[:, :, 64:128] = 0
    qt = Q.quantize_int8(x, ScaleGroups(64), smooth=False)
    assert qt.scale[0, 0, 1] == 0 and not qt.data[:, :, 64:128].any()
    assert torch.isfinite(qt.dequantize()).all()
    z = Q.quantize_int4(torch.zeros(1, 1, 10, 16), ScaleGroups(16, 8), smooth=True)
    assert not z.scale.any() and not z.data.any() and torch.isfinite(z.mean).all()


def test_block_smoothing_subtracts_each_block_mean_of_valid_rows():
    x = randn(17, 1, 1, 200, 32) + 5
    xs, mean = Q.smooth_pad(x, 64)
    assert mean.shape == (1, 1, 4, 64)
    for b in range(4):
        rows = slice(64 * b, min(200, 64 * b + 64))
        torch.testing.assert_close(mean[0, 0, b, :32], x[0, 0, rows].mean(dim=0))
        torch.testing.assert_close(xs[0, 0, rows, :32].mean(dim=0), torch.zeros(32), atol=1e-5, rtol=0)
    assert not xs[:, :, 200:].any()


def test_v_fp8_buffer_layout_scales_and_error():
    v = randn(18, 2, 2, 150, 64, scale=4.0)
    v[..., 5] = 0  # a zero channel
    vq = Q.quantize_v_fp8(v)
    assert vq.data.dtype == torch.float8_e4m3fn and vq.data.shape == (2, 2, 64, 256)
    amax = v.abs().amax(dim=-2)
    assert torch.equal(vq.scale, (amax.double() / 448).float())
    inv = torch.where(amax > 0, (448 / amax.double()).float(), torch.zeros_like(amax))  # IEEE fp32 division
    expected = (v * inv[..., None, :]).to(torch.float8_e4m3fn)
    assert torch.equal(vq.data[..., :150].view(torch.uint8), expected.transpose(-1, -2).view(torch.uint8))
    assert vq.data.float().abs().amax() == 448  # each channel's amax lands on 448
    assert not vq.data.float()[..., 150:].any() and not vq.data.float()[:, :, 5].any()
    err = (vq.dequantize()[:, :, :150] - v).abs()
    bound = torch.maximum(v.abs() * 2.0 ** -4, 2.0 ** -10 * vq.scale[:, :, None, :])
    assert (err <= bound * (1 + 1e-6)).all()


def test_v_fp8_narrow_range_for_fp16_accumulation():
    v = randn(19, 1, 1, 64, 16)
    vq = Q.quantize_v_fp8(v, fp8_max=2.25)
    assert vq.data.float().abs().amax() == 2.25
    with pytest.raises(ValueError, match="fp8_max"):
        Q.quantize_v_fp8(v, fp8_max=500)


def test_nvfp4_blocks_scales_and_error_bound():
    x = randn(20, 3, 64, scale=2.0)
    x[0, :16] = 0  # a zero block
    fq = Q.quantize_nvfp4(x, dim=-1)
    assert fq.scale.shape == (3, 4)
    blocks = x.view(3, 4, 16)
    assert torch.equal(fq.scale, round_e4m3(blocks.abs().amax(-1) / 6))
    assert fq.scale[0, 0] == 0 and not fq.values[0, :16].any()
    assert set(fq.values.abs().unique().tolist()) <= {0, 0.5, 1, 1.5, 2, 3, 4, 6}
    err = (fq.dequantize() - x).abs()
    s = fq.scale.repeat_interleave(16, dim=-1)
    assert (err <= s * 1.0 + 1e-7).all()  # at most half of e2m1's widest gap (4 -> 6), or the saturation slack
    rel = err.sum() / x.abs().sum()
    assert 0.02 < rel < 0.15


def test_nvfp4_along_tokens():
    v = randn(21, 1, 1, 32, 8)
    fq = Q.quantize_nvfp4(v, dim=-2)
    assert fq.scale.shape == (1, 1, 2, 8)
    torch.testing.assert_close(fq.scale[0, 0, 1, 3], round_e4m3(v[0, 0, 16:, 3].abs().amax() / 6))


def test_quantizer_argument_errors_name_the_argument():
    x = randn(22, 1, 1, 16, 16)
    with pytest.raises(TypeError, match="groups"):
        Q.quantize_int8(x, 64)
    with pytest.raises(ValueError, match="smooth"):
        Q.quantize_int8(x, ScaleGroups(16), smooth=48)
    with pytest.raises(ValueError, match="x must be a 4-D"):
        Q.quantize_int8(x[0], ScaleGroups(16))
    with pytest.raises(ValueError, match="multiple of 16"):
        Q.quantize_nvfp4(randn(23, 2, 24))
    with pytest.raises(ValueError, match="head dim"):
        Q.quantize_int8(randn(24, 1, 1, 8, 300), ScaleGroups(16))
