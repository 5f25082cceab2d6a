"""The ``sagegen`` command: build kernels ahead of time, list variants, inspect and clear the cache, check accuracy.

Imports stay lazy so that ``sagegen list`` and a warm ``sagegen build`` start fast (no torch, no CUDA).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXAMPLES = """examples:
  sagegen build --arch sm120                 # every variant for sm_120a, into ./generated and the cache
  sagegen build --arch sm90a --filter '*d128*' --jobs 2
  sagegen list --arch sm80 --filter 'quant_*'
  sagegen status
  sagegen accuracy --n 1024
"""


def _add_selection(p: argparse.ArgumentParser, arch_required: bool) -> None:
    p.add_argument("--arch", action="append", required=arch_required, metavar="ARCH",
                   help="target: sm80, sm86, sm89, sm90a, sm100a, sm120a, sm121a (also 'sm120', '12.0', "
                        "'sm_90a'); repeat for several, or 'all' for the default set")
    p.add_argument("--filter", action="append", metavar="GLOB",
                   help="keep variants whose name matches this glob (repeatable, or comma-separated)")
    p.add_argument("--exclude", action="append", metavar="GLOB", help="drop variants matching this glob (wins)")


def _arches(values):
    from .arch import DEFAULT_ARCHES, parse_arch

    if not values or any(v == "all" for v in values):
        return list(DEFAULT_ARCHES)
    return [parse_arch(v).name for v in values]


def _select(args):
    from .variants import select

    specs = select(_arches(args.arch), args.filter, args.exclude)
    if not specs:
        raise SystemExit(f"sagegen: no variant matches --arch {args.arch} --filter {args.filter} "
                         f"--exclude {args.exclude}; try 'sagegen list'")
    return specs


def cmd_build(args) -> int:
    from .build import build
    from .render import default_out_dir

    specs = _select(args)
    out = Path(args.out) if args.out else default_out_dir()
    res = build(specs, out_dir=out, jobs=args.jobs, progress=not args.no_progress and sys.stderr.isatty()
                or args.progress)
    for name, err in sorted(res.failed.items()):
        print(f"FAILED {name}\n{err if args.verbose else _first_lines(err, 12)}\n", file=sys.stderr)
    per = (sum(res.compile_seconds.values()) / len(res.built)) if res.built else 0.0
    print(f"sagegen build {', '.join(sorted({s.arch for s in specs}))}: {len(specs)} variants: "
          f"{len(res.built)} built, {len(res.cached)} cached, {len(res.failed)} failed in {res.seconds:.1f} s"
          + (f" (mean {per:.1f} s per compiled variant)" if res.built else "") + f"; sources in {out}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "variants": len(specs), "built": res.built, "cached": res.cached, "failed": res.failed,
            "seconds": res.seconds, "compile_seconds": res.compile_seconds}, indent=1) + "\n")
    return 0 if res.ok else 1


def _first_lines(text: str, n: int) -> str:
    lines = text.splitlines()
    return "\n".join(lines[:n] + ([f"... ({len(lines) - n} more lines; --verbose shows all)"] if len(lines) > n else []))


def cmd_list(args) -> int:
    specs = _select(args)
    if args.json:
        print(json.dumps([{"name": s.name, **s.to_dict()} for s in specs], indent=1))
    else:
        for s in specs:
            print(s.name)
        print(f"{len(specs)} variants", file=sys.stderr)
    return 0


def cmd_status(args) -> int:
    from .cache import KernelCache
    from .toolchain import include_dirs, nvrtc_version, package_versions

    cache = KernelCache()
    n = sum(1 for _ in cache.root.rglob("*.cubin")) if cache.root.is_dir() else 0
    print(f"cache dir     {cache.root}  ({n} cubins, {cache.size_bytes() / 2**20:.1f} MiB)")
    print(f"NVRTC         {nvrtc_version()}")
    for k, v in package_versions().items():
        print(f"{k:<13} {v}")
    print("include dirs  " + "\n              ".join(include_dirs()))
    return 0


def cmd_clear_cache(args) -> int:
    from .cache import KernelCache

    cache = KernelCache()
    print(f"removed {cache.clear()} files from {cache.root}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sagegen", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES,
        description="Generate, compile (NVRTC, no GPU needed) and check SageAttention-family attention kernels.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"sagegen {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("build", help="render and compile variants ahead of time (works without a GPU)",
                       description="Render the selected variants into --out and compile each into the kernel cache "
                                   "($SAGEGEN_CACHE_DIR or ~/.cache/sagegen). Already-cached variants are skipped.")
    _add_selection(b, arch_required=True)
    b.add_argument("--jobs", "-j", type=_positive_int, default=None, help="parallel compiles (default: CPU count)")
    b.add_argument("--out", metavar="DIR", help="where generated sources go (default: ./generated of the checkout)")
    b.add_argument("--json", metavar="PATH", help="also write the summary as JSON")
    b.add_argument("--progress", action="store_true", help="force the progress bar even when not on a terminal")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--verbose", "-v", action="store_true", help="print whole NVRTC logs of failures")
    b.set_defaults(func=cmd_build)

    ls = sub.add_parser("list", help="list variant names", description="Print the names of the selected variants.")
    _add_selection(ls, arch_required=False)
    ls.add_argument("--json", action="store_true", help="print specs as JSON")
    ls.set_defaults(func=cmd_list)

    st = sub.add_parser("status", help="cache location and size, toolchain versions")
    st.set_defaults(func=cmd_status)

    cc = sub.add_parser("clear-cache", help="delete every cached cubin")
    cc.set_defaults(func=cmd_clear_cache)

    try:
        from .reference.cli import add_parser as add_accuracy
    except ImportError:
        add_accuracy = None
    if add_accuracy is not None:
        add_accuracy(sub)
    return p


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"sagegen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        from .errors import SagegenError

        if isinstance(e, SagegenError):
            print(f"sagegen: error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
