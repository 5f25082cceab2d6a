import pytest

from sagegen.arch import (ARCHES, DEFAULT_ARCHES, MMA_E4M3, MMA_I8, MMA_F16, MMA_NVFP4, TCGEN05, WGMMA,
                          arch_of_device, parse_arch)


@pytest.mark.parametrize("text", ["sm120", "sm_120a", "120", "12.0", "SM120A", "compute_120a", " sm120a "])
def test_every_spelling_of_sm120_parses_to_sm120a(text):
    assert parse_arch(text).name == "sm120a"


@pytest.mark.parametrize("text,name", [("80", "sm80"), ("8.6", "sm86"), ("sm_89", "sm89"), ("sm90", "sm90a"),
                                       ("9.0", "sm90a"), ("sm_100", "sm100a"), ("121", "sm121a")])
def test_hopper_and_blackwell_resolve_to_their_a_targets(text, name):
    assert parse_arch(text).name == name


@pytest.mark.parametrize("name", list(ARCHES))
def test_canonical_name_parses_to_itself(name):
    assert parse_arch(name) is ARCHES[name]


@pytest.mark.parametrize("text", ["sm75", "7.5", "sm_99", "hopper", "", "sm1200", "sm_120b"])
def test_unknown_arch_error_lists_every_known_arch(text):
    with pytest.raises(ValueError) as e:
        parse_arch(text)
    for known in ARCHES:
        assert known in str(e.value)


def test_non_string_arch_is_a_type_error():
    with pytest.raises(TypeError):
        parse_arch(90)


def test_arch_of_device_maps_compute_capability_and_rejects_unknown():
    assert arch_of_device(9, 0).name == "sm90a"
    assert arch_of_device(12, 0).name == "sm120a"
    with pytest.raises(ValueError, match="7.5"):
        arch_of_device(7, 5)


def test_feature_table_matches_the_verified_toolchain_facts():
    # ../shared/toolchain.md, "What each target accepts": checked through ptxas for each target.
    has = {name: ARCHES[name] for name in DEFAULT_ARCHES}
    assert all(a.has(MMA_I8, MMA_F16) for a in has.values())
    assert [n for n, a in has.items() if a.has(MMA_E4M3)] == ["sm89", "sm90a", "sm100a", "sm120a"]
    assert [n for n, a in has.items() if a.has(WGMMA)] == ["sm90a"]
    assert [n for n, a in has.items() if a.has(TCGEN05)] == ["sm100a"]
    assert [n for n, a in has.items() if a.has(MMA_NVFP4)] == ["sm120a"]


def test_nvrtc_target_matches_canonical_name():
    for a in ARCHES.values():
        assert a.nvrtc_arch == "sm_" + a.name[2:]
        assert a.compute_capability == (a.major, a.minor)


def test_consumer_blackwell_has_less_shared_memory_than_hopper():
    assert ARCHES["sm120a"].smem_per_block < ARCHES["sm90a"].smem_per_block
