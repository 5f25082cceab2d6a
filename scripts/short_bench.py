"""Short key sequences (nk <= 128): the one-launch attn_short family against the two-launch path it replaces and
torch SDPA (flash, cuDNN), per call. Needs a GPU.

Two numbers per method and shape, both in microseconds per call:
  * wall: back-to-back calls from Python, then one synchronize (host overhead and GPU time, pipelined: what a
    caller issuing many small attentions sees);
  * gpu: the same call captured once in a CUDA graph and replayed (GPU time alone, launch gaps included).
``--tiles`` also times every attn_short tile (the heuristic's order, registry.SHORT_TILES) by its gpu number.

usage: python3 scripts/short_bench.py [--out results.json] [--tiles]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import sagegen  # noqa: E402
from sagegen.runtime import api, registry  # noqa: E402

# (B, H, nq, nk, d, causal)
SHAPES = [(1, 8, 128, 128, 128, False), (1, 32, 128, 128, 128, False), (4, 32, 128, 128, 128, False),
          (16, 32, 128, 128, 128, False), (4, 32, 128, 128, 128, True), (4, 32, 64, 64, 64, False),
          (1, 8, 1, 128, 128, False), (2, 16, 512, 77, 128, False), (2, 16, 1024, 77, 128, False),
          (2, 16, 2048, 77, 128, False), (2, 16, 4096, 77, 128, False), (2, 16, 1024, 77, 64, False),
          (2, 16, 4096, 77, 64, False)]


def wall_us(fn, calls: int = 200) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t) / calls * 1e6)
    return best


def gpu_us(fn, replays: int = 200) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(3):
        start.record()
        for _ in range(replays):
            g.replay()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / replays)
    return best


def sdpa(backend: str, q, k, v, causal: bool):
    if backend == "flash":
        return lambda: torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, is_causal=causal)[0]
    return lambda: torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, False, is_causal=causal)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--tiles", action="store_true", help="also time every attn_short tile")
    a = ap.parse_args(argv)
    rows = []
    sms = api.sm_count(0)
    print(f"{torch.cuda.get_device_name()}, bf16, us per call (wall: back-to-back from Python; gpu: CUDA-graph "
          f"replay)")
    for B, H, nq, nk, d, causal in SHAPES:
        q = torch.randn(B, H, nq, d, device="cuda", dtype=torch.bfloat16)
        k, v = (torch.randn(B, H, nk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        shape = api.inspect_inputs(q, k, v, is_causal=causal)
        key = shape.key()
        family = "attn_wgmma" if key.arch == "sm90a" else "attn_mma"
        methods = {
            "sagegen": None,  # the registry's choice: attn_short here
            "two-launch": registry.heuristic(key, sm_count=sms, family=family),
        }
        if a.tiles:
            for spec in registry.candidate_specs(key):
                if spec.family == "attn_short" and spec.qg == "thread":
                    methods[f"short m{spec.m} n{spec.n} w{spec.w}"] = spec
        label = f"B={B} H={H} nq={nq} nk={nk} d={d}{' causal' if causal else ''}"
        for name, variant in methods.items():
            def call(variant=variant):
                return sagegen.attention(q, k, v, is_causal=causal, sdpa_fallback=False, variant=variant)
            chosen = api.describe(q, k, v, is_causal=causal, sdpa_fallback=False, variant=variant).name
            rows.append(dict(shape=label, method=name, variant=chosen, wall_us=wall_us(call), gpu_us=gpu_us(call)))
        if nq == nk or not causal:
            for backend in ("flash", "cudnn"):
                fn = sdpa(backend, q, k, v, causal)
                try:
                    fn()
                except RuntimeError as e:  # a backend that refuses the shape
                    print(f"  {label} sdpa-{backend}: {str(e).splitlines()[0][:80]}")
                    continue
                rows.append(dict(shape=label, method=f"sdpa-{backend}", variant=backend, wall_us=wall_us(fn),
                                 gpu_us=gpu_us(fn)))
        for r in rows:
            if r["shape"] == label:
                print(f"{label:40s} {r['method']:22s} wall {r['wall_us']:7.1f}  gpu {r['gpu_us']:7.1f}  "
                      f"{r['variant'][:60]}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"),
                                           "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
