"""Where the host time of one small sagegen.attention call goes (cProfile, N=128). Dev tool.

usage: python3 scripts/overhead_profile.py [--calls 300]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    a = ap.parse_args()
    q, k, v = (torch.randn(1, 8, 128, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for _ in range(20):
        sagegen.attention(q, k, v, sdpa_fallback=False)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(a.calls):
        sagegen.attention(q, k, v, sdpa_fallback=False)
    host = (time.perf_counter() - t) / a.calls * 1e6
    torch.cuda.synchronize()
    print(f"host time per call: {host:.1f} us")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(a.calls):
        sagegen.attention(q, k, v, sdpa_fallback=False)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(22)


if __name__ == "__main__":
    main()
