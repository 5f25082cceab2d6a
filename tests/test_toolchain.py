import re
from pathlib import Path

from sagegen import toolchain
from sagegen.toolchain import cache_root, fingerprint, include_dirs, nvrtc_version, package_versions, templates_dir


def test_include_dirs_come_from_installed_wheels_and_hold_the_headers_we_include():
    dirs = [Path(d) for d in include_dirs()]
    assert dirs[0] == templates_dir()
    assert any((d / "cute" / "tensor.hpp").is_file() for d in dirs), "CUTLASS/CuTe headers"
    assert any((d / "cuda_fp8.h").is_file() for d in dirs), "CUDA headers"
    assert any((d / "cuda" / "std" / "type_traits").is_file() for d in dirs), "libcu++"
    assert all(d.is_dir() for d in dirs)


def test_templates_dir_holds_the_quant_template_and_common_headers():
    from sagegen.variants.quant import QuantSpec

    assert (templates_dir() / QuantSpec.template).is_file()
    assert (templates_dir() / "common" / "numeric.cuh").is_file()


def test_nvrtc_version_is_major_dot_minor_at_least_13():
    assert re.fullmatch(r"\d+\.\d+", nvrtc_version())
    assert int(nvrtc_version().split(".")[0]) >= 13


def test_package_versions_name_every_toolchain_package():
    versions = package_versions()
    for pkg in ("nvidia-cutlass", "nvidia-cuda-nvrtc", "nvidia-cuda-runtime", "nvidia-cuda-cccl", "cuda-core"):
        assert versions[pkg] != "missing", pkg


def test_fingerprint_is_stable_and_changes_with_the_template_headers(monkeypatch):
    first = fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    toolchain.fingerprint.cache_clear()
    assert fingerprint() == first
    monkeypatch.setattr(toolchain, "_templates_digest", lambda: "a header changed")
    toolchain.fingerprint.cache_clear()
    try:
        assert fingerprint() != first
    finally:
        monkeypatch.undo()
        toolchain.fingerprint.cache_clear()


def test_cache_root_honours_sagegen_cache_dir_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("SAGEGEN_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("SAGEGEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "sagegen"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "sagegen"
