"""Rendering: golden sources, determinism, strict templates, and generated/ with its manifest.

Golden files live in tests/golden/<variant>.cu. After an intended template change, regenerate them with
    SAGEGEN_UPDATE_GOLDEN=1 python -m pytest tests/test_render.py
and review the diff before committing.
"""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

from sagegen.render import generated_path, render, source_hash, write_if_changed, write_sources
from sagegen.toolchain import templates_dir
from sagegen.variants import FAMILIES, enumerate_all, select
from sagegen.variants.quant import QuantSpec

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("SAGEGEN_UPDATE_GOLDEN") == "1"
# golden file stem -> glob picking the variant (the first match in enumeration order). Globs, not full names, so
# that a new spec field changes the golden content (and asks for a regeneration) instead of breaking the lookup.
GOLDEN = {
    "quant_sm90a_qkv_bf16_e4m3t_d128": ("sm90a", "quant_sm90a_op_qkv_x_bf16_v_e4m3t_d128"),
    "attn_mma_sm120a_d64_m64_n64_thread_causal": (
        "sm120a", "attn_mma_sm120a_*_acc_f32_o_bf16_d64_m64_n64_w4_s2_*qg_thread_kg_thread_causal"),
    "attn_wgmma_sm90a_d128_s3_ovl_pp_thread_full": (
        "sm90a", "attn_wgmma_sm90a_*_o_bf16_d128_m128_n128_s3_ovl_pp_rs_fma_qg_thread_kg_thread_full"),
    "attn_wgmma_sm90a_pv_f16_d64_s2_seq_block_causal": (
        "sm90a", "attn_wgmma_sm90a_qk_i8_pv_f16_o_f16_d64_m128_n128_s2_seq_free_rs_fma_qg_block_kg_block_causal"),
    "attn_wgmma_sm90a_pv_i8_d128_m192_s2_seq_thread_full": (
        "sm90a", "attn_wgmma_sm90a_qk_i8_pv_i8_o_bf16_d128_m192_n128_s2_seq_*qg_thread_kg_thread_full"),
    "attn_short_sm80_bf16_d128_m128_thread_full": (
        "sm80", "attn_short_sm80_*_x_bf16_o_bf16_d128_m128_n64_w8_b1_qg_thread_kg_thread_full"),
}
REGEN = "SAGEGEN_UPDATE_GOLDEN=1 python -m pytest tests/test_render.py"


def _golden_spec_or_skip(arch, pattern):
    family = next((f for f in sorted(FAMILIES, key=len, reverse=True) if pattern.startswith(f + "_")), None)
    if family is None:
        pytest.skip(f"the kernel family of {pattern} is not registered yet")
    template = templates_dir() / FAMILIES[family][0].template
    if not template.is_file():
        pytest.skip(f"template {template} does not exist yet")
    specs = select([arch], pattern)
    assert specs, f"no variant matches {pattern!r}: update GOLDEN in {__file__}"
    return specs[0]


@pytest.mark.parametrize("stem", sorted(GOLDEN))
def test_render_matches_golden_file(stem):
    spec = _golden_spec_or_skip(*GOLDEN[stem])
    golden = GOLDEN_DIR / f"{stem}.cu"
    source = render(spec)
    if UPDATE_GOLDEN:
        write_if_changed(golden, source)
        return
    assert golden.is_file(), f"missing golden file {golden}; create it with: {REGEN}"
    assert source == golden.read_text(), f"rendered source differs from {golden}; if intended, run: {REGEN}"


def test_rendered_source_defines_the_kernel_under_the_variant_name():
    spec = QuantSpec(arch="sm80", op="stats", x="f16", v="none", d=64)
    assert f'__global__ void __launch_bounds__(256) {spec.name}(' in render(spec)
    assert 'extern "C"' in render(spec)


_HASHES_SCRIPT = """
import json
from sagegen.render import render, source_hash
from sagegen.variants import enumerate_all
print(json.dumps({s.name: source_hash(render(s)) for s in enumerate_all(["sm90a", "sm120a"])}))
"""


