"""The short-sequence family's declared space and validity rules: attn_mma's tiles and checks, plus the input
dtype, the resident keys' shared memory and the prologue's thread map."""
import dataclasses

import pytest

from sagegen.arch import ARCHES, DEFAULT_ARCHES
from sagegen.errors import InvalidVariant
from sagegen.render import render
from sagegen.variants import attn_short, select, spec_from_name
from sagegen.variants.attn_short import MAX_KEYS, TILES, AttnShortSpec, enumerate_variants


def _base(arch="sm90a", **change) -> AttnShortSpec:
    (spec,) = select([arch], "attn_short_*_x_bf16_o_bf16_d128_m128_n64_w8_b1_qg_thread_kg_thread_full")
    return dataclasses.replace(spec, **change)


def test_name_spells_every_parameter():
    spec = _base()
    assert spec.name == ("attn_short_sm90a_qk_i8_pv_f16_acc_f32_x_bf16_o_bf16_d128_m128_n64_w8_b1"
                         "_qg_thread_kg_thread_full")
    assert spec_from_name(spec.name) == spec
    assert _base(x="f16").name != spec.name and _base(o="f16").name != spec.name


@pytest.mark.parametrize("arch", DEFAULT_ARCHES)
def test_every_arch_enumerates_the_declared_tiles_for_both_head_dims(arch):
    specs = enumerate_variants(arch)
    for d in (64, 128):
        assert {(s.m, s.n, s.w, s.b) for s in specs if s.d == d} == set(TILES[d]), d
    assert all(s.x == s.o and s.acc == "f32" for s in specs)  # what attention() asks of the family


def test_shares_attn_mma_scheme_and_emulation():
    spec = _base()
    base = spec.base
    assert base.family == "attn_mma" and (base.m, base.n, base.w, base.d) == (spec.m, spec.n, spec.w, spec.d)
    assert spec.q_groups == base.q_groups and spec.k_groups == base.k_groups
    assert spec.emulation() == base.emulation()


def test_shared_memory_sizes_are_checked_by_the_compiler():
    """The spec's sizes are what the kernel allocates: the rendered source asserts both against the C++ types
    (NVRTC rejects a mismatch; tests/test_build.py and CI compile the variants)."""
    spec = _base()
    assert spec.smem_bytes() == spec.m * spec.d + MAX_KEYS * spec.d * 3  # Q, int8 K and fp16 V of 128 keys
    src = render(spec)
    assert f"static_assert(Cfg::kSmemBytes == {spec.smem_bytes()}," in src
    assert f"== {spec.static_smem_bytes()}," in src and "sizeof(sagegen::attn::FusedScratch<" in src


def test_invalid_specs_raise(monkeypatch):
    with pytest.raises(InvalidVariant, match="x must be"):
        _base(x="f32")
    with pytest.raises(InvalidVariant):  # attn_mma's own rules apply (here: the tile shape)
        _base(m=96)
    # every arch's per-block shared memory holds the largest tile with its 128 resident keys ...
    small = min(ARCHES.values(), key=lambda a: a.smem_per_block)
    spec = _base(arch=small.name)
    assert spec.smem_bytes() + spec.static_smem_bytes() <= small.smem_per_block
    # ... and a spec that would not fit is refused before it exists
    monkeypatch.setattr(attn_short, "MAX_KEYS", 1024)
    with pytest.raises(InvalidVariant, match="shared memory"):
        dataclasses.replace(spec)
