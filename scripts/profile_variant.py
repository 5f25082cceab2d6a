"""Run one attention variant (quantization + kernel) a few times on a benchmark shape, for ncu /
compute-sanitizer. Dev tool; works for every attention family.

usage: python3 scripts/profile_variant.py NAME [--n 8192] [--b 4] [--h 32] [--iters 3]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from sagegen.runtime import attn_mma as A  # noqa: E402
from sagegen.runtime import attn_short as S  # noqa: E402
from sagegen.runtime import attn_wgmma as W  # noqa: E402
from sagegen.variants import spec_from_name  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--b", type=int, default=4)
    ap.add_argument("--h", type=int, default=32)
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    spec = spec_from_name(a.name)
    dt = torch.bfloat16
    q, k, v = (torch.randn(a.b, a.h, a.n, spec.d, device="cuda", dtype=dt) for _ in range(3))
    for _ in range(a.iters):
        if spec.family == "attn_wgmma":
            W.forward(q, k, v, spec, layout="HND", sm_scale=spec.d ** -0.5)
        elif spec.family == "attn_short":  # (at most 128 keys: --n is the query length, k and v keep 128)
            S.forward(q, k[:, :, :128], v[:, :, :128], spec, layout="HND", sm_scale=spec.d ** -0.5)
        else:
            A.run_kernel(A.Prepared(q, k, v, spec, "HND", False), sm_scale=spec.d ** -0.5)
    torch.cuda.synchronize()
    print("ok", spec.name)


if __name__ == "__main__":
    main()
