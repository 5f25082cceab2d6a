"""Element formats: every representable value is reached, rounding is RNE, saturation is correct."""
from __future__ import annotations

import pytest
import torch

from sagegen.reference import formats as F

E4M3_FINITE = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
E4M3_FINITE = E4M3_FINITE[torch.isfinite(E4M3_FINITE)]


def test_e4m3_reaches_every_finite_value_and_only_those():
    sweep = torch.linspace(-460, 460, 2_000_001)
    tiny = torch.linspace(-0.02, 0.02, 200_001)
    got = torch.unique(F.round_e4m3(torch.cat([sweep, tiny, E4M3_FINITE])))
    expected = torch.unique(E4M3_FINITE)
    assert got.numel() == expected.numel() == 253  # 254 finite codes, +0 and -0 compare equal
    assert torch.equal(got, expected)


def test_e4m3_every_code_round_trips_bit_exactly():
    codes = torch.arange(256, dtype=torch.uint8)
    values = codes.view(torch.float8_e4m3fn).float()
    finite = torch.isfinite(values)
    assert torch.equal(F.encode_e4m3(values[finite]).view(torch.uint8), codes[finite])
    assert torch.equal(F.round_e4m3(values[finite]), values[finite])


def test_e4m3_ties_go_to_even_mantissa_and_match_torch():
    v = torch.unique(E4M3_FINITE[E4M3_FINITE >= 0])
    mid = (v[:-1] + v[1:]) / 2
    r = F.round_e4m3(mid)
    lower_even = (v[:-1].to(torch.float8_e4m3fn).view(torch.uint8) & 1) == 0
    assert torch.equal(r, torch.where(lower_even, v[:-1], v[1:]))
    assert torch.equal(F.round_e4m3(-mid), -r)
    x = torch.cat([torch.randn(100_000) * 50, torch.randn(100_000) * 0.01])
    assert torch.equal(F.round_e4m3(x), x.to(torch.float8_e4m3fn).float())


@pytest.mark.parametrize("x,expected", [(448.0, 448.0), (449.0, 448.0), (1e9, 448.0), (float("inf"), 448.0),
                                        (-500.0, -448.0), (float("-inf"), -448.0), (2.0 ** -10, 0.0),
                                        (3 * 2.0 ** -10, 2.0 ** -8), (17.0, 16.0), (19.0, 20.0)])
def test_e4m3_saturation_and_edges(x, expected):
    t = torch.tensor([x])
    assert F.round_e4m3(t).item() == expected
    assert F.encode_e4m3(t).float().item() == expected


def test_e4m3_nan_stays_nan():
    assert torch.isnan(F.round_e4m3(torch.tensor([float("nan")]))).all()


def test_e2m1_reaches_every_value_and_saturates():
    x = torch.linspace(-10, 10, 100_001)
    got = torch.unique(F.round_e2m1(x))
    grid = sorted({s * v for v in F.E2M1_VALUES for s in (1, -1)})
    assert got.tolist() == grid
    assert F.round_e2m1(torch.tensor([6.0, 7.0, 1e30, float("inf"), -1e30])).tolist() == [6, 6, 6, 6, -6]


def test_e2m1_ties_to_even_code():
    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    # the neighbour with the even code (0->0, 1.0->2, 2->4, 4->6) wins every tie
    assert F.round_e2m1(mids).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    assert F.round_e2m1(-mids).tolist() == [-0.0, -1.0, -1.0, -2.0, -2.0, -4.0, -4.0]


def test_e2m1_codes_round_trip_and_pack():
    codes = torch.arange(16, dtype=torch.uint8)
    values = F.decode_e2m1(codes)
    assert values[:8].tolist() == list(F.E2M1_VALUES)
    assert torch.equal(F.encode_e2m1(values), codes)
    packed = F.pack_nibbles(codes)
    assert packed.tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]
    assert torch.equal(F.unpack_nibbles(packed, signed=False), codes)


def test_int4_reaches_every_value_saturates_symmetrically_and_packs():
    x = torch.linspace(-20, 20, 40_001)
    q = F.encode_int4(x)
    assert torch.unique(q).tolist() == list(range(-7, 8))  # -8 is never produced
    assert F.encode_int4(torch.tensor([2.5, 3.5, -2.5, 7.49, 7.5, -100.0])).tolist() == [2, 4, -2, 7, 7, -7]
    vals = torch.arange(-8, 8, dtype=torch.int8)
    assert torch.equal(F.unpack_nibbles(F.pack_nibbles(vals), signed=True), vals)


def test_int8_rounding_and_clamp():
    assert F.encode_int8(torch.tensor([0.5, 1.5, -0.5, 126.5, 127.4, 300.0, -300.0])).tolist() == [0, 2, 0, 126, 127,
                                                                                                    127, -127]


def test_round_mantissa_nearest_and_truncate():
    u = 2.0 ** -13
    x = torch.tensor([1 + u + u / 2, 1 + u / 2, 1 + 3 * u / 2, -(1 + 3 * u / 2), 1 + u - 2.0 ** -23])
    assert F.round_mantissa(x, 13).tolist() == [1 + 2 * u, 1.0, 1 + 2 * u, -(1 + 2 * u), 1 + u]
    assert F.round_mantissa(x, 13, "truncate").tolist() == [1 + u, 1.0, 1 + u, -(1 + u), 1.0]
    with pytest.raises(ValueError, match="bits"):
        F.round_mantissa(x, 24)
    with pytest.raises(ValueError, match="mode"):
        F.round_mantissa(x, 10, "up")


def test_fp16_rounding_overflows_to_inf():
    assert F.round_fp16(torch.tensor([65504.0, 65519.0, 65520.0])).tolist() == [65504.0, 65504.0, float("inf")]


def test_bad_inputs_are_named():
    with pytest.raises(TypeError, match="x must be a floating"):
        F.round_e4m3(torch.arange(3))
    with pytest.raises(ValueError, match="nibbles' last dim"):
        F.pack_nibbles(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="bits"):
        F.int_max(1)


def test_fdiv_is_a_true_fp32_division():
    a = torch.rand(100_000) * 10 + 1e-3
    exact = (127.0 / a.double()).float()  # fp64 quotient rounded once to fp32 is the IEEE fp32 quotient
    assert torch.equal(F.fdiv(127.0, a), exact)
    assert not torch.equal(127.0 / a, exact)  # why fdiv exists: torch computes reciprocal(a) * 127
    assert torch.equal(F.fdiv(a, 448.0), (a.double() / 448).float())
