"""The registry on the CPU: buckets, the heuristic for every arch, the JSON table (round trip, merge, corrupt
files), choosing with and without SDPA, and the autotuner's flow with timing mocked (fake GPU)."""
from __future__ import annotations

import json

import pytest
import torch

import sagegen
from sagegen.arch import ARCHES, DEFAULT_ARCHES
from sagegen.runtime import api, registry
from sagegen.runtime.registry import Choice, Key, make_key
from sagegen.variants.attn_mma import AttnMmaSpec
from sagegen.variants.attn_wgmma import AttnWgmmaSpec
from sagegen.variants.attn_wgmma import enumerate_variants as wgmma_variants

BF16, F16 = torch.bfloat16, torch.float16


def key(**kw) -> Key:
    base = dict(arch="sm90a", dtype="bf16", out="bf16", d=128, causal=False, nq=8192, nk=8192, batch_heads=128, gqa=1)
    base.update(kw)
    return make_key(**base)


# --- keys -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,b", [(0, 1), (1, 1), (2, 2), (3, 4), (17, 32), (128, 128), (1000, 1024), (4097, 8192),
                                 (32768, 32768)])
def test_bucket(n, b):
    assert registry.bucket(n) == b


def test_key_buckets_and_tag():
    k = key(nq=1000, nk=4097, batch_heads=96, gqa=32)
    assert (k.nq, k.nk, k.bh, k.gqa) == (1024, 8192, 128, registry.GQA_BUCKET_MAX)
    tags = {key().tag, key(causal=True).tag, key(d=64).tag, key(out="f16").tag, key(nq=100).tag, key(nk=100).tag,
            key(gqa=4).tag, key(batch_heads=8).tag, key(arch="sm80").tag, key(dtype="f16").tag,
            key(precision="accurate").tag, key(precision="balanced").tag}
    assert len(tags) == 12
    assert key().precision == registry.DEFAULT_PRECISION == "fast"
    assert registry.PRECISIONS == ("fast", "balanced", "accurate")
    with pytest.raises(ValueError, match="precision"):
        key(precision="turbo")


# --- heuristic --------------------------------------------------------------------------------------------------
ALL_TESTED_ARCHES = list(DEFAULT_ARCHES) + ["sm121a"]


def _has_fp8_family(arch: str) -> bool:
    return ARCHES[arch].has(*AttnWgmmaSpec.requires)


@pytest.mark.parametrize("arch", ALL_TESTED_ARCHES)
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("out", ["f16", "bf16"])
@pytest.mark.parametrize("precision", registry.PRECISIONS)
def test_heuristic_is_valid_everywhere(arch, d, causal, out, precision):
    k = key(arch=arch, d=d, causal=causal, out=out, precision=precision)
    for small in (None, 10_000):
        spec = registry.heuristic(k, sm_count=small)
        assert spec.arch == arch and spec.d == d and spec.causal == causal and spec.o == out
        assert (spec.qg, spec.kg) == ("thread", "thread")  # the most accurate, at equal speed
        assert spec.name in registry.candidates(k)
        if _has_fp8_family(arch):  # the warpgroup family: FP8 / INT8 / FP16 P.V for fast / balanced / accurate
            assert isinstance(spec, AttnWgmmaSpec)
            assert spec.pv == {"fast": "e4m3", "balanced": "i8", "accurate": "f16"}[precision]
            _check_wgmma_schedule_rule(spec, k, small_grid=small is not None)
        else:  # elsewhere both precisions are the fp32-accumulating mma.sync family
            assert isinstance(spec, AttnMmaSpec) and spec.acc == "f32"


def _check_wgmma_schedule_rule(spec, k, small_grid=False):
    """Among the per-thread-scale warpgroup candidates, the first (rows, stages, overlap, ping-pong, row sum) of
    WGMMA_PREFERRED[(pv, d, causal)] that exists is the one picked (on a grid too small to fill the GPU, the first
    128-row one)."""
    cands = [s for s in registry.candidate_specs(k) if isinstance(s, AttnWgmmaSpec) and (s.qg, s.kg) ==
             ("thread", "thread")]
    order = registry.WGMMA_PREFERRED[(spec.pv, spec.d, spec.causal)]
    if small_grid:
        order = [c for c in order if c[0] == 128] + [c for c in order if c[0] != 128]
    first = next(c for c in order if any((s.m, s.s, s.overlap, s.pingpong, s.rowsum) == c for s in cands))
    assert (spec.m, spec.s, spec.overlap, spec.pingpong, spec.rowsum) == first