def test_rendering_is_deterministic_across_processes_and_hash_seeds():
    here = {s.name: source_hash(render(s)) for s in enumerate_all(["sm90a", "sm120a"])}
    root = Path(__file__).resolve().parent.parent
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", _HASHES_SCRIPT], capture_output=True, text=True, check=True,
                             cwd=root, env={**os.environ, "PYTHONHASHSEED": seed})
        assert json.loads(out.stdout) == here


@dataclasses.dataclass(frozen=True)
class _QuantMissingContext(QuantSpec):
    def context(self):
        return {}  # drops x_type and threads, which the template uses


def test_a_variable_missing_from_the_context_is_an_error_not_an_empty_string():
    with pytest.raises(jinja2.UndefinedError, match="x_type|threads"):
        render(_QuantMissingContext(arch="sm80", op="qkv", x="f16", v="none", d=64))


# --- generated/ ----------------------------------------------------------------------------------------------------

def _age(path: Path) -> int:
    """Set the file's mtime one hour back (so a rewrite is visible at any timestamp granularity); return it."""
    old = path.stat().st_mtime_ns - 3600 * 10**9
    os.utime(path, ns=(old, old))
    return old


def test_write_if_changed_keeps_the_file_when_content_is_equal(tmp_path):
    path = tmp_path / "a" / "x.cu"
    assert write_if_changed(path, "int x;\n")
    old = _age(path)
    assert not write_if_changed(path, "int x;\n")
    assert path.stat().st_mtime_ns == old


def test_write_if_changed_rewrites_when_content_differs(tmp_path):
    path = tmp_path / "x.cu"
    write_if_changed(path, "int x;\n")
    old = _age(path)
    assert write_if_changed(path, "int y;\n")
    assert path.read_text() == "int y;\n" and path.stat().st_mtime_ns != old
    assert [p.name for p in tmp_path.iterdir()] == ["x.cu"]  # no temp file left behind


def _quant(arch="sm89", **kw):
    return QuantSpec(**{"arch": arch, "op": "qkv", "x": "f16", "v": "none", "d": 64, **kw})


def test_write_sources_writes_one_file_per_variant_under_its_arch(tmp_path):
    specs = [_quant(), _quant(d=128), _quant(arch="sm120a")]
    result = write_sources(specs, tmp_path)
    for spec in specs:
        path, source = result[spec.name]
        assert path == generated_path(tmp_path, spec) == tmp_path / spec.arch / f"{spec.name}.cu"
        assert path.read_text() == source == render(spec)


def test_manifest_maps_each_name_to_spec_template_and_source_hash(tmp_path):
    specs = [_quant(), _quant(v="e4m3t")]
    write_sources(specs, tmp_path)
    manifest = json.loads((tmp_path / "sm89" / "manifest.json").read_text())
    assert sorted(manifest) == sorted(s.name for s in specs)
    for spec in specs:
        entry = manifest[spec.name]
        assert entry["spec"] == spec.to_dict()
        assert type(spec)(**entry["spec"]) == spec
        assert entry["template"] == spec.template == "quant/quant.cu.j2"
        assert entry["family"] == "quant"
        assert entry["sha256"] == source_hash((tmp_path / "sm89" / f"{spec.name}.cu").read_text())


def test_unchanged_rewrite_of_generated_keeps_every_mtime(tmp_path):
    specs = [_quant(), _quant(d=256)]
    write_sources(specs, tmp_path)
    files = sorted((tmp_path / "sm89").iterdir())
    old = {p: _age(p) for p in files}
    write_sources(specs, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in files} == old


def test_manifest_accumulates_across_builds_and_drops_deleted_sources(tmp_path):
    a, b = _quant(), _quant(d=128)
    write_sources([a], tmp_path)
    write_sources([b], tmp_path)
    manifest_path = tmp_path / "sm89" / "manifest.json"
    assert sorted(json.loads(manifest_path.read_text())) == sorted([a.name, b.name])
    generated_path(tmp_path, a).unlink()
    write_sources([b], tmp_path)
    assert list(json.loads(manifest_path.read_text())) == [b.name]


def test_damaged_manifest_is_rebuilt(tmp_path):
    (tmp_path / "sm89").mkdir()
    (tmp_path / "sm89" / "manifest.json").write_text("{not json")
    write_sources([_quant()], tmp_path)
    assert list(json.loads((tmp_path / "sm89" / "manifest.json").read_text())) == [_quant().name]
