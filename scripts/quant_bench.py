"""Time the quantization passes alone (stats + qkv, each V mode) against the copy bandwidth. Dev tool.

usage: python3 scripts/quant_bench.py [--n 8192 16384] [--d 128 64] [--v f16 f16w e4m3w i8w]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main():
    import torch
    from triton.testing import do_bench

    from sagegen.quant_layout import ScaleGroups
    from sagegen.runtime.quant import quantize

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--d", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--v", nargs="+", default=["f16", "e4m3w"], choices=["f16", "f16w", "e4m3w", "i8w"],
                    help="V modes to time (f16w, e4m3w, i8w: Q, K and V in the wgmma operand images)")
    a = ap.parse_args()
    B, H = 4, 32
    x = torch.empty(1 << 29, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    copy = 2 * x.numel() * 2 / do_bench(lambda: y.copy_(x), return_mode="median") / 1e6
    x = y = None
    print(f"{torch.cuda.get_device_name(0)}: copy {copy:.0f} GB/s")
    for d in a.d:
        for n in a.n:
            q, k, v = (torch.randn(B, H, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            el = B * H * n * d
            for mode, image in [(m, m != "f16") for m in a.v]:
                fn = lambda: quantize(q, k, v, layout="HND", q_groups=ScaleGroups(16, 8),
                                      k_groups=ScaleGroups(128, 4), v_mode=mode, qk_image=image)
                ms = do_bench(fn, return_mode="median")
                v8 = mode in ("e4m3w", "i8w")  # 8-bit V: the stats pass reads V too, the qkv pass writes 1 byte
                moved = el * 2 * (2 if v8 else 1) + el * 2 * 3 + el * 2 + el * (1 if v8 else 2)
                print(f"d={d} n={n} v={mode}: {ms * 1e3:.0f} us, {moved / ms / 1e6:.0f} GB/s "
                      f"({100 * moved / ms / 1e6 / copy:.0f}% of copy)", flush=True)


if __name__ == "__main__":
    main()
