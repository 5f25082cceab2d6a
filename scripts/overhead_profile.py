"""Where the host time of one small sagegen.attention call goes (N=128 by default). Dev tool, needs a GPU.

Prints the host time per call of attention() (its direct path, runtime/eager.py) and of the same plan through
the torch ops, a breakdown of the direct path (each part timed alone), and a cProfile of the direct path.
The CPU-only counterpart (fake GPU, driver call stubbed) is scripts/host_overhead_cpu.py.

usage: python3 scripts/overhead_profile.py [--calls 300] [--n 128] [--lse]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import sagegen  # noqa: E402
from sagegen.runtime import api, launch  # noqa: E402
from sagegen.runtime.device import current_stream_handle  # noqa: E402


def host_us(fn, calls: int) -> tuple[float, float]:
    """(host time per call, host + device time per call: the loop then a synchronize). When the two are close, the
    GPU was the bottleneck and the host number includes waiting on a full launch queue."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    best_host = best_total = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        host = time.perf_counter() - t
        torch.cuda.synchronize()
        total = time.perf_counter() - t
        best_host, best_total = min(best_host, host / calls * 1e6), min(best_total, total / calls * 1e6)
    return best_host, best_total


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--lse", action="store_true", help="return_lse=True (two more allocations and an add)")
    a = ap.parse_args(argv)
    q, k, v = (torch.randn(1, 8, a.n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    api.clear_plans()
    call = lambda: sagegen.attention(q, k, v, sdpa_fallback=False, return_lse=a.lse)  # noqa: E731
    call()
    (plan,) = api._plans.values()
    print(f"{torch.cuda.get_device_name()}: q, k, v [1, 8, {a.n}, 128] bf16, {plan.choice.name}")
    if plan.direct is None:
        print("this plan has no direct path (eager.runner returned None): only the ops path is timed")
    rows = [("attention() per call", host_us(call, a.calls)),
            ("same plan through the torch ops", host_us(lambda: plan._run_kernel(q, k, v, plan.scale), a.calls))]
    if plan.direct is not None:
        d = plan.direct
        rows.append(("  direct path alone (Direct.__call__)", host_us(lambda: d(q, k, v, plan.scale), a.calls)))
        real_launch = launch.launch
        launch.launch = lambda *args: None
        try:
            rows.append(("  direct path, launches skipped", host_us(lambda: d(q, k, v, plan.scale), a.calls)))
        finally:
            launch.launch = real_launch
        ws, shape, dt = d.quant.workspace_bytes, d.out_shape, d.out_dtype
        rows.append(("  workspace + output torch.empty",
                     host_us(lambda: (torch.empty(ws, device="cuda", dtype=torch.uint8),
                                      torch.empty(shape, device="cuda", dtype=dt)), a.calls)))
        rows.append(("  current stream handle", host_us(lambda: current_stream_handle(0), a.calls)))
        o = call()
        run = plan.run
        plan.run = lambda *args: o
        try:
            rows.append(("api layer alone (plan lookup, run mocked)", host_us(call, a.calls)))
        finally:
            plan.run = run
    print(f"{'':44s} {'host us':>8s} {'host+GPU':>9s}")
    for label, (host, total) in rows:
        print(f"{label:44s} {host:8.1f} {total:9.1f}")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(a.calls):
        call()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(22)


if __name__ == "__main__":
    main()
