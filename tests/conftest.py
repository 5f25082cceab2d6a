"""Shared test setup.

* Every test gets its own empty kernel cache (SAGEGEN_CACHE_DIR points into the test's temp dir), so the suite never
  reads or writes ~/.cache/sagegen and no test sees another's cubins.
* Tests marked ``@pytest.mark.gpu`` are skipped, with the reason, when torch sees no CUDA device.
"""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def sagegen_cache_dir(tmp_path_factory, monkeypatch):
    """A fresh, empty SAGEGEN_CACHE_DIR for each test (returned for tests that want to look inside)."""
    path = tmp_path_factory.mktemp("sagegen-cache")
    monkeypatch.setenv("SAGEGEN_CACHE_DIR", str(path))
    return path


def _cuda_available() -> tuple[bool, str]:
    try:
        import torch
    except ImportError as e:
        return False, f"torch is not importable ({e})"
    if not torch.cuda.is_available():
        return False, f"no CUDA GPU visible to torch {torch.__version__}"
    return True, ""


@pytest.hookimpl(trylast=True)  # after -k/-m deselection, so torch is imported only when a gpu test will run
def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return  # do not import torch for a CPU-only selection
    ok, why = _cuda_available()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU: {why}")
    for item in gpu_items:
        item.add_marker(skip)
