"""Host time of one small sagegen.attention call without a GPU: CPU tensors on the tests' fake GPU, launches
packed for real and handed to a stub of cuLaunchKernel. Dev tool; the GPU number is scripts/overhead_profile.py.

usage: python3 scripts/host_overhead_cpu.py [--arch sm89|sm90a] [--calls 3000] [--profile]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest  # noqa: E402
import torch  # noqa: E402

import sagegen  # noqa: E402
from sagegen.runtime import api, launch, quant  # noqa: E402
from tests.runtime.conftest import _direct_path, _fake_gpu  # noqa: E402

_real_launch = launch.launch


def per_call_us(fn, calls: int) -> float:
    for _ in range(50):
        fn()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls * 1e6)
    return best


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="sm89", choices=["sm89", "sm90a"])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args(argv)
    mp = pytest.MonkeyPatch()
    _, lib = _fake_gpu(mp, a.arch)
    try:
        mp.setattr(launch, "launch", _real_launch)  # _fake_gpu records launches; pack them for real instead
        mp.setattr(launch, "_functions", {})  # fake handles must not outlive this run (the test suite calls main)
        mp.setattr(launch, "function_for", lambda spec: launch._functions.setdefault(spec.name, 0x1000))
        mp.setattr(launch, "_cu_launch", lambda *args: (0,))  # the driver call itself is not on this machine
        mp.setattr(launch, "_raise_smem_limit", lambda spec, device, smem: None)
        q, k, v = (torch.randn(1, 8, 128, 128, dtype=torch.bfloat16) for _ in range(3))
        call = lambda: sagegen.attention(q, k, v, sdpa_fallback=False)  # noqa: E731
        ops_us = per_call_us(call, a.calls)
        _direct_path(mp)
        direct_us = per_call_us(call, a.calls)
        args = [1 << 40, 1, 2, 3] * 3 + [128] * 13 + [1 << 40] * 9
        pack_us = per_call_us(lambda: quant.QKV_PARAMS.pack(args), a.calls * 10)
        print(f"{a.arch}, [1, 8, 128, 128] bf16, CPU, driver call stubbed: ops path {ops_us:.1f} us/call, "
              f"direct path {direct_us:.1f} us/call; packing the qkv pass's 34 parameters {pack_us:.2f} us")
        if a.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(a.calls):
                call()
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    finally:
        lib._destroy()
        mp.undo()
        api.clear_plans()


if __name__ == "__main__":
    main()
