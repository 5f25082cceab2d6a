"""The mma.sync attention family's declared space and validity rules.

Specs are derived from an enumerated variant with dataclasses.replace, so adding a field to AttnMmaSpec does not
break these tests.
"""
import dataclasses
import fnmatch
import re

import pytest

from sagegen.arch import ARCHES, DEFAULT_ARCHES
from sagegen.errors import InvalidVariant
from sagegen.quant_layout import N_ALIGN
from sagegen.variants import attn_mma, select, spec_from_name
from sagegen.variants.attn_mma import TILES, AttnMmaSpec, enumerate_variants


def _base(arch="sm90a", **change) -> AttnMmaSpec:
    """A valid variant: d128, 128x64 tile over 8 warps, two stages, f32 accumulate, bf16 out, per-warp Q scales."""
    (spec,) = [s for s in select([arch], "attn_mma_*_acc_f32_o_bf16_d128_m128_n64_w8_s2_*_qg_warp_kg_block_causal")
               if getattr(s, "b", 1) == 1][:1]
    return dataclasses.replace(spec, **change)


def test_name_spells_parameters_in_the_documented_order():
    spec = _base()
    assert re.fullmatch(r"attn_mma_sm90a_qk_i8_pv_f16_acc_f32_o_bf16_d128_m128_n64_w8_s2_(\w+_)?qg_warp_kg_block_causal",
                        spec.name), spec.name
    assert spec_from_name(spec.name) == spec


@pytest.fixture
def no_register_limit(monkeypatch):
    # Isolate the shared-memory rule from the register estimate (which also rejects large tiles).
    monkeypatch.setattr(attn_mma, "REG_BUDGET", 10**6)


def test_d128_n128_two_stages_fits_hopper_but_not_sm120a_shared_memory(no_register_limit):
    # 16 KB of Q + 2 stages x 128 keys x 128 dims x 3 B = 112 KB: more than sm120a's 99 KB, less than sm90a's 227 KB.
    big = _base(n=128)
    assert big.smem_bytes() <= ARCHES["sm90a"].smem_per_block
    with pytest.raises(InvalidVariant, match="shared memory"):
        dataclasses.replace(big, arch="sm120a")


def test_enumerator_drops_tiles_that_do_not_fit_the_arch(no_register_limit, monkeypatch):
    monkeypatch.setattr(attn_mma, "TILES", attn_mma.TILES + (_tile_of(_base(n=128)),))
    big = "*_d128_m128_n128_w8_s2_*"
    assert fnmatch.filter([s.name for s in enumerate_variants("sm90a")], big)
    assert not fnmatch.filter([s.name for s in enumerate_variants("sm120a")], big)


def test_register_estimate_over_budget_is_invalid():
    with pytest.raises(InvalidVariant, match="registers"):
        _base(n=128, acc="f16")


def _tile_of(spec):
    """The TILES entry that produces ``spec``'s tile (TILES entries are the leading tile fields, in order)."""
    return tuple(getattr(spec, f) for f in ("m", "n", "w", "s", "b")[: len(TILES[0])])


@pytest.mark.parametrize("tile", TILES, ids=lambda t: "_".join(map(str, t)))
def test_every_declared_tile_yields_variants_on_some_arch(tile):
    # A tile added to TILES that fits no arch would silently generate nothing.
    found = [a for a in DEFAULT_ARCHES if any(_tile_of(s) == tile for s in enumerate_variants(a))]
    assert found, f"tile {tile} fits no arch"


@pytest.mark.parametrize("arch", DEFAULT_ARCHES)
def test_every_variant_fits_the_arch_and_tiles_divide_the_padding(arch):
    for s in enumerate_variants(arch):
        assert s.smem_bytes() <= ARCHES[arch].smem_per_block
        assert N_ALIGN % s.m == 0 and N_ALIGN % s.n == 0
        assert s.m == s.w * s.warp_m and s.warp_m in (16, 32)


@pytest.mark.parametrize("change, match", [
    (dict(qk="e4m3"), "qk"), (dict(pv="e4m3"), "pv"), (dict(acc="f64"), "acc"), (dict(o="f32"), "o must"),
    (dict(d=96), "d must"), (dict(m=128, w=2), "rows per warp"), (dict(n=256), "n="), (dict(s=5), "s must"),
    (dict(qg="row"), "qg"), (dict(kg="warp"), "kg"),
])
def test_invalid_parameters_are_rejected_with_the_reason(change, match):
    with pytest.raises(InvalidVariant, match=match):
        _base(**{"d": 64, **change})


def test_thread_granularity_uses_the_mma_fragment_layout():
    spec = _base(d=64, qg="thread", kg="thread")
    assert (spec.q_groups.tile, spec.q_groups.sub) == (spec.warp_m, 8)
    assert (spec.k_groups.tile, spec.k_groups.sub) == (spec.n, 4)


def test_every_variant_names_its_emulation():
    """spec.emulation(): the sage2_attention arguments the GPU tests compare against: the variant's own scale
    groups and key blocks, FP16 P.V with its accumulator."""
    from sagegen.quant_layout import k_groups, q_groups

    for s in enumerate_variants("sm90a"):
        kw = s.emulation()
        assert q_groups(kw["granularity"], kw["block_m"], kw["warp_m"]) == s.q_groups
        assert k_groups(kw["granularity"], kw["block_n"]) == s.k_groups
        assert (kw["pv"], kw["pv_accum"]) == ("fp16", "fp32" if s.acc == "f32" else "fp16")
        assert kw["smooth_k"] and kw["qk_format"] == "int8"