@pytest.mark.parametrize("arch", ALL_TESTED_ARCHES)
@pytest.mark.parametrize("precision", registry.PRECISIONS)
def test_short_keys_run_attn_short_first(arch, precision):
    """nk <= 128 with nq <= SHORT_MAX_QUERIES and the output in the inputs' dtype: attn_short leads the candidates
    (the 8-warp tile, per-thread scales); otherwise it is not a candidate at all."""
    from sagegen.variants.attn_short import AttnShortSpec

    for d in (64, 128):
        for causal in (False, True):
            k = key(arch=arch, d=d, causal=causal, nq=registry.SHORT_MAX_QUERIES, nk=128, precision=precision)
            spec = registry.heuristic(k, sm_count=132)
            assert isinstance(spec, AttnShortSpec) and (spec.d, spec.causal, spec.x, spec.o) == (d, causal, "bf16",
                                                                                                 "bf16")
            assert (spec.m, spec.n, spec.w) == registry.SHORT_TILES[0] and (spec.qg, spec.kg) == ("thread", "thread")
            cands = registry.candidate_specs(k)
            n_short = sum(isinstance(c, AttnShortSpec) for c in cands)
            assert n_short and all(isinstance(c, AttnShortSpec) for c in cands[:n_short])
            for other in (key(arch=arch, d=d, causal=causal, nq=128, nk=129, precision=precision),
                          key(arch=arch, d=d, causal=causal, nq=2 * registry.SHORT_MAX_QUERIES, nk=128,
                              precision=precision),
                          key(arch=arch, d=d, causal=causal, nq=128, nk=128, out="f16", precision=precision)):
                assert not any(isinstance(c, AttnShortSpec) for c in registry.candidate_specs(other)), other


def test_short_keys_choose_sdpa_first_only_where_sdpa_may_run():
    """choose(): the cuDNN rule (SDPA_FASTER) precedes the heuristic for calls SDPA can compute; everything else
    with short keys (another output dtype, causal with Nq != Nk, SDPA not allowed) gets attn_short."""
    k = key(nq=100, nk=100, batch_heads=8)
    assert registry.choose(k, env="test-gpu", sm_count=132, sdpa_ok=True, allow_sdpa=True).kind == "sdpa"
    for kw in (dict(sdpa_ok=False), dict(sdpa_ok=True, allow_sdpa=False)):
        choice = registry.choose(k, env="test-gpu", sm_count=132, **kw)
        assert choice.kind == "kernel" and choice.spec.family == "attn_short", kw


@pytest.mark.parametrize("precision, pv, limits", [("fast", "e4m3", (2048, 4096)), ("accurate", "f16", (4096, 8192))])
def test_head_dim_256_runs_its_wgmma_kernel_and_cudnn_only_where_it_won(precision, pv, limits):
    """d = 256 on sm90a: the precision's wgmma kernel (FP8 P.V in channel halves, or FP16 P.V), cuDNN where it
    measured faster end to end and SDPA can compute the call."""
    rule = registry.SDPA_FASTER[("sm90a", precision)]
    assert (rule[(256, False)], rule[(256, True)]) == limits
    for causal, limit in zip((False, True), limits):
        for n in (1000, limit, 2 * limit, 1 << 20):
            k = key(d=256, nq=n, nk=n, causal=causal, precision=precision)
            kind = registry.choose(k, env="test-gpu", sm_count=132, sdpa_ok=True, allow_sdpa=True).kind
            assert kind == ("sdpa" if n <= limit else "kernel"), (n, causal)
            for kw in (dict(sdpa_ok=False), dict(sdpa_ok=True, allow_sdpa=False)):
                spec = registry.choose(k, env="test-gpu", sm_count=132, **kw).spec
                assert (spec.family, spec.d, spec.pv, spec.s, spec.overlap) == ("attn_wgmma", 256, pv, 2, False)


