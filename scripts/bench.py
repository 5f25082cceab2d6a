"""Benchmark: sagegen (kernel only and end to end) next to torch SDPA (flash, cuDNN) and the sageattention 1.0.6
Triton package when installed, plus the quantization pass against the GPU's copy bandwidth. One run; prints a
compact table last and writes JSON and a PNG bar chart.

usage: python3 scripts/bench.py [--quick] [--n 1024 8192] [--d 128] [--causal 0 1] [--variants GLOB]
                                [--gqa 4] [--out bench.json] [--png bench.png]

TOPS = 4 * B * H * N^2 * d / time (halved when causal). B = 4, H = 32 query heads (32 / --gqa key/value heads),
bf16 in and out. Times are medians of triton.testing.do_bench (CUDA events when triton is missing). "kernel" times
the attention kernel alone on inputs quantized once (attn_mma.Prepared + run_kernel, or attn_wgmma.quantize_for +
run_kernel); "e2e" times sagegen.attention() with the SDPA fallback disabled (quantization + kernel + Python),
running the registry's choice for the shape (heuristic, or the autotuner's with SAGEGEN_AUTOTUNE=1) and any
--variants matches; "default" times the plain call (the registry may run cuDNN). The full sweep (d 64/128, causal off/on, N 1k..32k) takes a few
minutes on an H100.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

B, H = 4, 32
NS = (1024, 2048, 4096, 8192, 16384, 32768)
QUICK_NS = (1024, 8192)
COPY_BYTES = 1 << 30  # the copy that measures the bandwidth ceiling: 1 GiB read + 1 GiB written
METHODS = ("flash", "cudnn", "sage1-triton", "sagegen-kernel", "sagegen-e2e", "sagegen-default")


def tops(b: int, h: int, n: int, d: int, causal: bool, ms: float) -> float:
    return 4 * b * h * n * n * d / (ms * 1e-3) / 1e12 / (2 if causal else 1)


def quant_bytes(b: int, hq: int, hkv: int, nq: int, nk: int, d: int, *, in_bytes: int, v_copy: bool,
                q_scales: int, k_scales: int, stats_splits: int, v_fp8: bool = False) -> int:
    """HBM bytes both quantization passes move (sagegen.runtime.quant): the stats pass reads K and writes fp32
    per-split channel sums; the qkv pass reads Q, K (and V when it is copied), writes int8 Q and K padded to
    N_ALIGN rows and D channels, fp32 scales, and the fp16 V copy. The stats partials are read back by the qkv
    pass (counted once more).

    ``v_fp8`` (V quantized to 8 bits, e4m3 or int8, as the wgmma family reads it; implies v_copy): the stats pass
    also reads V and writes per-split channel amax; the V copy is 1 byte per element plus a per-channel fp32 scale."""
    from sagegen.quant_layout import padded_dim, padded_len

    D = padded_dim(d)
    nq_pad, nk_pad = padded_len(nq), padded_len(nk)
    v_copy = v_copy or v_fp8
    partials = 2 if v_fp8 else 1  # K sums (and V amax), each written once and read once
    stats = b * hkv * nk * d * in_bytes * (2 if v_fp8 else 1) + partials * 2 * b * hkv * stats_splits * D * 4
    read = (b * hq * nq + b * hkv * nk * (2 if v_copy else 1)) * d * in_bytes
    write = b * hq * nq_pad * D + b * hkv * nk_pad * D + (b * hq * q_scales + b * hkv * k_scales) * 4
    if v_fp8:
        write += b * hkv * nk_pad * D + b * hkv * D * 4
    elif v_copy:
        write += b * hkv * nk_pad * D * 2
    return stats + read + write


def bench_ms(fn) -> float:
    try:
        from triton.testing import do_bench
    except ImportError:
        return _events_ms(fn)
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def _events_ms(fn, reps: int = 20) -> float:
    import statistics

    import torch

    for _ in range(3):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for s, e in ev:
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in ev)


def rel_l1(o, r) -> float:
    o, r = o.float(), r.float()
    return ((o - r).abs().sum() / r.abs().sum().clamp_min(1e-30)).item()


def format_table(rows: list[dict], quant_rows: list[dict], copy_gbps: float, hkv: int = H) -> str:
    """The compact table printed last: TOPS per method, the e2e speed-up over the Triton SageAttention1, rel-L1 of
    sagegen's output against flash (exact bf16 attention), and the quantization pass."""
    by = {}
    for r in rows:
        by.setdefault((r["d"], r["causal"], r["n"]), {}).setdefault(r["method"], r)
    head = (f"{'d':>4} {'causal':>6} {'N':>6} | " + " ".join(f"{m:>14}" for m in METHODS)
            + f" | {'e2e/triton':>10} {'rel-L1':>8}  variant")
    lines = [f"TOPS (B={B}, H={H}" + (f", {hkv} KV heads" if hkv != H else "") + ", bf16)", head, "-" * len(head)]
    for (d, causal, n), ms in sorted(by.items()):
        cells = [f"{ms[m]['tops']:14.1f}" if m in ms and ms[m].get("tops") else f"{'-':>14}" for m in METHODS]
        e2e, tri = ms.get("sagegen-e2e", {}).get("tops"), ms.get("sage1-triton", {}).get("tops")
        ratio = f"{e2e / tri:10.2f}" if e2e and tri else f"{'-':>10}"
        err = ms.get("sagegen-e2e", {}).get("rel_l1")
        variant = ms.get("sagegen-e2e", {}).get("variant", "")
        short = variant.split("_o_")[-1] if variant else ""
        lines.append(f"{d:>4} {str(causal):>6} {n:>6} | " + " ".join(cells) + f" | {ratio} "
                     + (f"{err:8.4f}" if err is not None else f"{'-':>8}") + f"  {short}")
    if quant_rows:
        lines += ["", f"quantization pass (copy ceiling {copy_gbps:.0f} GB/s)",
                  f"{'d':>4} {'N':>6} | {'us':>9} {'MB':>9} {'GB/s':>8} {'% copy':>7}"]
        for q in quant_rows:
            lines.append(f"{q['d']:>4} {q['n']:>6} | {q['us']:9.1f} {q['bytes'] / 1e6:9.1f} {q['gbps']:8.0f} "
                         f"{q['pct_of_copy']:7.1f}")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = sorted({(r["d"], r["causal"]) for r in rows})
    fig, axes = plt.subplots(len(combos), 1, figsize=(12, 3.2 * len(combos)), squeeze=False)
    for ax, (d, causal) in zip(axes[:, 0], combos):
        ns = sorted({r["n"] for r in rows if r["d"] == d and r["causal"] == causal})
        present = [m for m in METHODS if any(r["method"] == m and r["d"] == d and r["causal"] == causal
                                             for r in rows)]
        width = 0.8 / max(1, len(present))
        for i, m in enumerate(present):
            vals = []
            for n in ns:
                hit = [r for r in rows if (r["d"], r["causal"], r["n"], r["method"]) == (d, causal, n, m)]
                vals.append(max((r.get("tops") or 0.0) for r in hit) if hit else 0.0)
            ax.bar([j + i * width for j in range(len(ns))], vals, width, label=m)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(ns))], [f"{n // 1024}k" for n in ns])
        ax.set_ylabel("TOPS")
        ax.set_title(f"d={d} {'causal' if causal else 'full'}")
        ax.legend(fontsize=7, ncol=len(present))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", help="sequence lengths (default 1k..32k)")
    ap.add_argument("--d", type=int, nargs="+", choices=(64, 128, 256), help="head dims (default 64 128)")
    ap.add_argument("--causal", type=int, nargs="+", choices=(0, 1), help="0 full, 1 causal (default both)")
    ap.add_argument("--quick", action="store_true", help=f"N {QUICK_NS}, d 128")
    ap.add_argument("--variants", help="also time the attention variants matching this glob (per shape's d/causal)")
    ap.add_argument("--no-baselines", action="store_true", help="skip torch SDPA and sageattention")
    ap.add_argument("--gqa", type=int, default=1, metavar="G",
                    help=f"query heads per key/value head (grouped-query attention): {H} / G KV heads (default 1)")
    ap.add_argument("--precision", choices=("fast", "balanced", "accurate"), default="fast",
                    help="sagegen.attention's precision to time (default fast)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "bench.json"), help="JSON path")
    ap.add_argument("--png", help="chart path (default: the JSON path with .png)")
    args = ap.parse_args(argv)
    if args.gqa < 1 or H % args.gqa:
        ap.error(f"--gqa must divide the {H} query heads, got {args.gqa}")
    hkv, gqa = H // args.gqa, args.gqa > 1

    import torch

    from sagegen.build import build
    from sagegen.render import default_out_dir
    from sagegen.runtime import api, ops, registry
    from sagegen.runtime import attn_mma as A
    from sagegen.runtime import attn_short as S
    from sagegen.runtime import attn_wgmma as W
    from sagegen.runtime.device import device_arch
    from sagegen.runtime.quant import _STATS_SPLITS
    from sagegen.quant_layout import N_ALIGN
    from sagegen.variants import select

    ns = args.n or (QUICK_NS if args.quick else NS)
    ds = args.d or ((128,) if args.quick else (64, 128))
    causals = [bool(c) for c in (args.causal or (0, 1))]
    dev = torch.cuda.current_device()
    arch = device_arch(dev).name
    card = torch.cuda.get_device_name(dev)
    date = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"{card} ({arch}), torch {torch.__version__}, {date}", flush=True)
    dtype = torch.bfloat16
    t_start = time.time()

    try:
        from sageattention import sageattn
    except Exception as e:  # not installed, or its triton import failed
        sageattn = None
        print(f"sageattention not available ({type(e).__name__}: {e}); its column stays empty", flush=True)

    # compile up front, in parallel: the quantization passes, each shape's heuristic choice, any --variants (a
    # tuned choice that differs is compiled on first use)
    extra = select([arch], args.variants) if args.variants else []
    specs = {s.name: s for s in extra}
    for d in ds:
        for causal in causals:
            for n in ns:
                key = registry.make_key(arch=arch, dtype="bf16", out="bf16", d=d, causal=causal, nq=n, nk=n,
                                        batch_heads=B * H, gqa=args.gqa, precision=args.precision)
                spec = registry.heuristic(key, sm_count=api.sm_count(dev))
                specs[spec.name] = spec
    built = build(list(specs.values()) + select([arch], "quant_*_x_bf16_*"), out_dir=default_out_dir(),
                  jobs=os.cpu_count(), progress=False)
    if built.failed:
        for name, err in built.failed.items():
            print(f"build failed: {name}: {err[:500]}")
    print(f"build: {len(built.built)} built, {len(built.cached)} cached ({built.seconds:.0f} s)", flush=True)

    x = torch.empty(COPY_BYTES // 2, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    copy_gbps = 2 * COPY_BYTES / (bench_ms(lambda: y.copy_(x)) * 1e-3) / 1e9
    x = y = None  # free them (not `del`: the timed lambdas name them)
    print(f"device-to-device copy: {copy_gbps:.0f} GB/s", flush=True)

    rows, quant_rows = [], []
    for d in ds:
        for n in ns:
            g = torch.Generator(device="cuda").manual_seed(n + d)
            q, k, v = (torch.randn(B, heads, n, d, device="cuda", dtype=dtype, generator=g) for heads in (H, hkv, hkv))
            scale = d ** -0.5
            for causal in causals:
                def add(method, ms, **extra_fields):
                    row = {"d": d, "n": n, "causal": causal, "method": method, "ms": ms,
                           "tops": tops(B, H, n, d, causal, ms) if ms else None, **extra_fields}
                    rows.append(row)
                    return row

                ref = None
                if not args.no_baselines:
                    from torch.nn.attention import SDPBackend, sdpa_kernel

                    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION),
                                          ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                        try:
                            with sdpa_kernel(backend):
                                out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                                       enable_gqa=gqa)
                                ms = bench_ms(lambda: torch.nn.functional.scaled_dot_product_attention(
                                    q, k, v, is_causal=causal, enable_gqa=gqa))
                            ref = out if ref is None else ref
                            add(name, ms)
                        except Exception as e:
                            add(name, None, error=f"{type(e).__name__}: {e}"[:300])
                    if sageattn is not None and not gqa:  # (its Triton kernel wants as many KV heads as Q)
                        try:
                            out = sageattn(q, k, v, tensor_layout="HND", is_causal=causal)
                            ms = bench_ms(lambda: sageattn(q, k, v, tensor_layout="HND", is_causal=causal))
                            add("sage1-triton", ms, rel_l1=rel_l1(out, ref) if ref is not None else None)
                        except Exception as e:
                            add("sage1-triton", None, error=f"{type(e).__name__}: {e}"[:300])
                prec = {"precision": args.precision}
                chosen = api.describe(q, k, v, is_causal=causal, sdpa_fallback=False, **prec).spec
                if causal == causals[0]:
                    quant_spec = chosen
                variants = [chosen] + [s for s in extra if s.d == d and s.causal == causal and s.o == "bf16"
                                       and s.name != chosen.name and s.name not in built.failed]
                for spec in variants:
                    tag = "" if spec is chosen else "*"  # extra variants are marked in the method name
                    try:
                        if spec.family == "attn_wgmma":
                            qz = W.quantize_for(q, k, v, spec, "HND", False)
                            ms_k = bench_ms(lambda: W.run_kernel(qz, spec, q_shape=q.shape, layout="HND", B=B, Hq=H,
                                                                 Hkv=hkv, sm_scale=scale))
                            qz = None
                        elif spec.family == "attn_short":  # one launch: its "kernel" includes the quantization
                            ms_k = bench_ms(lambda: S.forward(q, k, v, spec, layout="HND", sm_scale=scale))
                        else:
                            p = A.Prepared(q, k, v, spec, "HND", False)
                            ms_k = bench_ms(lambda: A.run_kernel(p, sm_scale=scale))
                            p = None
                        kw = {"variant": spec} if tag else prec
                        out = api.attention(q, k, v, is_causal=causal, sdpa_fallback=False, **kw)
                        ms_e = bench_ms(lambda: api.attention(q, k, v, is_causal=causal, sdpa_fallback=False, **kw))
                        err = rel_l1(out, ref) if ref is not None else None
                        add("sagegen-kernel" + tag, ms_k, variant=spec.name)
                        add("sagegen-e2e" + tag, ms_e, variant=spec.name, rel_l1=err,
                            source=api.describe(q, k, v, is_causal=causal, sdpa_fallback=False, **kw).source)
                    except Exception as e:
                        add("sagegen-e2e" + tag, None, variant=spec.name, error=f"{type(e).__name__}: {e}"[:300])
                # what a user gets by default: the registry may hand the call to cuDNN (SDPA_FASTER, autotune)
                runs = api.describe(q, k, v, is_causal=causal, **prec).name
                add("sagegen-default", bench_ms(lambda: api.attention(q, k, v, is_causal=causal, **prec)), runs=runs)
                print(f"d={d} N={n} causal={causal}: " + ", ".join(
                    f"{r['method']} {r['tops']:.0f}" for r in rows[-7:] if r["n"] == n and r["d"] == d
                    and r["causal"] == causal and r.get("tops")), flush=True)
            # the quantization pass alone (it does not depend on causal), with the chosen variant's groups
            qg, kg = quant_spec.q_groups, quant_spec.k_groups
            wgmma = quant_spec.family == "attn_wgmma"  # Q, K and V in their wgmma operand images
            v_mode = api._v_mode(api.DTYPE_TAGS[v.dtype], d, quant_spec)  # what attention() quantizes V to
            ms = bench_ms(lambda: ops.quantize_op(q, k, v, "HND", qg.tile, qg.sub, kg.tile, kg.sub, v_mode, False,
                                                  wgmma))
            rows_per_split = max(N_ALIGN, -(-n // _STATS_SPLITS))
            nbytes = quant_bytes(B, H, hkv, n, n, d, in_bytes=2, v_copy=v_mode != "none", q_scales=qg.count(n),
                                 k_scales=kg.count(n), stats_splits=-(-n // rows_per_split),
                                 v_fp8=v_mode in ("e4m3w", "i8w"))
            gbps = nbytes / (ms * 1e-3) / 1e9
            quant_rows.append({"d": d, "n": n, "us": ms * 1e3, "bytes": nbytes, "gbps": gbps,
                               "pct_of_copy": 100 * gbps / copy_gbps, "v_mode": v_mode})
            q = k = v = ref = None  # free them before the next N
            torch.cuda.empty_cache()

    result = {"device": card, "arch": arch, "date": date, "torch": torch.__version__, "precision": args.precision,
              "B": B, "H": H, "Hkv": hkv, "dtype": "bf16", "copy_gbps": copy_gbps, "rows": rows, "quant": quant_rows,
              "seconds": time.time() - t_start}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    png = Path(args.png) if args.png else out.with_suffix(".png")
    try:
        plot([r for r in rows if r.get("tops") and r["method"] in METHODS], png,
             f"{card}  {date}  B={B} H={H} KV={hkv} bf16")
        print(f"wrote {out} and {png}")
    except Exception as e:
        print(f"wrote {out}; no chart ({type(e).__name__}: {e})")
    print(f"\n{card} ({arch}), {date}, {time.time() - t_start:.0f} s")
    print(format_table(rows, quant_rows, copy_gbps, hkv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
