"""The `sagegen` command, run as a separate process exactly as a user runs it."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sagegen.arch import ARCHES

ROOT = Path(__file__).resolve().parent.parent


def sagegen(*args, cwd=ROOT, timeout=600):
    return subprocess.run([sys.executable, "-m", "sagegen", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _summary(stdout: str) -> dict[str, int]:
    m = re.search(r"(\d+) variants: (\d+) built, (\d+) cached, (\d+) failed in [\d.]+ s", stdout)
    assert m, f"no summary line in:\n{stdout}"
    return dict(zip(("variants", "built", "cached", "failed"), map(int, m.groups())))


@pytest.mark.parametrize("args", [["--help"], ["build", "--help"], ["list", "--help"]])
def test_help_exits_zero_and_describes_the_command(args):
    r = sagegen(*args)
    assert r.returncode == 0 and "usage: sagegen" in r.stdout


def test_top_level_help_names_every_subcommand():
    out = sagegen("--help").stdout
    for cmd in ("build", "list", "status", "clear-cache"):
        assert cmd in out


def test_list_prints_the_selected_variant_names():
    r = sagegen("list", "--arch", "sm120", "--filter", "*d128*")
    names = r.stdout.split()
    assert r.returncode == 0 and names
    assert all(n.startswith(("quant_sm120a_", "attn_mma_sm120a_", "attn_short_sm120a_")) and "d128" in n for n in names)
    assert f"{len(names)} variants" in r.stderr


def test_list_without_arch_covers_every_default_arch():
    names = sagegen("list", "--filter", "quant_*_op_stats_x_f16_v_none_d64").stdout.split()
    assert names == [f"quant_{a}_op_stats_x_f16_v_none_d64" for a in
                     ("sm80", "sm86", "sm89", "sm90a", "sm100a", "sm120a")]


def test_status_reports_the_cache_dir_from_the_environment(sagegen_cache_dir):
    r = sagegen("status")
    assert r.returncode == 0
    assert str(sagegen_cache_dir) in r.stdout
    assert re.search(r"NVRTC\s+\d+\.\d+", r.stdout) and "nvidia-cutlass" in r.stdout


def test_unknown_arch_exits_2_and_lists_known_arches():
    r = sagegen("build", "--arch", "sm75", "--out", "/nonexistent")
    assert r.returncode == 2
    assert "unknown arch 'sm75'" in r.stderr and all(a in r.stderr for a in ARCHES)


def test_filter_matching_nothing_fails_with_a_message(tmp_path):
    r = sagegen("build", "--arch", "sm120", "--filter", "no_such_kernel*", "--out", str(tmp_path))
    assert r.returncode != 0 and "no variant matches" in r.stderr
    assert not any(tmp_path.iterdir())


def test_non_positive_jobs_is_a_usage_error():
    r = sagegen("build", "--arch", "sm80", "--jobs", "0")
    assert r.returncode == 2 and "positive integer" in r.stderr


def test_build_then_clear_cache(tmp_path, sagegen_cache_dir):
    r = sagegen("build", "--arch", "sm_80", "--filter", "quant_*_op_stats_*_d64", "--jobs", "2", "--out",
                str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert _summary(r.stdout) == {"variants": 4, "built": 4, "cached": 0, "failed": 0}
    assert len(list(sagegen_cache_dir.rglob("*.cubin"))) == 4
    assert "4 cubins" in sagegen("status").stdout
    r = sagegen("clear-cache")
    assert r.returncode == 0 and "removed" in r.stdout
    assert not list(sagegen_cache_dir.rglob("*.cubin"))


def test_build_json_summary(tmp_path):
    out = tmp_path / "summary.json"
    r = sagegen("build", "--arch", "sm86", "--filter", "quant_*_op_stats_x_f16_v_none_d64", "--out",
                str(tmp_path / "gen"), "--json", str(out))
    assert r.returncode == 0, r.stderr
    import json

    summary = json.loads(out.read_text())
    assert summary["built"] == ["quant_sm86_op_stats_x_f16_v_none_d64"] and summary["failed"] == {}


@pytest.mark.slow
def test_build_whole_quant_family_for_sm120_cold_then_warm(tmp_path):
    args = ("build", "--arch", "sm120", "--filter", "quant_*", "--jobs", "2", "--out", str(tmp_path))
    cold = sagegen(*args)
    assert cold.returncode == 0, cold.stderr
    summary = _summary(cold.stdout)
    assert summary["failed"] == 0 and summary["built"] == summary["variants"] > 0
    assert "0 failed" in cold.stdout
    warm = sagegen(*args)
    assert warm.returncode == 0
    assert _summary(warm.stdout) == {**summary, "built": 0, "cached": summary["variants"]}
    assert len(list((tmp_path / "sm120a").glob("*.cu"))) == summary["variants"]


def test_installed_console_script_finds_its_templates_outside_the_checkout(tmp_path):
    exe = shutil.which("sagegen")
    if exe is None:
        pytest.skip("the sagegen console script is not installed (pip install .)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([exe, "build", "--arch", "sm120", "--filter", "quant_*_op_stats_x_f16_v_none_d64",
                        "--out", str(tmp_path / "gen")], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert _summary(r.stdout)["failed"] == 0