def test_only_sm90a_has_the_fp8_family():
    assert [a for a in ARCHES if _has_fp8_family(a)] == ["sm90a"]


def test_heuristic_tile_rule():
    acc = dict(arch="sm89", precision="accurate")  # the mma.sync family's rule (sm90a runs the wgmma family)
    big = registry.heuristic(key(**acc), sm_count=132)  # 128 heads x 64 tiles: a full grid
    # d=128 with 3 or 4 stages would leave sm89's 100 KB of shared memory one CTA per SM: the 2-stage tile
    assert (big.m, big.n, big.w, big.s) == (128, 32, 4, 2) and 2 * big.smem_bytes() <= 100 * 1024
    for arch, d in (("sm80", 128), ("sm89", 64), ("sm120a", 64)):  # where two 4-stage CTAs fit: the first tile
        spec = registry.heuristic(key(arch=arch, d=d, precision="accurate"), sm_count=132)
        assert (spec.m, spec.n, spec.w, spec.s) == registry.PREFERRED_TILES[0] == (128, 32, 4, 4), (arch, d)
    small = registry.heuristic(key(nq=256, batch_heads=8, **acc), sm_count=132)  # 8 x 2 CTAs of 128 rows
    assert small.m == 64
    assert registry.heuristic(key(nq=256, batch_heads=8, **acc)).m == 128  # unknown SM count: full-grid rule
    # the same rule serves "fast" where the arch has no FP8 family
    assert registry.heuristic(key(arch="sm89", nq=256, batch_heads=8), sm_count=132) == \
        registry.heuristic(key(nq=256, batch_heads=8, **acc), sm_count=132)


def test_wgmma_heuristic_small_grid_keeps_two_warpgroups():
    """FP8 d=128: three consumer warpgroups (192-row CTAs) on a full grid; a grid of 128-row tiles that does not
    fill the GPU keeps 128-row CTAs, the first two-warpgroup schedule of WGMMA_PREFERRED."""
    for causal in (False, True):
        big = registry.heuristic(key(causal=causal), sm_count=132)
        small = registry.heuristic(key(nq=256, batch_heads=8, causal=causal), sm_count=132)
        assert isinstance(big, AttnWgmmaSpec) and big.m == 192 and (big.qg, big.kg) == ("thread", "thread")
        _check_wgmma_schedule_rule(big, key(causal=causal))
        assert registry.heuristic(key(nq=256, batch_heads=8, causal=causal)) == big  # unknown SM count: full grid
        order = registry.WGMMA_PREFERRED[("e4m3", 128, causal)]
        first_128 = next(c for c in order if c[0] == 128)
        assert small.m == 128 and (small.m, small.s, small.overlap, small.pingpong, small.rowsum) == first_128


def test_candidates_are_the_accurate_variants():
    """On sm90a: the FP16-P.V warpgroup variants and the fp32-accumulating mma.sync ones, for the autotuner."""
    names = registry.candidates(key(precision="accurate"))
    assert names and all(("_pv_f16_" in n if n.startswith("attn_wgmma_sm90a_") else
                          n.startswith("attn_mma_sm90a_") and "_acc_f32_" in n)
                         and "_o_bf16_d128_" in n and n.endswith("_full") for n in names)
    expected = {s.name for s in registry._variants("sm90a")
                if ((isinstance(s, AttnMmaSpec) and s.acc == "f32") or (isinstance(s, AttnWgmmaSpec) and s.pv == "f16"))
                and s.d == 128 and s.o == "bf16" and not s.causal}
    assert any(n.startswith("attn_wgmma_") for n in names) and any(n.startswith("attn_mma_") for n in names)
    assert set(names) == expected and len(names) == len(expected)
    with_sdpa = registry.candidates(key(precision="accurate"), include_sdpa=True)
    assert with_sdpa[len(names):] == ["sdpa:flash", "sdpa:cudnn"]


