"""The sm90a warpgroup family's declared space and validity rules.

Specs are derived from an enumerated variant with dataclasses.replace, and fields are found through
dataclasses.fields, so adding a schedule flag to AttnWgmmaSpec does not break these tests.
"""
import copy
import dataclasses
import itertools
import re

import pytest

from sagegen.arch import ARCHES, TMA, WGMMA
from sagegen.errors import InvalidVariant
from sagegen.quant_layout import N_ALIGN, k_groups, q_groups
from sagegen.variants import select, spec_from_name
from sagegen.variants.attn_wgmma import (GRANULARITY_PAIRS, OUT_TYPES, PV_FORMATS, TILES, WARPGROUP_ROWS,
                                         AttnWgmmaSpec, enumerate_variants)

# The fields the declared tuples and loops fix; anything else is a schedule choice (overlap, ...).
DECLARED = {"arch", "qk", "pv", "o", "d", "m", "n", "s", "qg", "kg", "causal"}


def _base(**change) -> AttnWgmmaSpec:
    """A valid variant: FP8 P.V, d128, two stages, bf16 out, per-thread Q and K scales, causal."""
    spec = next(s for s in enumerate_variants("sm90a")
                if (s.pv, s.d, s.s, s.o, s.qg, s.kg, s.causal) == ("e4m3", 128, 2, "bf16", "thread", "thread", True))
    return dataclasses.replace(spec, **change)


def _schedule(spec) -> tuple:
    return tuple((f.name, getattr(spec, f.name)) for f in dataclasses.fields(spec) if f.name not in DECLARED)


def test_name_spells_parameters_in_the_documented_order():
    spec = _base()
    assert re.fullmatch(r"attn_wgmma_sm90a_qk_i8_pv_e4m3_o_bf16_d128_m128_n128_s2_(\w+_)?qg_thread_kg_thread_causal",
                        spec.name), spec.name
    assert spec_from_name(spec.name) == spec and AttnWgmmaSpec.from_name(spec.name) == spec


def test_every_enumerated_name_round_trips():
    specs = enumerate_variants("sm90a")
    assert len({s.name for s in specs}) == len(specs)
    for s in specs:
        assert spec_from_name(s.name) == s and AttnWgmmaSpec.from_name(s.name) == s


def test_every_valid_single_field_change_changes_the_name():
    specs = enumerate_variants("sm90a")
    values = {f.name: {getattr(s, f.name) for s in specs} for f in dataclasses.fields(AttnWgmmaSpec)}
    changed = set()
    for base in specs:
        for name, alternatives in values.items():
            for alt in alternatives - {getattr(base, name)}:
                try:
                    other = dataclasses.replace(base, **{name: alt})
                except InvalidVariant:  # coupled schedule flags: not every single change is valid
                    continue
                assert other.name != base.name and spec_from_name(other.name) == other, (name, alt)
                changed.add(name)
    # every field that varies in the enumeration has a valid single change from some variant
    assert changed == {n for n, v in values.items() if len(v) > 1}


def _perturbed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    return value + "x"


def test_every_field_shows_in_the_name_even_single_valued_ones():
    base = _base()
    for f in dataclasses.fields(base):
        other = copy.copy(base)
        other.__dict__.pop("name", None)  # the name is cached per instance; this copy is mutated behind its back
        value = "sm80" if f.name == "arch" else _perturbed(getattr(base, f.name))
        object.__setattr__(other, f.name, value)
        assert other.name != base.name, f"field {f.name} does not show in {base.name}"


@pytest.mark.parametrize("change, match", [
    (dict(qk="i4"), "qk must be i8"), (dict(pv="e5m2"), "pv must be one of"), (dict(pv="bf16"), "pv must be one of"),
    (dict(o="f32"), "o must be one of"), (dict(d=96), "d must be one of"), (dict(d=512), "d must be one of"),
    (dict(m=64), "m must be 128 or 192"), (dict(m=256), "m must be 128 or 192"), (dict(n=64), "n must be 128"),
    (dict(n=256), "n must be 128"), (dict(s=1), "s must be"), (dict(s=5), "s must be"),
    (dict(qg="row"), "qg in"), (dict(kg="warp"), "kg in"), (dict(kg="row"), "kg in"),
])
def test_invalid_parameters_are_rejected_with_the_reason(change, match):
    with pytest.raises(InvalidVariant, match=match):
        _base(**change)


