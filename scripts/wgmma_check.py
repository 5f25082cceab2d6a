"""One device call for the sm90a wgmma family: build, check every variant against exact attention and against the
SageAttention2 emulation, inspect SASS, time kernel-only and end-to-end next to torch SDPA. Dev tool.

usage: python3 scripts/wgmma_check.py [--filter GLOB] [--time] [--time-n N ...] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from gpu_check import build_for_device  # noqa: E402  (scripts/ is on sys.path when run as a script)
from sagegen.jit import cubin_for  # noqa: E402
from sagegen.runtime import attn_wgmma as W  # noqa: E402



def inputs(B, Hq, Hkv, nq, nk, d, layout, dtype, gen, kind="randn"):
    shape = lambda h, n: (B, h, n, d) if layout == "HND" else (B, n, h, d)
    q, k, v = (torch.randn(shape(h, n), generator=gen, device="cuda") for h, n in ((Hq, nq), (Hkv, nk), (Hkv, nk)))
    if kind == "outlier":  # channel outliers in K (what smoothing is for) and in V
        k[..., 3] += 20.0
        v[..., 5] *= 30.0
    if kind == "zeros":  # an all-zero block of Q and K rows
        sl = (slice(None), slice(None), slice(0, 128)) if layout == "HND" else (slice(None), slice(0, 128))
        q[sl] = 0.0
        k[sl] = 0.0
    return q.to(dtype), k.to(dtype), v.to(dtype)


def check(spec, B, Hq, Hkv, nq, nk, d, layout, dtype, offset, gen, kind):
    from sagegen.reference import attention_exact, sage2_attention
    from sagegen.reference.metrics import cosine, rel_l1

    q, k, v = inputs(B, Hq, Hkv, nq, nk, d, layout, dtype, gen, kind)
    out = torch.full(q.shape, float("nan"), device="cuda", dtype=W.OUT_DTYPES[spec.o])  # poison
    o, lse = W.forward(q, k, v, spec, layout=layout, sm_scale=1 / math.sqrt(d), causal_offset=offset,
                       return_lse=True, out=out)
    torch.cuda.synchronize()
    ro, rl = attention_exact(q, k, v, causal=spec.causal, causal_align="bottom_right", layout=layout,
                             dtype=torch.float32)
    eo, _ = sage2_attention(q, k, v, causal=spec.causal, causal_align="bottom_right", layout=layout,
                            **spec.emulation())
    fin = torch.isfinite(rl)
    lse_err = (lse[fin] - rl[fin]).abs().max().item() if fin.any() else 0.0
    return {"rel_l1": rel_l1(o, ro), "cos": cosine(o, ro), "rel_l1_emul": rel_l1(o, eo),
            "finite": bool(torch.isfinite(o).all()), "lse_err": lse_err}


def tops(B, H, n, d, causal, ms):
    return 4 * B * H * n * n * d / (ms * 1e-3) / 1e12 / (2 if causal else 1)


def time_ms(fn):
    from triton.testing import do_bench

    return do_bench(fn, warmup=30, rep=150, return_mode="median")


def sass_report(spec, out: Path) -> str:
    tool = shutil.which("cuobjdump")
    if tool is None:
        return "no cuobjdump"
    cubin, _ = cubin_for(spec)
    path = out / f"{spec.name}.cubin"
    path.write_bytes(cubin)
    sass = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True).stdout
    (out / f"{spec.name}.sass").write_text(sass)
    ops = re.findall(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass, re.M)
    count = lambda p: sum(1 for o in ops if o.startswith(p))
    return (f"IGMMA={count('IGMMA')} QGMMA={count('QGMMA')} HGMMA={count('HGMMA')} LDL={count('LDL')} "
            f"STL={count('STL')} MUFU.EX2={count('MUFU.EX2')} UBLKCP={count('UBLKCP')} SYNCS={count('SYNCS')}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--filter", default="attn_wgmma_*")
    ap.add_argument("--time", action="store_true")
    ap.add_argument("--time-n", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--time-d", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--quick", action="store_true", help="check one case per variant")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs, res = build_for_device(args.filter)
    attn = [s for s in specs if s.family == "attn_wgmma" and s.name not in res.failed]
    for s in attn[:1] + [s for s in attn if s.d == 64][:1] + [s for s in attn if s.pv == "f16"][:1]:
        print("sass", s.name, sass_report(s, out), flush=True)

    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for spec in attn:
        dtype = torch.bfloat16 if spec.o == "bf16" else torch.float16
        cases = [(2, 4, 4, 1000, 1000, spec.d, "HND", 0, "randn")]
        if not args.quick:
            cases += [(1, 8, 2, 257, 4097, spec.d, "NHD", 4097 - 257, "randn"),
                      (1, 2, 1, 17, 17, spec.d - 8, "HND", 0, "outlier"),
                      (1, 2, 2, 4097, 300, spec.d, "HND", 300 - 4097, "zeros"),
                      (1, 1, 1, 1, 1, spec.d, "NHD", 0, "randn")]
        for B, Hq, Hkv, nq, nk, d, layout, off, kind in cases:
            offset = off if spec.causal else 0
            case = f"{B}x{Hq}/{Hkv} {nq}x{nk} d{d} {layout} {kind}"
            try:
                r = check(spec, B, Hq, Hkv, nq, nk, d, layout, dtype, offset, gen, kind)
            except Exception as e:  # keep going: one table for every variant
                rows.append({"name": spec.name, "case": case, "error": repr(e)[:400]})
                continue
            rows.append({"name": spec.name, "case": case, **r})
    bad = [r for r in rows if "error" in r or not r["finite"] or r["rel_l1"] > 0.05 or r["lse_err"] > 0.05
           or r["rel_l1_emul"] > 0.01]
    (out / "wgmma_check.json").write_text(json.dumps(rows, indent=1))
    print(f"checked {len(rows)} cases, {len(bad)} bad", flush=True)
    for r in bad[:12]:
        print("BAD", r)
    for key in ("rel_l1", "rel_l1_emul"):
        worst = max((r for r in rows if key in r), key=lambda r: r[key], default=None)
        print("worst", key, worst)
    good = [r for r in rows if "rel_l1" in r and "randn" in r["case"] and "1000x1000" in r["case"]]
    if good:
        print("N(0,1) 1000x1000 rel_l1 range", min(r["rel_l1"] for r in good), max(r["rel_l1"] for r in good),
              "cos min", min(r["cos"] for r in good))

    if args.time:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        B, H = 4, 32
        for d in args.time_d:
            for n in args.time_n:
                q, k, v = (torch.randn(B, H, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
                for causal in (False, True):
                    line = [f"d={d} n={n} causal={causal}"]
                    for spec in [s for s in attn if s.d == d and s.causal == causal and s.o == "bf16"
                                 and s.qg == "thread"]:
                        qz = W.quantize_for(q, k, v, spec, "HND", False)
                        run = lambda: W.run_kernel(qz, spec, q_shape=q.shape, layout="HND", B=B, Hq=H, Hkv=H,
                                                   sm_scale=d ** -0.5)
                        ms = time_ms(run)
                        ms_q = time_ms(lambda: W.quantize_for(q, k, v, spec, "HND", False))
                        ms_e2e = time_ms(lambda: W.forward(q, k, v, spec, layout="HND", sm_scale=d ** -0.5))
                        label = (f"{spec.pv}-m{spec.m}-s{spec.s}{'ovl' if spec.overlap else 'seq'}"
                                 f"{'pp' if spec.pingpong else ''}{'-rsmma' if spec.rowsum == 'mma' else ''}")
                        line.append(f"{label} k={tops(B, H, n, d, causal, ms):.0f} "
                                    f"e2e={tops(B, H, n, d, causal, ms_e2e):.0f} quant={ms_q * 1e3:.0f}us")
                    for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                        try:
                            with sdpa_kernel(be):
                                ms = time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(
                                    q, k, v, is_causal=causal))
                            line.append(f"{name}={tops(B, H, n, d, causal, ms):.0f}")
                        except Exception:  # noqa: BLE001
                            line.append(f"{name}=err")
                    print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