def test_fast_candidates_on_hopper_are_the_wgmma_variants():
    k = key(causal=True, out="f16", d=64)
    names = registry.candidates(k)
    expected = {s.name for s in wgmma_variants("sm90a") if s.d == 64 and s.causal and s.o == "f16" and s.pv == "e4m3"}
    assert names and set(names) == expected and len(names) == len(expected)
    assert registry.candidates(k, include_sdpa=True)[len(names):] == ["sdpa:flash", "sdpa:cudnn"]
    assert not set(names) & set(registry.candidates(key(causal=True, out="f16", d=64, precision="accurate")))


@pytest.mark.parametrize("arch", [a for a in ALL_TESTED_ARCHES if a != "sm90a"])
def test_fast_is_accurate_where_there_is_no_fp8_family(arch):
    for d in (64, 128):
        fast, accurate = key(arch=arch, d=d), key(arch=arch, d=d, precision="accurate")
        assert registry.candidates(fast) == registry.candidates(accurate) != []
        assert registry.heuristic(fast) == registry.heuristic(accurate)


# --- the table --------------------------------------------------------------------------------------------------
def test_record_and_reload_round_trip(tmp_path):
    path = tmp_path / "autotune.json"
    k = key()
    a, b = registry.candidates(k)[:2]
    registry.record("gpu-A", {"gpu": "A"}, k, {a: 10.0}, {}, path)
    registry.record("gpu-A", {"gpu": "A"}, k, {b: 8.0}, {"sdpa:cudnn": "boom"}, path)  # merges, keeps a
    registry.clear_caches()
    got = registry.stored("gpu-A", k, path)
    assert got["us"] == {a: 10.0, b: 8.0} and got["errors"] == {"sdpa:cudnn": "boom"}
    data = json.loads(path.read_text())
    env = data["environments"]["gpu-A"]
    assert data["format"] == registry.TABLE_FORMAT and env["gpu"] == "A" and k.tag in env["shapes"]
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []  # atomic write leaves no temp file
    choice = registry.choose(k, env="gpu-A", path=path)
    assert choice == Choice("kernel", spec=registry.candidate_specs(k)[[s.name for s in
                            registry.candidate_specs(k)].index(b)], source="tuned")
    assert registry.choose(k, env="gpu-B", path=path).source == "heuristic"
    assert registry.choose(k, env=None, path=path).source == "heuristic"


def test_default_path_is_in_the_cache_root(sagegen_cache_dir):
    assert registry.table_path() == sagegen_cache_dir / "autotune.json"


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"format": 99, "environments": {}}', ""])
def test_corrupt_table_is_ignored_with_a_warning_then_replaced(tmp_path, text):
    path = tmp_path / "autotune.json"
    path.write_text(text)
    with pytest.warns(RuntimeWarning, match="corrupt"):
        assert registry.stored("gpu", key(), path) == {"us": {}, "errors": {}}
    name = registry.candidates(key())[0]
    with pytest.warns(RuntimeWarning):
        registry.record("gpu", {}, key(), {name: 1.0}, {}, path)
    registry.clear_caches()
    assert registry.stored("gpu", key(), path)["us"] == {name: 1.0}


def test_stale_and_garbage_entries_are_ignored(tmp_path):
    path = tmp_path / "autotune.json"
    k = key()
    good = registry.candidates(k)[3]
    gone = "attn_mma_sm90a_qk_i8_pv_f16_acc_f32_o_bf16_d128_m256_n32_w4_s2_b1_qg_warp_kg_block_full"
    registry.record("g", {}, k, {gone: 1.0, good: 5.0, "sdpa:xla": 0.5}, {}, path)
    assert registry.choose(k, env="g", sdpa_ok=True, path=path).name == good


def test_a_timing_of_the_other_precision_is_ignored(tmp_path):
    """A fast key on sm90a chooses among wgmma variants only: an attn_mma timing stored under it (an older table,
    or a hand edit) does not win, however fast."""
    path = tmp_path / "autotune.json"
    k = key()
    mma = registry.candidates(key(precision="accurate"))[-1]  # attn_mma (the accurate list ends with them)
    wgmma = registry.candidates(k)[-1]
    registry.record("g", {}, k, {mma: 1.0, wgmma: 50.0}, {}, path)
    assert registry.choose(k, env="g", path=path).name == wgmma