@pytest.mark.parametrize("arch", [a for a in ARCHES if a != "sm90a"])
def test_other_arches_are_rejected_naming_the_missing_feature(arch):
    with pytest.raises(InvalidVariant, match="wgmma|tma"):
        _base(arch=arch)


def test_invalid_variant_is_a_value_error_with_a_message():
    with pytest.raises(ValueError) as e:
        _base(d=96)
    assert isinstance(e.value, InvalidVariant) and "96" in str(e.value)


@pytest.mark.parametrize("arch", list(ARCHES))
def test_only_sm90a_has_variants(arch):
    specs = enumerate_variants(arch)
    assert bool(specs) == (arch == "sm90a") == ARCHES[arch].has(WGMMA, TMA)
    assert select([arch], "attn_wgmma_*") == specs


def test_enumeration_is_the_whole_declared_space_times_the_schedules():
    """Per P.V format, with two consumer warpgroups (m=128) at d 64 / 128: every combination of tile,
    scale-granularity pair, output dtype, causal and schedule is enumerated, except where it does not fit shared
    memory: FP16 P.V with the MMA row sum (a 16 KB slab of ones per stage) at d=128 with four stages. No other
    declared combination is dropped, and the drop names shared memory."""
    specs = enumerate_variants("sm90a")
    names = {s.name for s in specs}
    two_wg_tiles = [t for t in TILES if t[0] == 128]
    for pv in PV_FORMATS:
        mine = [s for s in specs if s.pv == pv and s.m == 128 and s.d != 256]
        schedules = {_schedule(s) for s in mine}
        assert {(s.m, s.n, s.s) for s in mine} == set(two_wg_tiles)
        assert {(s.qg, s.kg) for s in mine} == set(GRANULARITY_PAIRS)
        assert {s.d for s in mine} == {64, 128} and {s.o for s in mine} == set(OUT_TYPES)
        # e4m3 and f16 sum P on the MMA; i8 with integer dot products over its packed P
        assert ("rowsum", "dp4a" if pv == "i8" else "mma") in {kv for sch in schedules for kv in sch}
        template, dropped = mine[0], []
        for d, (m, n, st), (qg, kg), o, causal, sch in itertools.product(
                (64, 128), two_wg_tiles, GRANULARITY_PAIRS, OUT_TYPES, (False, True), schedules):
            change = dict(d=d, m=m, n=n, s=st, qg=qg, kg=kg, o=o, causal=causal, **dict(sch))
            try:
                spec = dataclasses.replace(template, **change)
            except InvalidVariant as e:
                assert "shared memory" in str(e), (change, e)
                dropped.append(change)
                continue
            assert spec.name in names, spec.name
        assert all((pv, c["d"], c["s"], c["rowsum"]) == ("f16", 128, 4, "mma") for c in dropped), dropped
        assert bool(dropped) == (pv == "f16")
    assert {(s.qk, s.pv) for s in specs} == {("i8", "e4m3"), ("i8", "f16"), ("i8", "i8")}


def test_int8_pv_runs_one_block_at_a_time_with_its_dp4a_row_sum():
    """pv=i8 (INT8 P.V): the one-block schedule only (its registers), d 64 / 128 (no d=256 kernel), and the dp4a row
    sum, which no other format has (integer wgmma has no N = d + 8 for the ones columns). Each wrong pairing is
    refused naming what is wrong; the enumeration has exactly the valid ones."""
    i8 = [s for s in enumerate_variants("sm90a") if s.pv == "i8"]
    assert i8 and {(s.overlap, s.pingpong, s.rowsum) for s in i8} == {(False, False, "dp4a")}
    assert {s.d for s in i8} == {64, 128} and {s.m for s in i8} == {128, 192}
    assert {s.v_mode for s in i8} == {"i8w"} and all(s.ones_bytes == 0 for s in i8)
    base = i8[0]
    for change, words in (({"rowsum": "mma"}, "dp4a"), ({"overlap": True}, "seq"), ({"d": 256}, "d <= 128")):
        with pytest.raises(InvalidVariant, match=words):
            dataclasses.replace(base, **change)
    e4m3 = next(s for s in enumerate_variants("sm90a") if s.pv == "e4m3")
    with pytest.raises(InvalidVariant, match="dp4a"):
        dataclasses.replace(e4m3, rowsum="dp4a")
    emu = base.emulation()
    assert (emu["pv"], emu["row_sum"], emu["pv_accum"]) == ("int8", "pv", "fp32")


