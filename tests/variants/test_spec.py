"""Properties every kernel family's spec must have: the name spells every parameter and maps back to the spec."""
import copy
import dataclasses
import fnmatch

import pytest

from sagegen.arch import ARCHES, DEFAULT_ARCHES, WGMMA
from sagegen.errors import InvalidVariant
from sagegen.variants import FAMILIES, enumerate_all, select, spec_from_name
from sagegen.variants.quant import QuantSpec
from sagegen.variants.spec import KernelSpec, prefix

ALL_ARCHES = tuple(ARCHES)
FAMILY_NAMES = sorted(FAMILIES)


def _variants(family: str, arches=ALL_ARCHES):
    return [s for a in arches for s in FAMILIES[family][1](a)]


def _enumerated_values(family: str) -> dict[str, list]:
    """Every value each field takes anywhere in the family's enumerated space (all arches)."""
    values: dict[str, set] = {}
    for spec in _variants(family):
        for f in dataclasses.fields(spec):
            values.setdefault(f.name, set()).add(getattr(spec, f.name))
    return {k: sorted(v, key=repr) for k, v in values.items()}


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("arch", ALL_ARCHES)
def test_family_has_variants_exactly_on_the_arches_with_its_features(family, arch):
    cls, enumerate_variants = FAMILIES[family]
    if ARCHES[arch].has(*cls.requires):
        assert enumerate_variants(arch), f"{family} enumerates nothing for {arch}"
    else:
        assert enumerate_variants(arch) == [], f"{family} enumerates variants for {arch}, which lacks {cls.requires}"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_family_has_variants_on_some_default_arch(family):
    assert any(FAMILIES[family][1](a) for a in DEFAULT_ARCHES), f"{family} enumerates nothing anywhere"


def test_which_arches_each_family_covers():
    def arches(family):
        return [a for a in ALL_ARCHES if FAMILIES[family][1](a)]

    assert arches("quant") == arches("attn_mma") == list(ALL_ARCHES)  # every arch has a SageAttention kernel
    assert arches("attn_wgmma") == ["sm90a"]


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_changing_any_single_parameter_changes_the_name(family):
    values = _enumerated_values(family)
    exercised: dict[str, int] = {f: 0 for f in values}
    for base in _variants(family, ("sm90a",)):
        for field_name, alternatives in values.items():
            for alt in alternatives:
                if alt == getattr(base, field_name):
                    continue
                try:
                    other = dataclasses.replace(base, **{field_name: alt})
                except InvalidVariant:
                    continue
                assert other.name != base.name, f"{field_name}={alt!r} does not show in {base.name}"
                exercised[field_name] += 1
    # Coupled fields (m with w) may have no valid single change; the next test covers every field regardless.
    assert sum(exercised.values()) > 0, "no single-parameter change gave a valid variant"


def _perturbed(value, field_name):
    if field_name == "arch":
        return "sm80" if value != "sm80" else "sm89"
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    return value + "x"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_field_shows_in_the_name_even_single_valued_ones(family):
    # Fields pinned to one value today (e.g. attn_mma's qk=i8) must still be spelled: bypass validation and
    # change each field's value directly.
    base = _variants(family, ("sm90a",))[0]
    for f in dataclasses.fields(base):
        other = copy.copy(base)
        other.__dict__.pop("name", None)  # the name is cached per instance; this copy is mutated behind its back
        object.__setattr__(other, f.name, _perturbed(getattr(base, f.name), f.name))
        assert other.name != base.name, f"field {f.name} does not show in {base.name}"


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_enumerated_name_maps_back_to_its_spec(family):
    for spec in _variants(family):
        assert spec_from_name(spec.name) == spec
        assert type(spec).from_name(spec.name) == spec


def test_names_are_unique_across_all_families_and_arches():
    names = [s.name for s in enumerate_all(ALL_ARCHES)]
    assert len(names) == len(set(names))


def test_name_starts_with_family_and_arch_and_has_no_empty_token():
    for spec in enumerate_all(ALL_ARCHES):
        assert spec.name.startswith(f"{spec.family}_{spec.arch}_")
        assert "" not in spec.name.split("_")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_truncated_and_extended_names_are_rejected(family):
    name = _variants(family, ("sm90a",))[0].name
    tokens = name.split("_")
    for cut in range(len(family.split("_")) + 1, len(tokens)):
        with pytest.raises(ValueError):
            spec_from_name("_".join(tokens[:cut]))
    for extra in ("_x", "_d128", "_"):
        with pytest.raises(ValueError):
            spec_from_name(name + extra)