def test_sdpa_wins_only_where_it_may(tmp_path):
    path = tmp_path / "autotune.json"
    k = key()
    fastest_kernel = registry.candidates(k)[1]
    registry.record("g", {}, k, {fastest_kernel: 100.0, registry.candidates(k)[0]: 120.0, "sdpa:flash": 90.0,
                                 "sdpa:cudnn": 95.0}, {}, path)
    assert registry.choose(k, env="g", sdpa_ok=True, path=path) == Choice("sdpa", backend="flash", source="tuned")
    assert registry.choose(k, env="g", sdpa_ok=False, path=path).name == fastest_kernel
    assert registry.choose(k, env="g", sdpa_ok=True, allow_sdpa=False, path=path).name == fastest_kernel


# --- the autotuner (fake GPU, timing mocked) -------------------------------------------------------------------
@pytest.fixture
def tuner(fake_gpu, monkeypatch):
    """Mocks: no compiles, timings from a per-name table, SDPA runnable and returning the kernel's output."""
    from sagegen import build as build_mod
    from sagegen.build import BuildResult

    state = {"timed": [], "us": {}, "built": [], "capturing": False, "sdpa_ok": True, "sdpa_out": None}

    def fake_build(specs, **kw):
        state["built"] += [s.name for s in specs]
        return BuildResult(cached=[s.name for s in specs])

    def fake_time(fn, warmup=3, reps=10):
        fn()
        name = state["current"]
        state["timed"].append(name)
        return state["us"].get(name, 200.0)

    real_run_kernel = api.Plan._run_kernel

    def run_kernel(self, q, k, v, scale):
        state["current"] = self.choice.name
        out = real_run_kernel(self, q, k, v, scale)
        (out[0] if isinstance(out, tuple) else out).fill_(1.0)  # the fake GPU leaves outputs unwritten
        return out

    def run_sdpa(self, q, k, v, scale):
        state["current"] = self.choice.name
        state.setdefault("sdpa_calls", []).append(self.choice.backend)
        return state["sdpa_out"] if state["sdpa_out"] is not None else torch.ones_like(q)

    monkeypatch.setattr(build_mod, "build", fake_build)
    monkeypatch.setattr(registry, "time_us", fake_time)
    monkeypatch.setattr(registry, "_is_capturing", lambda idx: state["capturing"])
    monkeypatch.setattr(api, "_is_capturing", lambda dev: state["capturing"])
    monkeypatch.setattr(api, "sdpa_supported", lambda b, shape, q, k, v: state["sdpa_ok"] and api.sdpa_eligible(shape))
    monkeypatch.setattr(api.Plan, "_run_kernel", run_kernel)
    monkeypatch.setattr(api.Plan, "_run_sdpa", run_sdpa)
    # the Plan binds run at construction: rebind through the patched methods
    real_init = api.Plan.__init__

    def init(self, shape, choice):
        real_init(self, shape, choice)
        self.run = self._run_sdpa if choice.kind == "sdpa" else self._run_kernel

    monkeypatch.setattr(api.Plan, "__init__", init)
    return state


def qkv(nq=256, nk=256, Hq=4, Hkv=4, dtype=BF16, d=128):
    z = torch.zeros(2, Hq, nq, d, dtype=dtype)
    return z, torch.zeros(2, Hkv, nk, d, dtype=dtype), torch.zeros(2, Hkv, nk, d, dtype=dtype)


def test_autotune_times_everything_once_and_persists(tuner, sagegen_cache_dir):
    q, k, v = qkv()
    kkey = api.inspect_inputs(q, k, v).key()
    names = registry.candidates(kkey)
    tuner["us"] = {names[2]: 50.0, "sdpa:flash": 70.0, "sdpa:cudnn": 60.0}
    choice = registry.autotune(q, k, v)
    assert choice.name == names[2] and choice.source == "tuned"
    assert sorted(tuner["timed"]) == sorted(names + ["sdpa:flash", "sdpa:cudnn"])
    assert sorted(tuner["built"]) == sorted(names)
    data = json.loads((sagegen_cache_dir / "autotune.json").read_text())
    entry = data["environments"]["test-gpu"]["shapes"][kkey.tag]
    assert set(entry["us"]) == set(names) | {"sdpa:flash", "sdpa:cudnn"}
    tuner["timed"].clear()
    assert registry.autotune(q, k, v).name == names[2]
    assert tuner["timed"] == []  # nothing left to time


