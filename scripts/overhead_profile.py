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
from sagegen.runtime import api, launch, registry  # noqa: E402
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


def profile_plan(label: str, q, k, v, variant, lse: bool, calls: int) -> list:
    """Rows (label, (host us, host+GPU us)) for one plan: attention() and its parts."""
    api.clear_plans()
    call = lambda: sagegen.attention(q, k, v, sdpa_fallback=False, return_lse=lse, variant=variant)  # noqa: E731
    call()
    (plan,) = api._plans.values()
    short = plan.choice.spec.family == "attn_short"
    print(f"{label}: {plan.choice.name}" + ("" if plan.direct is not None else " (no direct path: ops only)"))
    ops_path = plan._run_short if short else plan._run_kernel
    rows = [(f"[{label}] attention() per call", host_us(call, calls)),
            ("  same plan through the torch ops", host_us(lambda: ops_path(q, k, v, plan.scale), calls))]
    if plan.direct is not None:
        d = plan.direct
        rows.append(("  direct path alone", host_us(lambda: d(q, k, v, plan.scale), calls)))
        real_launch, real_cu = launch.launch, launch._cu_launch
        launch.launch, launch._cu_launch = (lambda *args: None), (lambda *args: (0,))
        try:
            rows.append(("  direct path, driver call stubbed", host_us(lambda: d(q, k, v, plan.scale), calls)))
        finally:
            launch.launch, launch._cu_launch = real_launch, real_cu
        shape, dt = d.out_shape, d.out_dtype
        if short:
            rows.append(("  output torch.empty", host_us(lambda: torch.empty(shape, device="cuda", dtype=dt), calls)))
        else:
            ws = d.quant.workspace_bytes
            rows.append(("  workspace + output torch.empty",
                         host_us(lambda: (torch.empty(ws, device="cuda", dtype=torch.uint8),
                                          torch.empty(shape, device="cuda", dtype=dt)), calls)))
        rows.append(("  current stream handle", host_us(lambda: current_stream_handle(0), calls)))
        o = call()
        run = plan.run
        plan.run = lambda *args: o
        try:
            rows.append(("  api layer alone (plan lookup, run mocked)", host_us(call, calls)))
        finally:
            plan.run = run
    return rows, call


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--lse", action="store_true", help="return_lse=True (more allocations)")
    a = ap.parse_args(argv)
    q, k, v = (torch.randn(1, 8, a.n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    print(f"{torch.cuda.get_device_name()}: q, k, v [1, 8, {a.n}, 128] bf16, return_lse={a.lse}")
    # The registry's choice (attn_short: one launch, for n <= 128), then the two-launch path it replaces there:
    # the heuristic's choice among the pass-fed families (attn_wgmma on sm90a, attn_mma elsewhere).
    shape = api.inspect_inputs(q, k, v, return_lse=a.lse)
    key = shape.key()
    family = "attn_wgmma" if key.arch == "sm90a" else "attn_mma"
    two = registry.heuristic(key, sm_count=api.sm_count(0), family=family)
    rows, call = profile_plan("default", q, k, v, None, a.lse, a.calls)
    rows += profile_plan("two launches", q, k, v, two, a.lse, a.calls)[0]
    print(f"{'':48s} {'host us':>8s} {'host+GPU':>9s}")
    for label, (host, total) in rows:
        print(f"{label:48s} {host:8.1f} {total:9.1f}")
    api.clear_plans()
    call()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(a.calls):
        call()
    prof.disable()
    torch.cuda.synchronize()
    pstats.Stats(prof).sort_stats("tottime").print_stats(22)


if __name__ == "__main__":
    main()
