"""spec -> cubin through the same path the runtime and `sagegen build` use, with a real NVRTC compile."""
from sagegen.jit import cubin_for
from sagegen.render import render
from sagegen.variants import spec_from_name

SPEC = spec_from_name("quant_sm120a_op_stats_x_bf16_v_e4m3t_d128")


def test_first_call_compiles_second_is_a_cache_hit(tmp_path, sagegen_cache_dir):
    cubin, built = cubin_for(SPEC, out_dir=tmp_path)
    assert built and cubin[:4] == b"\x7fELF"
    assert cubin_for(SPEC, out_dir=tmp_path) == (cubin, False)
    assert len(list(sagegen_cache_dir.rglob(f"{SPEC.name}-*.cubin"))) == 1


def test_generated_source_is_written_where_the_compile_error_would_point(tmp_path):
    cubin_for(SPEC, out_dir=tmp_path)
    assert (tmp_path / "sm120a" / f"{SPEC.name}.cu").read_text() == render(SPEC)


def test_truncated_cubin_is_recompiled(tmp_path, sagegen_cache_dir):
    cubin, _ = cubin_for(SPEC, out_dir=tmp_path)
    (path,) = sagegen_cache_dir.rglob(f"{SPEC.name}-*.cubin")
    path.write_bytes(cubin[: len(cubin) // 2])
    assert cubin_for(SPEC, out_dir=tmp_path) == (cubin, True)


def test_changed_source_gets_a_new_entry(tmp_path, sagegen_cache_dir):
    cubin_for(SPEC, out_dir=tmp_path)
    _, built = cubin_for(SPEC, out_dir=tmp_path, source=render(SPEC) + "\n// edited\n")
    assert built
    assert len(list(sagegen_cache_dir.rglob(f"{SPEC.name}-*.cubin"))) == 2