def test_a_new_candidate_is_timed_alone(tuner):
    q, k, v = qkv()
    registry.autotune(q, k, v)
    kkey = api.inspect_inputs(q, k, v).key()
    path = registry.table_path()
    data = json.loads(path.read_text())
    missing = registry.candidates(kkey)[4]
    del data["environments"]["test-gpu"]["shapes"][kkey.tag]["us"][missing]
    path.write_text(json.dumps(data))
    registry.clear_caches()
    tuner["timed"].clear()
    registry.autotune(q, k, v)
    assert tuner["timed"] == [missing]


def test_retune_times_everything_again(tuner):
    q, k, v = qkv()
    registry.autotune(q, k, v)
    n = len(tuner["timed"])
    registry.autotune(q, k, v, retune=True)
    assert len(tuner["timed"]) == 2 * n


def test_no_tuning_during_capture(tuner, sagegen_cache_dir):
    tuner["capturing"] = True
    q, k, v = qkv()
    choice = registry.autotune(q, k, v)
    assert choice.source == "heuristic" and tuner["timed"] == []
    assert not (sagegen_cache_dir / "autotune.json").exists()


def test_sdpa_is_not_a_candidate_where_it_computes_something_else(tuner):
    for q, k, v, kw in [(*qkv(nq=128, nk=256), {"is_causal": True}),  # bottom-right causal, 1 < Nq != Nk
                        (*qkv(nq=256, nk=128), {"is_causal": True})]:
        tuner["timed"].clear()
        registry.autotune(q, k, v, **kw)
        assert tuner["timed"] and not any(t.startswith("sdpa:") for t in tuner["timed"])


def test_sdpa_is_a_candidate_for_gqa_and_the_lse(tuner):
    """SDPA runs GQA (enable_gqa), returns the LSE (its backend ops) and another output dtype (a cast), so it is
    timed for those calls too."""
    for q, k, v, kw in [(*qkv(Hq=8, Hkv=4), {}), (*qkv(Hq=8, Hkv=1), {"is_causal": True}),
                        (*qkv(), {"return_lse": True}), (*qkv(), {"out_dtype": F16})]:
        tuner["timed"].clear()
        registry.autotune(q, k, v, **kw)
        assert {"sdpa:flash", "sdpa:cudnn"} <= set(tuner["timed"]), kw


def test_sdpa_that_disagrees_is_recorded_as_an_error(tuner):
    q, k, v = qkv()
    tuner["sdpa_out"] = torch.full_like(q, 7.0)
    tuner["us"] = {"sdpa:flash": 1.0}
    choice = registry.autotune(q, k, v)
    assert choice.kind == "kernel"
    errors = registry.stored("test-gpu", api.inspect_inputs(q, k, v).key())["errors"]
    assert "disagrees" in errors["sdpa:flash"]


def test_failed_build_is_recorded_and_the_rest_timed(tuner, monkeypatch):
    from sagegen import build as build_mod
    from sagegen.build import BuildResult

    q, k, v = qkv()
    names = registry.candidates(api.inspect_inputs(q, k, v).key())
    monkeypatch.setattr(build_mod, "build", lambda specs, **kw: BuildResult(
        cached=[s.name for s in specs[1:]], failed={specs[0].name: "CompileError: nope"}))
    registry.autotune(q, k, v, include_sdpa=False)
    assert names[0] not in tuner["timed"] and set(tuner["timed"]) == set(names[1:])
    errors = registry.stored("test-gpu", api.inspect_inputs(q, k, v).key())["errors"]
    assert errors == {names[0]: "CompileError: nope"}


# --- attention() with the registry -------------------------------------------------------------------------------
def test_env_autotune_tunes_each_new_key_once(tuner, monkeypatch):
    monkeypatch.setenv("SAGEGEN_AUTOTUNE", "1")
    q, k, v = qkv()
    names = registry.candidates(api.inspect_inputs(q, k, v).key())
    tuner["us"] = {names[5]: 10.0}
    sagegen.attention(q, k, v)
    n = len(tuner["timed"])
    assert n == len(names) + 2
    sagegen.attention(q, k, v)
    sagegen.attention(q[:, :, :200], k, v)  # same key (bucket 256): no tuning
    assert len(tuner["timed"]) == n


