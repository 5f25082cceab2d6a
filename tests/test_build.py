"""Ahead-of-time builds: parallel compiles into the cache, cached re-runs, per-variant failures."""
import json

from sagegen import jit
from sagegen.build import build
from sagegen.errors import CompileError
from sagegen.variants import select

SPECS = select(["sm89"], "quant_*_op_stats_*_d64")


def test_parallel_build_compiles_each_variant_once_then_serves_from_cache(tmp_path):
    assert len(SPECS) >= 2
    first = build(SPECS, out_dir=tmp_path, jobs=2, progress=False)
    assert first.ok and sorted(first.built) == sorted(s.name for s in SPECS) and not first.cached
    assert set(first.compile_seconds) == set(first.built)
    second = build(SPECS, out_dir=tmp_path, jobs=2, progress=False)
    assert second.ok and not second.built and sorted(second.cached) == sorted(first.built)


def test_build_writes_sources_and_manifest(tmp_path):
    build(SPECS, out_dir=tmp_path, jobs=1, progress=False)
    manifest = json.loads((tmp_path / "sm89" / "manifest.json").read_text())
    assert sorted(manifest) == sorted(s.name for s in SPECS)
    assert all((tmp_path / "sm89" / f"{s.name}.cu").is_file() for s in SPECS)


def test_one_failing_variant_is_reported_and_the_rest_still_build(tmp_path, monkeypatch):
    bad = SPECS[0].name
    real = jit.compile_cubin

    def compile_or_fail(name, source, arch, path):
        if name == bad:
            raise CompileError(name, str(path), "error: injected failure")
        return real(name, source, arch, path)

    monkeypatch.setattr(jit, "compile_cubin", compile_or_fail)
    result = build(SPECS, out_dir=tmp_path, jobs=1, progress=False)
    assert not result.ok
    assert list(result.failed) == [bad] and "injected failure" in result.failed[bad] and bad in result.failed[bad]
    assert sorted(result.built) == sorted(s.name for s in SPECS[1:])
