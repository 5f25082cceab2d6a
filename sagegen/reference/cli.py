"""`sagegen accuracy`: every emulated scheme against exact attention, on several input distributions.

Wiring: the top-level CLI calls ``add_parser(subparsers)``; the parsed namespace's ``func`` is ``run``, which
returns the exit status. Importing this module imports neither torch nor the emulations (they load in ``run``),
so ``sagegen --help`` stays fast. Standalone: ``python -m sagegen.reference.cli accuracy --help``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from .inputs import DISTRIBUTIONS
from .schemes import SCHEMES

DTYPES = ("float16", "bfloat16", "float32")
MAX_D = 256


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _head_dim(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_D:
        raise argparse.ArgumentTypeError(f"head dim must be in 1..{MAX_D} (the largest compiled head dim), got {value}")
    return value


def _names(known: dict, what: str):
    def parse(text: str) -> list[str]:
        names = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in names if t not in known]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, bad)) or '(none given)'}; choose from {', '.join(known)}")
        return list(dict.fromkeys(names))

    return parse


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``accuracy`` subcommand to an argparse subparsers object; sets ``func=run``."""
    epilog = "schemes:\n" + "".join(f"  {s.name:17} {s.description}\n" for s in SCHEMES.values())
    epilog += "\ninput distributions:\n" + "".join(f"  {k:17} {v}\n" for k, v in DISTRIBUTIONS.items())
    epilog += ("\nmetrics (against exact fp64 attention of the same inputs): cos = cosine similarity, "
               "rel-L1 = sum|o-r| / sum|r|,\nRMSE, max-abs = max|o-r|, LSE = max |lse - lse_ref| (natural log).")
    p = subparsers.add_parser(
        "accuracy",
        help="accuracy of every emulated SageAttention scheme against exact attention",
        description="Run the torch emulation of each quantized attention scheme on several input distributions "
                    "and print its error against exact fp64 attention (scheme x distribution tables).",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to compute (default: cpu)")
    p.add_argument("--n", type=_positive_int, default=1024, metavar="N",
                   help="sequence length of queries and keys (default: 1024, seconds on a 2-core CPU; "
                        "ACCURACY.md's GPU table uses 4096)")
    p.add_argument("--d", type=_head_dim, default=128, metavar="D", help=f"head dim, 1..{MAX_D} (default: 128)")
    p.add_argument("--batch", type=_positive_int, default=1, metavar="B", help="batch size (default: 1)")
    p.add_argument("--heads", type=_positive_int, default=2, metavar="H", help="query heads (default: 2)")
    p.add_argument("--kv-heads", type=_positive_int, default=None, metavar="H",
                   help="key/value heads, dividing --heads (GQA; default: = --heads)")
    p.add_argument("--causal", action="store_true", help="causal mask (bottom-right aligned)")
    p.add_argument("--dtype", choices=DTYPES, default="float16", help="input dtype (default: float16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the input generator (default: 0)")
    p.add_argument("--schemes", type=_names(SCHEMES, "scheme"), default=list(SCHEMES), metavar="A,B",
                   help="comma-separated subset of the schemes below (default: all)")
    p.add_argument("--dists", type=_names(DISTRIBUTIONS, "distribution"), default=list(DISTRIBUTIONS),
                   metavar="A,B", help="comma-separated subset of the input distributions below (default: all)")
    p.add_argument("--long", action="store_true", help="also print every metric per (scheme, distribution)")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON to PATH")
    p.set_defaults(func=run)
    return p


def _error(msg: str) -> int:
    print(f"sagegen accuracy: error: {msg}", file=sys.stderr)
    return 2


def _matrix(results: list[dict], schemes: list[str], dists: list[str], key: str, fmt: str) -> str:
    cell = {(r["scheme"], r["dist"]): r[key] for r in results}
    width = max(11, *(len(d) + 1 for d in dists))
    lines = [f"{'scheme':17}" + "".join(f"{d:>{width}}" for d in dists)]
    for s in schemes:
        lines.append(f"{s:17}" + "".join(f"{format(cell[(s, d)], fmt):>{width}}" for d in dists))
    return "\n".join(lines)


def _long(results: list[dict]) -> str:
    head = f"{'scheme':17}{'input':10}{'cos':>11}{'rel-L1':>11}{'RMSE':>11}{'max-abs':>11}{'LSE':>11}{'time s':>8}"
    rows = [f"{r['scheme']:17}{r['dist']:10}{r['cos']:>11.6f}{r['rel_l1']:>11.3e}{r['rmse']:>11.3e}"
            f"{r['max_abs']:>11.3e}{r['lse_max_abs']:>11.3e}{r['seconds']:>8.2f}" for r in results]
    return "\n".join([head, *rows])


def run(args: argparse.Namespace) -> int:
    """Compute and print the tables; returns the exit status (0, or 2 on a usage error such as no CUDA)."""
    try:
        import torch
    except ImportError:
        return _error("torch is not installed")
    from tqdm import tqdm

    from .exact import attention_exact
    from .inputs import make_inputs
    from .metrics import compare

    kv_heads = args.heads if args.kv_heads is None else args.kv_heads
    if args.heads % kv_heads:
        return _error(f"--heads ({args.heads}) must be a multiple of --kv-heads ({kv_heads})")
    if args.device == "cuda" and not torch.cuda.is_available():
        return _error("--device cuda, but torch sees no CUDA device (this torch build: "
                      f"{torch.__version__}); use --device cpu")
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    where = torch.cuda.get_device_name(device) if args.device == "cuda" else "CPU"
    config = dict(device=args.device, device_name=where, batch=args.batch, heads=args.heads, kv_heads=kv_heads,
                  n=args.n, d=args.d, dtype=args.dtype, causal=args.causal, seed=args.seed)

    results = []
    jobs = [(d, s) for d in args.dists for s in args.schemes]
    t_start = time.perf_counter()
    with tqdm(total=len(jobs), desc="accuracy", unit="run", delay=2.0, file=sys.stderr, leave=False,
              disable=None) as bar:
        for dist in args.dists:
            q, k, v = make_inputs(dist, batch=args.batch, heads=args.heads, heads_kv=kv_heads, n=args.n, d=args.d,
                                  seed=args.seed, device=device, dtype=dtype)
            ref, ref_lse = attention_exact(q, k, v, causal=args.causal)
            for name in args.schemes:
                bar.set_postfix_str(f"{name} on {dist}", refresh=False)
                t0 = time.perf_counter()
                out, lse = SCHEMES[name].run(q, k, v, causal=args.causal)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                res = compare(out, ref, lse, ref_lse)
                results.append(dict(scheme=name, dist=dist, **res, seconds=time.perf_counter() - t0))
                bar.update()
    elapsed = time.perf_counter() - t_start

    print(f"sagegen accuracy on {where}: B={args.batch} H={args.heads} H_kv={kv_heads} N={args.n} d={args.d} "
          f"{args.dtype} {'causal' if args.causal else 'non-causal'} seed={args.seed}; "
          f"reference: exact attention in fp64; {elapsed:.1f} s")
    print("\ncosine similarity")
    print(_matrix(results, args.schemes, args.dists, "cos", ".6f"))
    print("\nrelative L1 = sum|o-r| / sum|r|")
    print(_matrix(results, args.schemes, args.dists, "rel_l1", ".4f"))
    if args.long:
        print()
        print(_long(results))
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump({"config": config, "seconds": elapsed, "results": results}, f, indent=1)
        except OSError as e:
            return _error(f"cannot write --json {args.json}: {e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sagegen")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