def test_env_autotune_during_capture_uses_the_heuristic_and_does_not_cache(tuner, monkeypatch, fake_gpu):
    monkeypatch.setenv("SAGEGEN_AUTOTUNE", "1")
    tuner["capturing"] = True
    q, k, v = qkv()
    sagegen.attention(q, k, v)
    assert tuner["timed"] == [] and not api._plans
    heuristic = registry.heuristic(api.inspect_inputs(q, k, v).key(), sm_count=132)
    assert fake_gpu.attn()[-1][0].name == heuristic.name
    tuner["capturing"] = False
    sagegen.attention(q, k, v)  # after capture: tunes
    assert tuner["timed"]


def _sdpa_wins(q, k, v):
    kkey = api.inspect_inputs(q, k, v).key()
    registry.record("test-gpu", {}, kkey, {registry.candidates(kkey)[0]: 100.0, "sdpa:cudnn": 50.0}, {})


def test_attention_calls_sdpa_when_it_won(tuner, fake_gpu):
    q, k, v = qkv()
    _sdpa_wins(q, k, v)
    sagegen.attention(q, k, v)
    assert tuner.get("sdpa_calls") == ["cudnn"] and not fake_gpu.attn()


@pytest.mark.parametrize("how", ["param", "env"])
def test_force_kernel_disables_the_sdpa_fallback(tuner, fake_gpu, monkeypatch, how):
    q, k, v = qkv()
    _sdpa_wins(q, k, v)
    if how == "env":
        monkeypatch.setenv("SAGEGEN_FORCE_KERNEL", "1")
        sagegen.attention(q, k, v)
    else:
        sagegen.attention(q, k, v, sdpa_fallback=False)
    assert not tuner.get("sdpa_calls")
    kkey = api.inspect_inputs(q, k, v).key()
    assert fake_gpu.attn()[0][0].name == registry.candidates(kkey)[0]


def test_sdpa_fallback_skipped_when_torch_cannot_run_the_exact_shape(tuner, fake_gpu):
    q, k, v = qkv()
    _sdpa_wins(q, k, v)
    tuner["sdpa_ok"] = False
    sagegen.attention(q, k, v)
    assert not tuner.get("sdpa_calls") and fake_gpu.attn()


def test_sdpa_fallback_used_for_another_out_dtype(tuner, fake_gpu):
    q, k, v = qkv()
    kkey = api.inspect_inputs(q, k, v, out_dtype=F16).key()
    registry.record("test-gpu", {}, kkey, {registry.candidates(kkey)[0]: 100.0, "sdpa:cudnn": 50.0}, {})
    sagegen.attention(q, k, v)  # bf16 out: another key, nothing stored, the kernel
    assert not tuner.get("sdpa_calls") and len(fake_gpu.attn()) == 1
    sagegen.attention(q, k, v, out_dtype=F16)
    assert tuner.get("sdpa_calls") == ["cudnn"] and len(fake_gpu.attn()) == 1


@pytest.mark.parametrize("heads,kw", [((4, 4), {"return_lse": True}), ((8, 2), {}), ((8, 2), {"return_lse": True})])
def test_sdpa_fallback_used_for_gqa_and_the_lse(tuner, fake_gpu, heads, kw):
    q, k, v = qkv(Hq=heads[0], Hkv=heads[1])
    _sdpa_wins(q, k, v)
    sagegen.attention(q, k, v, **kw)
    assert tuner.get("sdpa_calls") == ["cudnn"] and not fake_gpu.attn()


def test_choose_every_arch_without_a_table():
    for arch in ARCHES:
        assert registry.choose(key(arch=arch)).kind == "kernel"


