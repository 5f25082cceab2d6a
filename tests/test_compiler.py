"""NVRTC compiles every target on a machine with no GPU: cubins (validated by ptxas) and PTX (inspected)."""
import re
import struct

import pytest

from sagegen.arch import ARCHES, DEFAULT_ARCHES
from sagegen.compiler import compile_cubin, compile_ptx, option_list
from sagegen.errors import CompileError
from sagegen.render import render
from sagegen.toolchain import include_dirs, templates_dir
from sagegen.variants import FAMILIES, select, spec_from_name

EM_CUDA = 190
BROKEN = 'extern "C" __global__ void k(int* p) {\n  *p = undefined_thing;\n}\n'


def _check_cubin(cubin: bytes, arch: str):
    assert cubin[:4] == b"\x7fELF", "not an ELF file"
    assert cubin[4] == 2, "not ELF64"
    assert struct.unpack_from("<H", cubin, 18)[0] == EM_CUDA
    if cubin[8] == 8:  # CUDA ELF ABI v8 (NVRTC 13): bits 8..15 of e_flags hold the SM number
        a = ARCHES[arch]
        assert (struct.unpack_from("<I", cubin, 48)[0] >> 8) & 0xFF == a.major * 10 + a.minor


def _instructions(ptx: str) -> set[str]:
    """Opcodes of the PTX body, including those inside inline-asm braces and behind predicates."""
    return set(re.findall(r"^\s*\{?\s*(?:@!?%p\d+\s+)?([a-z][a-z0-9_.:]*)", ptx, re.M))


def _attn_spec_or_skip(arch: str):
    if "attn_mma" not in FAMILIES:
        pytest.skip("the attn_mma family is not registered yet")
    cls = FAMILIES["attn_mma"][0]
    if not (templates_dir() / cls.template).is_file():
        pytest.skip(f"template templates/{cls.template} does not exist yet")
    specs = select([arch], f"attn_mma_{arch}_*_acc_f32_o_bf16_d64_m64_n64_w4_s2_*qg_thread_kg_thread_causal")
    assert specs, f"no small attn_mma variant on {arch}"
    return specs[0]


def test_options_target_the_arch_and_use_the_installed_headers():
    opts = option_list(ARCHES["sm120a"])
    assert "-arch=sm_120a" in opts and "-std=c++17" in opts and "--device-as-default-execution-space" in opts
    assert [o[2:] for o in opts if o.startswith("-I")] == list(include_dirs())


# --- quantization family: every target ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch", DEFAULT_ARCHES)
def test_quant_compiles_to_a_cubin_for_the_arch(arch):
    spec = spec_from_name(f"quant_{arch}_op_qkv_x_bf16_v_e4m3t_d128")
    _check_cubin(compile_cubin(spec.name, render(spec), arch), arch)


@pytest.mark.parametrize("arch", DEFAULT_ARCHES)
def test_quant_ptx_holds_int8_rounding_and_fp8_conversion(arch):
    spec = spec_from_name(f"quant_{arch}_op_qkv_x_bf16_v_e4m3t_d128")
    ptx = compile_ptx(spec.name, render(spec), arch)
    ops = _instructions(ptx)
    assert f".target {ARCHES[arch].nvrtc_arch}" in ptx
    assert f".entry {spec.name}(" in ptx
    # int8 quantization: round half to even by adding 1.5 * 2^23 (no cvt), bytes packed by permutes; NaN-keeping amax
    assert "add.rn.f32" in ops and "0f4B400000" in ptx and "prmt.b32" in ops and "max.NaN.f32" in ptx
    assert "cvt.rni.s32.f32" not in ops
    hw_e4m3 = "cvt.rn.satfinite.e4m3x2.f32" in ops
    # The e4m3 convert instruction exists from sm89 on; older targets get cuda_fp8.h's software path.
    assert hw_e4m3 == ARCHES[arch].has("mma_e4m3")


def test_quant_without_fp8_v_has_no_fp8_conversion():
    spec = spec_from_name("quant_sm90a_op_qkv_x_f16_v_f16_d64")
    ops = _instructions(compile_ptx(spec.name, render(spec), "sm90a"))
    assert "add.rn.f32" in ops and "prmt.b32" in ops
    assert not any("e4m3" in op for op in ops)