def test_head_dim_256_has_exactly_the_one_block_schedules_that_fit():
    """d = 256: O alone is 128 registers per thread, so only one block at a time with two consumer warpgroups fits
    240: FP16 P.V (~204; overlapped ~248, where ptxas spills 144 bytes) with two 96 KB stages, and e4m3 P.V (~220)
    with its two-level tile in two 128-channel halves, two or three 64 KB stages with FADD row sums, two with the
    MMA row sum (the second half's MMA reads the ones rows after V^T: N = 136, ~224 registers; a third stage's
    ones rows no longer fit shared memory). FP16 P.V has no MMA row sum here: N would be 264."""
    d256 = [s for s in enumerate_variants("sm90a") if s.d == 256]
    assert {(s.pv, s.m, s.n, s.s, s.overlap, s.pingpong, s.rowsum) for s in d256} == \
        {("f16", 128, 128, 2, False, False, "fma"), ("e4m3", 128, 128, 2, False, False, "fma"),
         ("e4m3", 128, 128, 3, False, False, "fma"), ("e4m3", 128, 128, 2, False, False, "mma")}
    assert len(d256) == 4 * len(GRANULARITY_PAIRS) * len(OUT_TYPES) * 2
    assert all(s.reg_estimate() <= 240 and s.smem_bytes() <= s.target.smem_per_block for s in d256)
    assert {(s.pv, s.pv_halves) for s in d256} == {("f16", 1), ("e4m3", 2)}
    f16 = next(s for s in d256 if s.pv == "f16")
    e4m3 = next(s for s in d256 if s.pv == "e4m3" and s.rowsum == "fma" and s.s == 2)
    e4m3_mma = dataclasses.replace(e4m3, rowsum="mma")
    assert e4m3_mma.reg_estimate() == e4m3.reg_estimate() + 4 and e4m3_mma.emulation()["row_sum"] == "pv"
    for base, change, match in ((f16, dict(overlap=True), "registers"), (e4m3, dict(overlap=True), "registers"),
                                (f16, dict(rowsum="mma"), "N = 264"), (e4m3_mma, dict(s=3), "shared memory"),
                                (f16, dict(m=192, qg="thread", kg="thread"), "shared memory"),  # and 160 registers
                                (f16, dict(s=3), "shared memory"), (e4m3, dict(s=4), "shared memory")):
        with pytest.raises(InvalidVariant, match=match):
            dataclasses.replace(base, **change)


def test_three_consumer_warpgroups_exist_exactly_where_the_registers_fit():
    """m=192 (three consumers, 160 registers each after the producer's 24): every declared combination whose
    register estimate fits and whose Q scale groups divide the padding, and no other."""
    specs = enumerate_variants("sm90a")
    three = {s.name for s in specs if s.m == 192}
    expected = set()
    for s in specs:
        if s.m != 128:
            continue
        for m, n, stages in TILES:
            if m == 192 and stages == s.s:
                try:
                    expected.add(dataclasses.replace(s, m=192).name)
                except InvalidVariant:
                    pass
    assert three == expected and three
    for s in specs:
        if s.m == 192:
            assert s.consumers == 3 and s.threads == 512 and s.reg_estimate() <= 160 and s.qg != "block"
    # what fits: d=64 with FP16 P.V, and one block at a time (no overlap) at both head dims and formats
    assert {(s.pv, s.d, s.overlap) for s in specs if s.m == 192} == \
        {("f16", 64, True), ("f16", 64, False), ("e4m3", 64, False), ("f16", 128, False), ("e4m3", 128, False),
         ("i8", 64, False), ("i8", 128, False)}


def test_every_variant_fits_sm90a_and_its_tiles_divide_the_padding():
    for s in enumerate_variants("sm90a"):
        assert s.smem_bytes() <= ARCHES["sm90a"].smem_per_block
        assert s.m % WARPGROUP_ROWS == 0 and s.n == N_ALIGN
        assert N_ALIGN % s.q_groups.tile == 0  # (a 192-row CTA tiles the padding with a partial last CTA)
        assert s.consumers == s.m // WARPGROUP_ROWS and s.threads == 128 * (s.consumers + 1)
        ctx = s.context()
        assert ctx["threads"] == s.threads and ctx["smem"] == s.smem_bytes()
        assert (ctx["q_tile"], ctx["q_sub"], ctx["k_tile"], ctx["k_sub"]) == \
            (s.q_groups.tile, s.q_groups.sub, s.k_groups.tile, s.k_groups.sub)