@pytest.mark.parametrize("bad, why", [
    ("quant_sm90a_op_qkv_x_bf16_v_e4m3t_d0128", "leading zero"),
    ("quant_sm90a_op_qkv_x_bf16_v_e4m3t_d+128", "sign"),
    ("quant_sm90_op_qkv_x_bf16_v_e4m3t_d128", "non-canonical arch"),
    ("quant_12.0_op_qkv_x_bf16_v_e4m3t_d128", "arch spelled as a version"),
    ("quant_sm90a_x_bf16_op_qkv_v_e4m3t_d128", "fields out of order"),
    ("quant_sm90a_op_qkv_x_bf16_v_e4m3t_h128", "wrong prefix"),
    ("quant_sm90a_op_qkv_x_bf16_v_e4m3t_dabc", "non-integer"),
    ("QUANT_sm90a_op_qkv_x_bf16_v_e4m3t_d128", "upper case family"),
    ("quant_sm90a_op_qkv_x_f32_v_e4m3t_d128", "invalid dtype"),
    ("flash_sm90a_op_qkv_x_bf16_v_e4m3t_d128", "unknown family"),
    ("quant_sm90a_op__x_bf16_v_e4m3t_d128", "empty value"),
    ("quant__op_qkv_x_bf16_v_e4m3t_d128", "empty arch"),
    ("quant_sm90a_op_qkv_x_bf16_v_e4m3t_d", "empty number"),
])
def test_non_canonical_or_invalid_names_are_rejected(bad, why):
    with pytest.raises(ValueError):
        spec_from_name(bad)


def test_invalid_parameters_raise_invalid_variant_which_is_a_value_error():
    with pytest.raises(InvalidVariant, match="d must be"):
        QuantSpec(arch="sm90a", op="qkv", x="bf16", v="none", d=96)
    assert issubclass(InvalidVariant, ValueError)


@pytest.mark.parametrize("field, value", [("d", "128"), ("d", True), ("x", "b_f16"), ("x", ""), ("op", 1)])
def test_wrongly_typed_fields_are_type_errors(field, value):
    params = dict(arch="sm90a", op="qkv", x="bf16", v="none", d=128)
    params[field] = value
    with pytest.raises(TypeError, match=field):
        QuantSpec(**params)


def test_non_canonical_arch_in_a_spec_is_invalid():
    with pytest.raises(InvalidVariant, match="not canonical"):
        QuantSpec(arch="sm90", op="qkv", x="bf16", v="none", d=128)


@dataclasses.dataclass(frozen=True)
class _NeedsWgmma(KernelSpec):
    d: int = prefix("d")
    family = "test_wgmma"
    requires = (WGMMA,)


def test_a_family_exists_only_on_arches_with_the_features_it_requires():
    assert _NeedsWgmma(arch="sm90a", d=64).name == "test_wgmma_sm90a_d64"
    for arch in ("sm80", "sm89", "sm100a", "sm120a"):
        with pytest.raises(InvalidVariant, match="wgmma"):
            _NeedsWgmma(arch=arch, d=64)


# --- selection by glob -------------------------------------------------------------------------------------------

def test_glob_selects_exactly_the_matching_variants():
    chosen = select(["sm120"], "*sm120a*d128*")
    everything = enumerate_all(["sm120a"])
    assert chosen and len(chosen) < len(everything)
    assert [s.name for s in chosen] == [s.name for s in everything if fnmatch.fnmatchcase(s.name, "*sm120a*d128*")]


def test_glob_on_another_arch_selects_nothing():
    assert select(["sm90a"], "*sm120a*") == []


def test_include_and_exclude_combine():
    chosen = select(["sm80"], "quant_*", "*bf16*")
    assert chosen
    assert all(s.family == "quant" and s.x != "bf16" for s in chosen)


def test_exclude_wins_over_include():
    assert select(["sm80"], "*_d64*", "*_d64*") == []


def test_several_include_globs_are_a_union():
    by_list = {s.name for s in select(["sm89"], ["quant_*_d64", "quant_*_d256"])}
    by_comma = {s.name for s in select(["sm89"], "quant_*_d64, quant_*_d256")}
    assert by_list == by_comma
    assert {s.d for s in select(["sm89"], ["quant_*_d64", "quant_*_d256"])} == {64, 256}


def test_select_without_filters_is_every_family_on_the_default_arches():
    assert len(select()) == len(enumerate_all(DEFAULT_ARCHES))
    assert {s.arch for s in select()} == set(DEFAULT_ARCHES)