# --- the measured SDPA rule ---------------------------------------------------------------------------------------
# (precision, d, causal, N, cuDNN expected): the FP16-P.V kernels are slower than the FP8 ones, so cuDNN stays
# ahead of the accurate ones to longer lengths at d=128
SDPA_RULE_CASES = [
    ("fast", 128, False, 2048, True), ("fast", 128, False, 2049, False), ("fast", 128, True, 4096, True),
    ("fast", 128, True, 4097, False), ("fast", 64, False, 4096, True), ("fast", 64, False, 8192, False),
    ("fast", 64, True, 8192, True), ("fast", 64, True, 16384, False),
    ("accurate", 128, False, 4096, True), ("accurate", 128, False, 8192, False), ("accurate", 128, True, 4096, True),
    ("accurate", 128, True, 8192, False), ("accurate", 64, False, 4096, True), ("accurate", 64, False, 8192, False),
    ("accurate", 64, True, 8192, True), ("accurate", 64, True, 16384, False)]


@pytest.mark.parametrize("precision,d,causal,n,expect_sdpa", SDPA_RULE_CASES)
def test_sdpa_rule_follows_the_measurements(precision, d, causal, n, expect_sdpa):
    key = registry.make_key(arch="sm90a", dtype="bf16", out="bf16", d=d, causal=causal, nq=n, nk=n,
                            batch_heads=128, precision=precision)
    choice = registry.choose(key, sdpa_ok=True)
    assert (choice.kind == "sdpa") == expect_sdpa
    if expect_sdpa:
        assert choice.backend == "cudnn" and choice.source == "heuristic"
    # never when SDPA cannot compute the call or is not allowed
    assert registry.choose(key, sdpa_ok=False).kind == "kernel"
    assert registry.choose(key, sdpa_ok=True, allow_sdpa=False).kind == "kernel"


# GQA (SDPA_FASTER_GQA, measured with 4 query heads per KV head): the kernel quantizes less K and V, so it overtakes
# cuDNN at shorter keys than without GQA (fast d=128 causal, d=64 either) or at the same length
SDPA_GQA_RULE_CASES = [
    ("fast", 128, False, 2048, True), ("fast", 128, False, 4096, False), ("fast", 128, True, 2048, True),
    ("fast", 128, True, 4096, False), ("fast", 64, False, 2048, True), ("fast", 64, False, 4096, False),
    ("fast", 64, True, 4096, True), ("fast", 64, True, 8192, False), ("balanced", 64, True, 8192, True),
    ("balanced", 64, True, 16384, False), ("accurate", 128, True, 4096, True), ("accurate", 128, True, 8192, False),
    ("accurate", 256, False, 2048, True), ("accurate", 256, False, 4096, False)]


@pytest.mark.parametrize("precision,d,causal,n,expect_sdpa", SDPA_GQA_RULE_CASES)
@pytest.mark.parametrize("group", [2, 4, 8])
def test_sdpa_rule_for_gqa_follows_its_measurements(precision, d, causal, n, expect_sdpa, group):
    key = registry.make_key(arch="sm90a", dtype="bf16", out="bf16", d=d, causal=causal, nq=n, nk=n,
                            batch_heads=128, gqa=group, precision=precision)
    assert (registry.choose(key, sdpa_ok=True).kind == "sdpa") == expect_sdpa
    assert registry.choose(key, sdpa_ok=False).kind == "kernel"


@pytest.mark.parametrize("nq,nk,expect_sdpa", [(1, 32768, True), (256, 32768, True), (2048, 1 << 20, True),
                                               (4096, 32768, False), (32768, 4096, False), (32768, 2048, True)])
def test_sdpa_rule_applies_to_the_shorter_side(nq, nk, expect_sdpa):
    """Short queries over long keys go to cuDNN like short keys do (fast d=128 without GQA: up to 2k)."""
    key = registry.make_key(arch="sm90a", dtype="bf16", out="bf16", d=128, causal=False, nq=nq, nk=nk,
                            batch_heads=128, precision="fast")
    assert (registry.choose(key, sdpa_ok=True).kind == "sdpa") == expect_sdpa


def test_sdpa_rule_only_where_measured():
    for arch in ("sm80", "sm89", "sm120a"):
        key = registry.make_key(arch=arch, dtype="bf16", out="bf16", d=128, causal=False, nq=1024, nk=1024,
                                batch_heads=128, precision="fast")
        assert registry.choose(key, sdpa_ok=True).kind == "kernel"