# --- attention family (skipped until its template exists) -------------------------------------------------------

ATTN_INSTRUCTIONS = (
    "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32",  # Q.K^T in int8
    "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",  # P.V in fp16, fp32 accumulate
)


@pytest.mark.parametrize("arch", DEFAULT_ARCHES)
def test_attn_mma_compiles_to_a_cubin_for_the_arch(arch):
    spec = _attn_spec_or_skip(arch)
    _check_cubin(compile_cubin(spec.name, render(spec), arch), arch)


@pytest.mark.parametrize("arch", ["sm80", "sm120a"])
def test_attn_mma_ptx_holds_int8_and_fp16_mma_ldmatrix_and_cp_async(arch):
    spec = _attn_spec_or_skip(arch)
    ptx = compile_ptx(spec.name, render(spec), arch)
    ops = _instructions(ptx)
    for instr in ATTN_INSTRUCTIONS:
        assert instr in ops, instr
    assert any(op.startswith("ldmatrix.sync.aligned") for op in ops)
    assert any(op.startswith("cp.async.cg.shared.global") for op in ops)
    assert "cp.async.wait_group" in ops or any(op.startswith("cp.async.wait") for op in ops)


def test_attn_wgmma_row_max_runs_on_the_integer_pipe():
    """The wgmma family's scores are biased floats whose bit patterns order like int32 (softmax.cuh,
    kOrderedBits): their row max is `max.s32` (ptxas fuses pairs into sm_90's three-input VIMNMX3), not one
    `max.f32` per score. The float maxima left are the quad reduction and the running max (2 rows x 2)."""
    spec = spec_from_name("attn_wgmma_sm90a_qk_i8_pv_e4m3_o_bf16_d128_m192_n128_s2_seq_free_rs_mma_"
                          "qg_thread_kg_thread_causal")
    ptx = compile_ptx(spec.name, render(spec), spec.arch)
    int_max = len(re.findall(r"^\s*max\.s32", ptx, re.M))
    float_max = len(re.findall(r"^\s*max\.f32", ptx, re.M))
    assert int_max >= 2 * (2 * spec.n // 8 - 1), (int_max, float_max)  # 2 rows x (32 scores - 1) per thread
    assert float_max <= 8, (int_max, float_max)


def test_attn_wgmma_int8_pv_merges_its_integer_tile_without_flushing_denormals():
    """pv=i8 (kernel.cuh kPvI8): the u8 x u8 P.V wgmma, dp4a row sums, and O's merge as non-flushing FMAs (the
    int32 sums are read as denormal floats; an ftz FMA would zero them): one per output element of a thread."""
    spec = spec_from_name("attn_wgmma_sm90a_qk_i8_pv_i8_o_bf16_d128_m192_n128_s2_seq_free_rs_dp4a_"
                          "qg_thread_kg_thread_full")
    ptx = compile_ptx(spec.name, render(spec), spec.arch)
    assert "wgmma.mma_async.sync.aligned.m64n128k32.s32.u8.u8" in ptx
    assert len(re.findall(r"^\s*dp4a\.u32\.u32", ptx, re.M)) >= spec.n // 8  # the thread's 4 x 4 packed registers
    assert len(re.findall(r"^\s*fma\.rn\.f32", ptx, re.M)) >= spec.d // 2  # the merge: d/2 O elements per thread


# --- failures ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("compile_fn", [compile_cubin, compile_ptx], ids=["cubin", "ptx"])
def test_compile_error_names_variant_file_and_carries_the_nvrtc_log(compile_fn, tmp_path):
    path = tmp_path / "sm80" / "quant_broken.cu"
    with pytest.raises(CompileError) as e:
        compile_fn("quant_broken", BROKEN, "sm80", str(path))
    err = e.value
    assert err.variant == "quant_broken" and err.source_path == str(path)
    assert f"{path}(2): error" in err.log and "undefined_thing" in err.log
    assert "quant_broken" in str(err) and str(path) in str(err) and "undefined_thing" in str(err)


def test_compile_accepts_any_arch_spelling():
    spec = spec_from_name("quant_sm120a_op_stats_x_f16_v_none_d64")
    _check_cubin(compile_cubin(spec.name, render(spec), "12.0"), "sm120a")
