"""One device call: build variants, check them against fp32 attention, time a few. Dev tool; prints a table last.

usage: python3 scripts/gpu_check.py [--filter GLOB] [--time] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from sagegen.build import build  # noqa: E402
from sagegen.render import default_out_dir  # noqa: E402
from sagegen.runtime import attn_mma as A  # noqa: E402
from sagegen.runtime.device import device_arch  # noqa: E402
from sagegen.variants import select  # noqa: E402


def metrics(o, r):
    from sagegen.reference.metrics import cosine, rel_l1

    return rel_l1(o, r), cosine(o, r), bool(torch.isfinite(o).all())


def check(spec, B, Hq, Hkv, nq, nk, d, layout, dtype, offset, gen):
    shape = lambda h, n: (B, h, n, d) if layout == "HND" else (B, n, h, d)
    q = torch.randn(shape(Hq, nq), generator=gen, device="cuda").to(dtype)
    k = torch.randn(shape(Hkv, nk), generator=gen, device="cuda").to(dtype)
    v = torch.randn(shape(Hkv, nk), generator=gen, device="cuda").to(dtype)
    out = torch.full(q.shape, float("nan"), device="cuda", dtype=A.OUT_DTYPES[spec.o])  # poison
    o, lse = A.forward(q, k, v, spec, layout=layout, sm_scale=1 / math.sqrt(d), causal_offset=offset,
                       return_lse=True, out=out)
    torch.cuda.synchronize()
    from sagegen.reference import attention_exact

    # the cases use offset 0 with nq == nk, or nk - nq: bottom-right alignment either way
    ro, rl = attention_exact(q, k, v, causal=spec.causal, causal_align="bottom_right", layout=layout,
                             dtype=torch.float32)
    rel, cos, finite = metrics(o, ro)
    fin = torch.isfinite(rl)
    lse_err = (lse[fin] - rl[fin]).abs().max().item() if fin.any() else 0.0
    return rel, cos, finite, lse_err


def tops(B, H, n, d, causal, ms):
    return 4 * B * H * n * n * d / (ms * 1e-3) / 1e12 / (2 if causal else 1)


def time_ms(fn, iters=20):
    from triton.testing import do_bench

    return do_bench(fn, warmup=50, rep=200, return_mode="median")


def build_for_device(pattern: str):
    """Compile the variants matching ``pattern`` plus the quantization family for GPU 0's arch; print a summary
    and the first failures. Returns (specs, build result)."""
    arch = device_arch(0).name
    print("device", torch.cuda.get_device_name(0), arch, flush=True)
    specs = select([arch], pattern) + select([arch], "quant_*")
    t = time.time()
    res = build(specs, out_dir=default_out_dir(), jobs=16, progress=False)
    print(f"build: {len(res.built)} built {len(res.cached)} cached {len(res.failed)} failed {time.time() - t:.1f}s",
          flush=True)
    for n, e in list(res.failed.items())[:3]:
        print(n, e[:3000])
    return specs, res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--filter", default="attn_mma_*")
    ap.add_argument("--time", action="store_true")
    ap.add_argument("--time-n", type=int, nargs="+", default=[8192])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs, res = build_for_device(args.filter)
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    attn_specs = [s for s in specs if s.family == "attn_mma" and s.name not in res.failed]
    for spec in attn_specs:
        dtype = torch.bfloat16 if spec.o == "bf16" else torch.float16
        cases = [(2, 4, 4, 1000, 1000, spec.d, "HND", 0), (1, 8, 2, 257, 4097, spec.d, "NHD", 4097 - 257),
                 (1, 2, 1, 17, 17, spec.d - 8, "HND", 0)]
        for B, Hq, Hkv, nq, nk, d, layout, off in cases:
            offset = off if spec.causal else 0
            try:
                rel, cos, finite, lse_err = check(spec, B, Hq, Hkv, nq, nk, d, layout, dtype, offset, gen)
            except Exception as e:  # keep going: one table for every variant
                rows.append({"name": spec.name, "case": f"{nq}x{nk} d{d} {layout}", "error": repr(e)[:300]})
                continue
            rows.append({"name": spec.name, "case": f"{nq}x{nk} d{d} {layout}", "rel_l1": rel, "cos": cos,
                         "finite": finite, "lse_err": lse_err})
    bad = [r for r in rows if "error" in r or not r["finite"] or r["rel_l1"] > 0.03 or r["lse_err"] > 0.05]
    (out / "check.json").write_text(json.dumps(rows, indent=1))
    print(f"checked {len(rows)} cases, {len(bad)} bad")
    for r in bad[:20]:
        print("BAD", r)
    worst = max((r for r in rows if "rel_l1" in r), key=lambda r: r["rel_l1"], default=None)
    print("worst", worst)
    if args.time:
        from sagegen.quant_layout import ScaleGroups
        from sagegen.runtime.quant import quantize
        B, H, d, n = 4, 32, 128, 8192
        q, k, v = (torch.randn(B, H, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        x = torch.empty(B * H * n * d * 3, device="cuda", dtype=torch.bfloat16)
        y = torch.empty_like(x)
        ms = time_ms(lambda: y.copy_(x))
        print(f"copy: {2 * x.numel() * 2 / ms / 1e6:.0f} GB/s")
        el = B * H * n * d
        for mode in ("none", "f16", "e4m3t"):
            ms = time_ms(lambda: quantize(q, k, v, layout="HND", q_groups=ScaleGroups(32), k_groups=ScaleGroups(64),
                                          v_mode=mode))
            read = el * 2 * (3 if mode != "none" else 2) + el * 2 * (2 if mode == "e4m3t" else 1)
            write = el * 2 + {"none": 0, "f16": el * 2, "e4m3t": el}[mode]
            print(f"quant v={mode}: {ms * 1e3:.0f} us, {(read + write) / ms / 1e6:.0f} GB/s (stats+qkv passes)")
        B, H, d = 4, 32, 128
        for n in args.time_n:
            q, k, v = (torch.randn(B, H, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
            for causal in (False, True):
                line = [f"n={n} causal={causal}"]
                for spec in [s for s in attn_specs if s.d == d and s.causal == causal and s.o == "bf16" and s.acc == "f32"]:
                    p = A.Prepared(q, k, v, spec, "HND", False)
                    ms = time_ms(lambda: A.run_kernel(p, sm_scale=d ** -0.5))
                    ms_e2e = time_ms(lambda: A.forward(q, k, v, spec, layout="HND", sm_scale=d ** -0.5))
                    line.append(f"{spec.name.split('_o_bf16_')[1]} k={tops(B,H,n,d,causal,ms):.0f} e2e={tops(B,H,n,d,causal,ms_e2e):.0f}")
                for backend in ("flash", "cudnn"):
                    from torch.nn.attention import SDPBackend, sdpa_kernel
                    be = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
                    with sdpa_kernel(be):
                        ms = time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal))
                    line.append(f"{backend}={tops(B,H,n,d,causal,ms):.0f}")
                print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
