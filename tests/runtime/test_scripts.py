"""The GPU scripts' CPU-checkable parts: scripts/bench.py's arithmetic, table and chart, the variants
scripts/sanitize_small.py picks, the host-overhead scripts' command lines, and the sources
scripts/probe_wgmma.py compiles, the kernels scripts/wgmma_interference.py times."""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tops():
    bench = load("bench")
    # 4 * 4 * 32 * 8192^2 * 128 = 4.398e12 flop in 10 ms: 439.8 TOPS; causal counts half the work
    assert bench.tops(4, 32, 8192, 128, False, 10.0) == pytest.approx(439.80, rel=1e-4)
    assert bench.tops(4, 32, 8192, 128, True, 5.0) == pytest.approx(439.80, rel=1e-4)


def test_quant_bytes():
    bench = load("bench")
    b, h, n, d = 4, 32, 8192, 128
    el = b * h * n * d
    got = bench.quant_bytes(b, h, h, n, n, d, in_bytes=2, v_copy=True, q_scales=n // 32, k_scales=n // 64,
                            stats_splits=16)
    stats = el * 2 + 2 * b * h * 16 * d * 4
    read, write = 3 * el * 2, 2 * el + el * 2 + b * h * (n // 32 + n // 64) * 4
    assert got == stats + read + write
    # fp16 V read in place: V is neither read nor written by the qkv pass
    no_v = bench.quant_bytes(b, h, h, n, n, d, in_bytes=2, v_copy=False, q_scales=n // 32, k_scales=n // 64,
                             stats_splits=16)
    assert got - no_v == el * 2 + el * 2
    # FP8 V (the wgmma family): the stats pass reads V too and writes its amax partials; V goes out as 1 byte
    fp8 = bench.quant_bytes(b, h, h, n, n, d, in_bytes=2, v_copy=True, q_scales=n // 32, k_scales=n // 64,
                            stats_splits=16, v_fp8=True)
    assert fp8 - got == (el * 2 + 2 * b * h * 16 * d * 4) - el + b * h * d * 4
    # odd N and d are padded in the int8 buffers
    assert bench.quant_bytes(1, 1, 1, 1, 1, 72, in_bytes=2, v_copy=False, q_scales=4, k_scales=2,
                             stats_splits=1) == 72 * 2 + 2 * 128 * 4 + 2 * 72 * 2 + 2 * 128 * 128 + 6 * 4


ROWS = [
    {"d": 128, "n": 8192, "causal": False, "method": "flash", "ms": 1.0, "tops": 400.0},
    {"d": 128, "n": 8192, "causal": False, "method": "sage1-triton", "ms": 1.0, "tops": 420.0},
    {"d": 128, "n": 8192, "causal": False, "method": "sagegen-kernel", "ms": 1.0, "tops": 520.0,
     "variant": "attn_mma_sm90a_qk_i8_pv_f16_acc_f32_o_bf16_d128_m128_n32_w4_s2_b1_qg_warp_kg_block_full"},
    {"d": 128, "n": 8192, "causal": False, "method": "sagegen-e2e", "ms": 1.0, "tops": 483.0, "rel_l1": 0.0071,
     "variant": "attn_mma_sm90a_qk_i8_pv_f16_acc_f32_o_bf16_d128_m128_n32_w4_s2_b1_qg_warp_kg_block_full"},
    {"d": 128, "n": 8192, "causal": False, "method": "cudnn", "ms": None, "tops": None, "error": "x"},
    {"d": 64, "n": 1024, "causal": True, "method": "flash", "ms": 1.0, "tops": 100.0},
]


def test_format_table():
    bench = load("bench")
    text = bench.format_table(ROWS, [{"d": 128, "n": 8192, "us": 300.0, "bytes": 9e8, "gbps": 2500.0,
                                      "pct_of_copy": 83.3}], 3000.0)
    lines = text.splitlines()
    row = next(line for line in lines if line.startswith(" 128  False   8192"))
    assert "520.0" in row and "483.0" in row and "1.15" in row and "0.0071" in row and "m128_n32_w4" in row
    assert "copy ceiling 3000 GB/s" in text and "83.3" in text
    assert any(line.startswith("  64   True   1024") for line in lines)


def test_plot(tmp_path):
    pytest.importorskip("matplotlib")
    bench = load("bench")
    bench.plot([r for r in ROWS if r.get("tops")], tmp_path / "b.png", "test")
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_bench_help(capsys):
    bench = load("bench")
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0 and "--variants" in capsys.readouterr().out


def test_sanitize_variants_cover_every_tile_and_granularity():
    san = load("sanitize_small")
    from sagegen.variants import select

    specs = san.pick_variants("sm90a", few=False)
    assert len({s.name for s in specs}) == len(specs) >= 8
    every = select(["sm90a"], "attn_mma_*")
    assert {(s.m, s.n, s.w, s.s, s.b) for s in specs} == {(s.m, s.n, s.w, s.s, s.b) for s in every}
    assert {s.qg for s in specs} == {"warp", "block", "thread"} and {s.acc for s in specs} == {"f32", "f16"}
    assert {(s.d, s.causal) for s in specs} == {(64, False), (64, True), (128, False), (128, True)}
    few = san.pick_variants("sm90a", few=True)
    assert len(few) == 4
    # every picked variant runs at least one case
    for spec in specs:
        assert any((c[5] <= 64) == (spec.d == 64) and c[7] == spec.causal for c in san.CASES), spec.name
    sys.modules.pop("_script_sanitize_small", None)


def test_sanitize_wgmma_variants_are_the_heuristic_choices_and_every_schedule():
    san = load("sanitize_small")
    from sagegen.runtime import registry
    from sagegen.quant_layout import padded_dim
    from sagegen.variants.attn_wgmma import enumerate_variants

    few = san.pick_wgmma_variants("sm90a", few=True)
    # 3 precisions x 3 d x causal, less balanced's d=256 (no INT8 P.V there: the accurate kernel, already in)
    assert len(few) == 16 and all(s.family == "attn_wgmma" for s in few)
    assert {s.pv for s in few} == {"e4m3", "f16", "i8"}
    for spec in few:  # the heuristic's choice for its (precision, d, causal)
        precision = {"e4m3": "fast", "i8": "balanced", "f16": "accurate"}[spec.pv]
        key = registry.make_key(arch="sm90a", dtype="bf16", out="bf16", d=spec.d, causal=spec.causal, nq=128,
                                nk=128, batch_heads=8, precision=precision)
        assert spec == registry.heuristic(key, family="attn_wgmma")
    specs = san.pick_wgmma_variants("sm90a", few=False)
    assert len({s.name for s in specs}) == len(specs) and {s.name for s in few} <= {s.name for s in specs}
    schedule = lambda s: (s.pv, s.m, s.s, s.overlap, s.pingpong, s.rowsum)  # noqa: E731
    assert {schedule(s) for s in specs} == {schedule(s) for s in enumerate_variants("sm90a")}
    assert {(s.d, s.causal) for s in specs} == {(d, c) for d in (64, 128, 256) for c in (False, True)}
    for spec in specs:  # some case runs it: its padded head dim and causality
        assert any(padded_dim(c[5]) == spec.d and c[7] == spec.causal for c in san.CASES), spec.name
    sys.modules.pop("_script_sanitize_small", None)


def test_host_overhead_cpu_runs(capsys):
    load("host_overhead_cpu").main(["--calls", "20"])
    out = capsys.readouterr().out
    assert "ops path" in out and "direct path" in out and "34 parameters" in out


def test_overhead_profile_help(capsys):
    with pytest.raises(SystemExit) as e:
        load("overhead_profile").main(["--help"])
    assert e.value.code == 0 and "--lse" in capsys.readouterr().out


PROBE_SPEC = "attn_wgmma_sm90a_qk_i8_pv_e4m3_o_bf16_d64_m128_n128_s3_ovl_free_rs_mma_qg_thread_kg_thread_full"
PROBE_SPEC_I8 = "attn_wgmma_sm90a_qk_i8_pv_i8_o_bf16_d64_m192_n128_s2_seq_free_rs_dp4a_qg_thread_kg_thread_full"


def test_probe_source_defines_each_probe_in_front_of_the_variant():
    probe = load("probe_wgmma")
    from sagegen.render import render
    from sagegen.variants import spec_from_name

    spec = spec_from_name(PROBE_SPEC)
    assert probe.probe_source(spec, "none") == render(spec)
    src = probe.probe_source(spec, "NO_EXP+NO_LOAD")
    assert src == "#define SAGEGEN_PROBE_NO_EXP\n#define SAGEGEN_PROBE_NO_LOAD\n" + render(spec)
    with pytest.raises(ValueError, match="NO_SUCH"):
        probe.probe_source(spec, "NO_EXP+NO_SUCH")


def test_every_probe_changes_the_compiled_kernel():
    """A probe whose hook moved or vanished would time the unchanged kernel and report a false finding: each one
    must have its #if in the headers and must change the PTX NVRTC makes. SPLIT_LOOP is checked on a d=128 FP8
    variant: the d=64 one already runs the two-halves loop; U8_F2IP on an INT8 P.V variant (it packs u8 P)."""
    probe = load("probe_wgmma")
    from sagegen.compiler import compile_ptx
    from sagegen.variants import spec_from_name

    templates = SCRIPTS.parent / "templates"
    headers = "".join(p.read_text() for p in templates.rglob("*.cuh"))
    strip = lambda ptx: "\n".join(l for l in ptx.splitlines() if not l.lstrip().startswith((".loc", "//", ".file")))
    base = {}
    for name in probe.PROBES:
        assert f"SAGEGEN_PROBE_{name}" in headers, name
        spec = spec_from_name(PROBE_SPEC.replace("_d64_", "_d128_") if name == "SPLIT_LOOP" else
                              PROBE_SPEC_I8 if name == "U8_F2IP" else PROBE_SPEC)
        if spec.name not in base:
            base[spec.name] = strip(compile_ptx(spec.name, probe.probe_source(spec, "none"), spec.arch))
        ptx = strip(compile_ptx(spec.name, probe.probe_source(spec, name), spec.arch))
        assert ptx != base[spec.name], f"probe {name} leaves {spec.name} unchanged"


def test_interference_kernels_run_what_their_names_say():
    """scripts/wgmma_interference.py: each bench_<MMA>_<ALU> kernel must contain exactly its warpgroups' work (a
    case that silently lost its MMAs or its exps would report a false interference figure)."""
    intf = load("wgmma_interference")
    from sagegen.compiler import compile_ptx

    ptx = compile_ptx("wgmma_interference", intf.SRC, "sm90a")
    parts = re.split(r"\.entry (bench_\d+_\d+)\(", ptx)  # [header, name, body, name, body, ...]
    bodies = dict(zip(parts[1::2], parts[2::2]))
    assert sorted(bodies) == sorted(f"bench_{m}_{a}" for m, a in intf.CASES)
    for (mma, alu), name in ((c, f"bench_{c[0]}_{c[1]}") for c in intf.CASES):
        body = bodies[name]
        # the accumulator's register list, then a descriptor (A from shared memory) or A's registers
        qk_ss = re.search(r"wgmma\.mma_async\S*s32\.s8\.s8\s*\{[^}]*\},\s*%rd", body)
        qk_rs = re.search(r"wgmma\.mma_async\S*s32\.s8\.s8\s*\{[^}]*\},\s*\{", body)
        pv = "f32.e4m3.e4m3" in body
        assert bool(qk_ss) == (mma in (1, 2)), name
        assert bool(qk_rs) == (mma in (3, 4)), name
        assert pv == (mma in (2, 3)), name
        assert ("ex2.approx.ftz.f32" in body) == (alu in (1, 3, 4)), name
        assert ("ex2.approx.f16x2" in body) == (alu == 7), name


def test_probes_compile(tmp_path):
    """scripts/probes/: one-off GPU probes kept with their raw results (their README); they must stay valid Python
    and name the raw output each one wrote."""
    import py_compile

    probes = Path(__file__).resolve().parents[2] / "scripts" / "probes"
    readme = (probes / "README.md").read_text()
    names = sorted(p.name for p in probes.glob("*.py"))
    assert names
    for name in names:
        py_compile.compile(str(probes / name), doraise=True, cfile=str(tmp_path / (name + "c")))
        assert f"`{name}`" in readme, name