def test_shared_memory_grows_with_stages_and_head_dim():
    assert _base(s=2).smem_bytes() < _base(s=3).smem_bytes() < _base(s=4).smem_bytes()
    assert _base(d=64).smem_bytes() < _base(d=128).smem_bytes()
    # fp16 V doubles the V tile of every stage
    e4m3, f16 = _base(rowsum="fma"), _base(rowsum="fma", pv="f16")
    assert f16.smem_bytes() - e4m3.smem_bytes() == f16.s * f16.n * f16.d


def test_fp16_pv_reads_the_fp16_v_image_and_its_row_sum_ones_take_a_whole_slab():
    assert _base().v_mode == "e4m3w" and _base(rowsum="fma", pv="f16").v_mode == "f16w"
    assert _base().threads == 384  # one producer and two consumer warpgroups
    # The MMA row sum's ones per stage: e4m3, 8 rows of n bytes under V^T; fp16, one 64-channel slab of the
    # MN-major image (n rows of 128 bytes), which the descriptor's slab stride reaches as columns d..d+7.
    for pv, ones in (("e4m3", 8 * N_ALIGN), ("f16", 128 * N_ALIGN)):
        mma, fma = _base(pv=pv, rowsum="mma"), _base(pv=pv, rowsum="fma")
        assert mma.ones_bytes == ones and fma.ones_bytes == 0
        assert mma.smem_bytes() - fma.smem_bytes() == mma.s * ones
    # fp16 keeps the 8 row-sum columns in O itself: four more registers per thread
    assert _base(pv="f16", rowsum="mma").reg_estimate() - _base(pv="f16", rowsum="fma").reg_estimate() == 4
    assert _base(pv="f16", rowsum="mma").emulation()["row_sum"] == "pv"


# (qg, kg) -> the SageAttention2 emulation's granularity (sagegen.reference.sage2_attention), warp_m = 16 rows
EMULATION = {("block", "block"): "block", ("warp", "block"): "warp", ("thread", "thread"): "thread"}


@pytest.mark.parametrize("qg, kg", GRANULARITY_PAIRS)
def test_scale_groups_are_the_emulations(qg, kg):
    """The GPU tests compare each variant with sage2_attention(granularity, block_m=m, warp_m=16, block_n=n): the
    kernel's groups must be exactly the emulation's."""
    spec = _base(qg=qg, kg=kg)
    gran = EMULATION[(qg, kg)]
    assert spec.q_groups == q_groups(gran, spec.m, 16)
    assert spec.k_groups == k_groups(gran, spec.n)


def test_every_variant_names_its_emulation():
    """spec.emulation(): the sage2_attention arguments the GPU tests and scripts/wgmma_check.py compare against.
    Same scale groups as the kernel, a block_m the emulation accepts (dividing the padding, also for m=192), the
    variant's P.V format and row sum."""
    for s in enumerate_variants("sm90a"):
        kw = s.emulation()
        assert kw["granularity"] == EMULATION[(s.qg, s.kg)] and kw["block_n"] == s.n and kw["warp_m"] == 16
        assert q_groups(kw["granularity"], kw["block_m"], 16) == s.q_groups
        assert k_groups(kw["granularity"], kw["block_n"]) == s.k_groups
        assert N_ALIGN % kw["block_m"] == 0 and kw["block_m"] % 16 == 0
        assert (kw["pv"], kw["pv_accum"]) == ({"e4m3": "fp8", "f16": "fp16", "i8": "int8"}[s.pv], "fp32")
        # the MMA's ones columns and dp4a both sum the quantized P, as the emulation's ones column does
        assert kw["row_sum"] == ("p" if s.rowsum == "fma" else "pv") and kw["smooth_k"] and kw["qk_format"] == "int8"


def test_thread_granularity_uses_the_wgmma_fragment_layout():
    spec = _base(qg="thread", kg="thread")
    assert (spec.q_groups.tile, spec.q_groups.sub) == (16, 8)  # a warp's 16 rows, 8 row groups of its threads
    assert (spec.k_groups.tile, spec.k_groups.sub) == (spec.n, 4)
