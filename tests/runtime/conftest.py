"""Fixtures of the runtime tests.

CPU tests run the real eager path of sagegen.attention on CPU tensors through ``fake_gpu``: the ops get CPU
kernels (the same Python functions as their CUDA kernels), and the few things that need a GPU (arch, SM count,
stream, the launch) are replaced, the launches recorded (their arguments packed as the real launch packs them)
instead of run. ``fake_gpu_direct`` / ``fake_hopper_direct`` run attention()'s direct path (eager.py) instead of
the ops.

GPU tests (``@pytest.mark.gpu``) share one kernel cache for the session (``$SAGEGEN_TEST_CACHE_DIR`` if set, so
reruns on one machine skip compiling), and ``gpu_kernels`` compiles every variant of the device's arch once, in
parallel, before the first test that needs it (``$SAGEGEN_TEST_VARIANTS`` restricts the attention variants).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def session_cache_dir(tmp_path_factory) -> Path:
    env = os.environ.get("SAGEGEN_TEST_CACHE_DIR")
    return Path(env) if env else tmp_path_factory.mktemp("sagegen-kernels")


@pytest.fixture(autouse=True)
def sagegen_cache_dir(request, tmp_path_factory, monkeypatch):
    """Overrides tests/conftest.py's fixture: GPU tests share the session's kernel cache (compiling ~200 variants
    once, not once per test); CPU tests keep a fresh, empty one each."""
    if request.node.get_closest_marker("gpu") is not None:
        path = request.getfixturevalue("session_cache_dir")
    else:
        path = tmp_path_factory.mktemp("sagegen-cache")
    monkeypatch.setenv("SAGEGEN_CACHE_DIR", str(path))
    monkeypatch.delenv("SAGEGEN_AUTOTUNE", raising=False)
    monkeypatch.delenv("SAGEGEN_FORCE_KERNEL", raising=False)
    monkeypatch.delenv("SAGEGEN_AUTOTUNE_FILE", raising=False)
    return path


@pytest.fixture(autouse=True)
def fresh_runtime_state():
    """No plan or loaded autotune table leaks from one test into the next."""
    yield
    import sys

    if "sagegen.runtime.api" in sys.modules:
        from sagegen.runtime import api, registry

        registry.clear_caches()
        api.clear_plans()


class Launches(list):
    """The launches a fake_gpu test made: (spec, grid, block, smem, args)."""

    def names(self):
        return [entry[0].name for entry in self]

    def attn(self):
        """The attention launches' (spec, grid, block, smem, args)."""
        return [e for e in self if e[0].family in ("attn_mma", "attn_wgmma", "attn_short")]


def _fake_gpu(monkeypatch, arch: str):
    import torch

    from sagegen.arch import ARCHES
    from sagegen.runtime import api, attn_mma, attn_short, attn_wgmma, launch, ops, quant, registry

    launches = Launches()

    def fake_launch(spec, params, grid, block, smem, device, stream, *args):
        params.packer.pack(*args)  # what the real launch packs: the count and every value's range are checked
        launches.append((spec, grid, block, smem, args))

    monkeypatch.setattr(launch, "launch", fake_launch)
    monkeypatch.setattr(quant, "device_arch", lambda idx: ARCHES[arch])
    monkeypatch.setattr(quant, "stream_handle", lambda dev: 0)
    monkeypatch.setattr(attn_mma, "stream_handle", lambda dev: 0)
    monkeypatch.setattr(attn_wgmma, "stream_handle", lambda dev: 0)
    monkeypatch.setattr(attn_short, "stream_handle", lambda dev: 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(api, "device_arch_name", lambda idx: arch)
    monkeypatch.setattr(api, "sm_count", lambda idx: 132)
    monkeypatch.setattr(api, "DEVICE_TYPES", ("cuda", "meta", "cpu"))
    monkeypatch.setattr(registry, "environment", lambda idx: ("test-gpu", {"gpu": "test-gpu"}))
    lib = torch.library.Library("sagegen", "IMPL")
    lib.impl("quantize", ops._quantize_cuda, "CPU")
    lib.impl("attn_mma", ops._attn_cuda, "CPU")
    lib.impl("attn_wgmma", ops._wgmma_cuda, "CPU")
    lib.impl("attn_short", ops._short_cuda, "CPU")
    api.clear_plans()
    return launches, lib


@pytest.fixture
def fake_gpu(monkeypatch):
    """Run sagegen.attention's eager path on CPU tensors as if on an sm89 GPU with 132 SMs (the mma.sync family
    serves every precision there); launches recorded."""
    from sagegen.runtime import api

    launches, lib = _fake_gpu(monkeypatch, "sm89")
    yield launches
    lib._destroy()
    api.clear_plans()


def _direct_path(monkeypatch):
    """Let attention() take its eager direct path (runtime/eager.py) on the fake GPU's CPU tensors."""
    from sagegen.runtime import api, eager

    monkeypatch.setattr(eager, "DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(eager, "current_device", lambda: 0)
    monkeypatch.setattr(eager, "current_stream_handle", lambda idx: 0)
    api.clear_plans()


@pytest.fixture
def fake_gpu_direct(fake_gpu, monkeypatch):
    """fake_gpu (sm89) with attention() on its direct path instead of the ops."""
    _direct_path(monkeypatch)
    return fake_gpu


@pytest.fixture
def fake_hopper_direct(fake_hopper, monkeypatch):
    """fake_hopper (sm90a) with attention() on its direct path instead of the ops."""
    _direct_path(monkeypatch)
    return fake_hopper


@pytest.fixture
def fake_hopper(monkeypatch):
    """As fake_gpu, on an sm90a GPU: precision "fast" runs the wgmma family."""
    from sagegen.runtime import api

    launches, lib = _fake_gpu(monkeypatch, "sm90a")
    yield launches
    lib._destroy()
    api.clear_plans()


# --- GPU session fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def gpu_arch() -> str:
    import torch

    from sagegen.runtime.device import device_arch

    return device_arch(torch.cuda.current_device()).name


@pytest.fixture(scope="session")
def gpu_kernels(gpu_arch, session_cache_dir):
    """Every attention variant (attn_mma, and attn_wgmma on sm90a) and quant variant of the device's arch,
    compiled once, in parallel, into the session cache.

    Returns the build result (``.failed``: name -> compile log; a test of a variant that failed reports it, the
    others run). ``$SAGEGEN_TEST_VARIANTS`` (globs) restricts the attention variants built."""
    from sagegen.build import build
    from sagegen.render import default_out_dir
    from sagegen.variants import select

    from .gpu_util import variants_glob

    attn = select([gpu_arch], variants_glob())
    specs = attn + select([gpu_arch], "quant_*")
    return build(specs, out_dir=default_out_dir(), jobs=os.cpu_count(), cache_root=session_cache_dir,
                 progress=False)


@pytest.fixture(scope="session")
def report():
    from .gpu_util import Report

    r = Report()
    yield r
    r.write()
