"""A few attention variants and the quantization passes on tiny shapes, for compute-sanitizer:

    compute-sanitizer --tool memcheck python3 scripts/sanitize_small.py          # ~16 attn_mma variants
    compute-sanitizer --tool racecheck python3 scripts/sanitize_small.py --few   # 4 variants (racecheck is slow)
    ... scripts/sanitize_small.py --family attn_wgmma [--few]                   # the sm90a wgmma family
    ... scripts/sanitize_small.py --family attn_short                           # every bf16 attn_short variant
    ... scripts/sanitize_small.py --filter 'attn_wgmma_*_m192_*'                 # the variants matching a glob

Tiny shapes put every tail in play: N = 1, 17, 130 (not multiples of any tile), nq > nk with bottom-right causal
(rows that see no key), GQA, NHD, d = 72 (padded to 128), 64, and 256 / 200 for the d = 256 variants. Compiles first (outside any CUDA work), then runs
each case once with LSE and synchronizes after it, so a fault is reported next to the case printed before it.
torch's caching allocator is turned off (PYTORCH_NO_CUDA_MEMORY_CACHING=1) so that every tensor is its own
allocation and memcheck sees an access past its end. Exit status 0 and "sanitize_small: N cases OK" on success.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")  # before torch touches CUDA
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (B, Hq, Hkv, nq, nk, d, layout, causal, alignment)
CASES = [
    (1, 1, 1, 1, 1, 64, "HND", False, "bottom_right"),
    (1, 2, 1, 17, 17, 128, "NHD", True, "bottom_right"),
    (2, 4, 2, 130, 17, 72, "HND", True, "bottom_right"),  # 113 rows see no key
    (1, 2, 2, 17, 130, 64, "NHD", True, "top_left"),
    (1, 3, 1, 130, 130, 128, "HND", False, "bottom_right"),
    (1, 1, 1, 130, 130, 256, "HND", False, "bottom_right"),  # the d = 256 kernels (200: padded inside)
    (1, 2, 1, 1, 17, 200, "NHD", False, "bottom_right"),
    (1, 2, 1, 17, 130, 256, "NHD", True, "top_left"),
    (2, 2, 2, 130, 17, 200, "HND", True, "bottom_right"),
]


def pick_wgmma_variants(arch: str, few: bool):
    """The heuristic's choice per (precision, d, causal), plus every (P.V format, rows, stages, overlap, ping-pong,
    row sum) at per-block K scales (per-block Q where it exists, else per-warp)."""
    from sagegen.runtime import registry
    from sagegen.variants import select

    out = {}
    for precision in registry.PRECISIONS:
        for d in (64, 128, 256):
            for causal in (False, True):
                key = registry.make_key(arch=arch, dtype="bf16", out="bf16", d=d, causal=causal, nq=128, nk=128,
                                        batch_heads=8, precision=precision)
                spec = registry.heuristic(key, family="attn_wgmma")
                out[spec.name] = spec
    if not few:  # each (P.V format, rows, stages, overlap, ping-pong, row sum) once, rotating d and causal
        every = select([arch], "attn_wgmma_*_o_bf16_*_kg_block_*")
        configs = sorted({(s.pv, s.m, s.s, s.overlap, s.pingpong, s.rowsum) for s in every})
        combos = ((64, False), (128, True), (64, True), (128, False))
        for i, cfg in enumerate(configs):
            d, causal = combos[i % len(combos)]
            fits = [s for s in every if (s.pv, s.m, s.s, s.overlap, s.pingpong, s.rowsum) == cfg]
            spec = next((s for s in fits if (s.d, s.causal) == (d, causal)), fits[0])
            out.setdefault(spec.name, spec)
    return list(out.values())


def pick_variants(arch: str, few: bool):
    """The heuristic's choice per (d, causal) plus one variant of every other tile, granularity and accumulator."""
    from sagegen.runtime import registry
    from sagegen.variants import select

    out = {}
    for d in (64, 128):
        for causal in (False, True):
            key = registry.make_key(arch=arch, dtype="bf16", out="bf16", d=d, causal=causal, nq=128, nk=128,
                                    batch_heads=8, precision="accurate")
            spec = registry.heuristic(key, family="attn_mma")
            out[spec.name] = spec
    if few:
        return list(out.values())
    # every tile twice, rotating granularity, accumulator, head dim and causal over them
    every = select([arch], "attn_mma_*_o_bf16_*")
    tiles = sorted({(s.m, s.n, s.w, s.s, s.b) for s in every})
    combos = ((64, True), (128, False), (128, True), (64, False), (64, False), (128, True))
    for i in range(2 * len(tiles)):
        tile = tiles[i % len(tiles)]
        want = ("warp", "block", "thread")[i % 3], ("f32", "f16")[i % 2], *combos[i % 4]
        same_tile = [s for s in every if (s.m, s.n, s.w, s.s, s.b) == tile]
        best = max(same_tile, key=lambda s: sum(a == b for a, b in zip((s.qg, s.acc, s.d, s.causal), want)))
        out.setdefault(best.name, best)
    return list(out.values())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--few", action="store_true", help="only the heuristic's four variants")
    ap.add_argument("--family", choices=("attn_mma", "attn_wgmma", "attn_short"), default="attn_mma")
    ap.add_argument("--filter", help="instead: the bf16-output variants matching this glob (e.g. '*_m192_*'; "
                                     "attn_short: every match)")
    args = ap.parse_args(argv)

    import torch

    from sagegen.build import build
    from sagegen.quant_layout import padded_dim
    from sagegen.render import default_out_dir
    from sagegen.runtime import api
    from sagegen.runtime.device import device_arch
    from sagegen.variants import select

    arch = device_arch(torch.cuda.current_device()).name
    if args.filter:
        specs = [s for s in select([arch], args.filter)  # (attn_short runs its own input dtype, fp16 or bf16)
                 if s.family.startswith("attn_") and (s.o == "bf16" or s.family == "attn_short")]
    elif args.family == "attn_short":  # every variant, both input dtypes (its cases: those with nk <= 128)
        specs = select([arch], "attn_short_*")
    else:
        specs = (pick_wgmma_variants if args.family == "attn_wgmma" else pick_variants)(arch, args.few)
    res = build(specs + select([arch], "quant_*"), out_dir=default_out_dir(), jobs=os.cpu_count(), progress=False)
    if not res.ok:
        print("build failed:", *res.failed.items(), sep="\n")
        return 1
    gen = torch.Generator(device="cuda").manual_seed(0)
    n_cases = 0
    for spec in specs:
        for B, Hq, Hkv, nq, nk, d, layout, causal, align in CASES:
            if padded_dim(d) != spec.d or causal != spec.causal:
                continue
            for dtype in (torch.float16, torch.bfloat16):
                short = spec.family == "attn_short"
                if short and (nk > 128 or dtype != (torch.bfloat16 if spec.x == "bf16" else torch.float16)):
                    continue  # the family holds at most 128 keys and reads its own input dtype
                shape = (lambda h, n: (B, h, n, d)) if layout == "HND" else (lambda h, n: (B, n, h, d))
                q = torch.randn(shape(Hq, nq), device="cuda", generator=gen).to(dtype)
                k = torch.randn(shape(Hkv, nk), device="cuda", generator=gen).to(dtype)
                v = torch.randn(shape(Hkv, nk), device="cuda", generator=gen).to(dtype)
                print(f"{spec.name} {dtype} B={B} Hq={Hq} Hkv={Hkv} nq={nq} nk={nk} d={d} {layout} {align}",
                      flush=True)
                out_dtype = torch.bfloat16 if spec.o == "bf16" else torch.float16  # the variant fixes the output
                # attn_short: also without the LSE (the kernel then skips q . mean(k))
                for lse_wanted in ((True, False) if short else (True,)):
                    o = api.attention(q, k, v, is_causal=causal, causal_alignment=align, tensor_layout=layout,
                                      return_lse=lse_wanted, variant=spec, out_dtype=out_dtype)
                    o = o[0] if lse_wanted else o
                    torch.cuda.synchronize()
                    assert torch.isfinite(o).all(), "non-finite output"
                    n_cases += 1
    print(f"sanitize_small: {n_cases} cases OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
