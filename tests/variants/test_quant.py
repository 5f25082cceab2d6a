import pytest

from sagegen.arch import DEFAULT_ARCHES
from sagegen.errors import InvalidVariant
from sagegen.quant_layout import HEAD_DIMS
from sagegen.variants.quant import CUDA_TYPES, V_MODES, QuantSpec, enumerate_variants


def test_name_spells_op_input_dtype_v_mode_and_head_dim_in_order():
    spec = QuantSpec(arch="sm90a", op="qkv", x="bf16", v="e4m3t", d=128)
    assert spec.name == "quant_sm90a_op_qkv_x_bf16_v_e4m3t_d128"


@pytest.mark.parametrize("arch", DEFAULT_ARCHES)
def test_qkv_is_enumerated_for_every_dtype_v_mode_and_head_dim(arch):
    got = {(s.x, s.v, s.d) for s in enumerate_variants(arch) if s.op == "qkv"}
    assert got == {(x, v, d) for x in CUDA_TYPES for v in V_MODES for d in HEAD_DIMS}


def test_v_image_mode_has_its_own_name():
    spec = QuantSpec(arch="sm90a", op="qkv", x="f16", v="e4m3w", d=64)
    assert spec.name == "quant_sm90a_op_qkv_x_f16_v_e4m3w_d64"
    assert QuantSpec.from_name(spec.name) == spec


def test_int8_v_image_mode_is_enumerated_with_its_own_name():
    spec = QuantSpec(arch="sm90a", op="qkv", x="bf16", v="i8w", d=128)
    assert spec.name == "quant_sm90a_op_qkv_x_bf16_v_i8w_d128"
    assert QuantSpec.from_name(spec.name) == spec
    assert "i8w" in V_MODES and spec in enumerate_variants("sm90a") and spec.min_blocks == 3


@pytest.mark.parametrize("arch", DEFAULT_ARCHES)
def test_variant_names_are_distinct(arch):
    names = [s.name for s in enumerate_variants(arch)]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("arch", DEFAULT_ARCHES)
def test_variant_count_per_arch(arch):
    specs = enumerate_variants(arch)
    # qkv: 2 dtypes x 6 V modes x 3 head dims; stats: 2 dtypes x (no V, 8-bit V) x 3 head dims
    assert sum(s.op == "qkv" for s in specs) == 2 * 6 * 3 and sum(s.op == "stats" for s in specs) == 2 * 2 * 3


def test_stats_pass_exists_only_without_v_or_for_fp8_v():
    stats = enumerate_variants("sm80")
    assert {s.v for s in stats if s.op == "stats"} == {"none", "e4m3t"}
    with pytest.raises(InvalidVariant, match="stats"):
        QuantSpec(arch="sm80", op="stats", x="f16", v="f16", d=64)
    with pytest.raises(InvalidVariant, match="stats"):  # the fp16 V image needs no V statistics either
        QuantSpec(arch="sm80", op="stats", x="f16", v="f16w", d=64)
    with pytest.raises(InvalidVariant, match="e4m3t"):  # the V image needs the same V amax: one stats variant
        QuantSpec(arch="sm80", op="stats", x="f16", v="e4m3w", d=64)
    with pytest.raises(InvalidVariant, match="e4m3t"):  # so does INT8 V (scale amax / 127)
        QuantSpec(arch="sm80", op="stats", x="bf16", v="i8w", d=128)


@pytest.mark.parametrize("field, value", [("op", "dequant"), ("x", "f32"), ("v", "e5m2"), ("d", 96), ("d", 512)])
def test_out_of_range_parameter_is_invalid(field, value):
    params = dict(arch="sm89", op="qkv", x="f16", v="none", d=64)
    params[field] = value
    with pytest.raises(InvalidVariant, match=field):
        QuantSpec(**params)


def test_context_maps_dtype_to_its_cuda_type():
    assert QuantSpec(arch="sm80", op="qkv", x="bf16", v="none", d=64).context()["x_type"] == "__nv_bfloat16"
    assert QuantSpec(arch="sm80", op="qkv", x="f16", v="none", d=64).context()["x_type"] == "__half"
