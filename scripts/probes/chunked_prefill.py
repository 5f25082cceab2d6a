"""Chunked prefill (bottom-right causal, Nq < Nk): the default call against the kernel.

Measured the two-call cuDNN route for these calls (api._sdpa_forward with a key prefix, merged by the LSEs), which
was reverted (BENCHMARKS.md, twelfth session); on the current tree both columns run the kernel.

A one-off probe (twelfth session; raw results in docs/bench/, tables in BENCHMARKS.md). On the GPU machine:
    source scripts/gpu_env.sh && OUT=/tmp/out python3 scripts/probes/chunked_prefill.py
"""
import json, os, sys
import torch
sys.path.insert(0, os.getcwd())
import sagegen
from sagegen.runtime import api
from triton.testing import do_bench
bench = lambda f: float(do_bench(f, warmup=10, rep=60, return_mode="median")) * 1e3
B, H = 4, 32
rows = []
for d in (64, 128):
    for hkv in (8, 32):
        for nq, nk in ((128, 8192), (512, 8192), (2048, 8192), (512, 32768), (2048, 32768), (4096, 32768)):
            q = torch.randn(B, H, nq, d, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(B, hkv, nk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            row = {"d": d, "Hkv": hkv, "nq": nq, "nk": nk, "runs": api.describe(q, k, v, is_causal=True).name[:30]}
            row["kernel"] = bench(lambda: sagegen.attention(q, k, v, is_causal=True, sdpa_fallback=False))
            row["default"] = bench(lambda: sagegen.attention(q, k, v, is_causal=True))
            print({a: (round(b, 1) if isinstance(b, float) else b) for a, b in row.items()}, flush=True)
            rows.append(row)
json.dump({"device": torch.cuda.get_device_name(), "unit": "us", "rows": rows},
          open(os.path.join(os.environ.get("OUT", "."), "chunked_prefill.json"), "w"), indent=1)
