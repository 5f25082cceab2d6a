"""Nq != Nk: the kernel end to end against cuDNN on a grid (non-causal), B=4, 32 query heads.

The grid behind registry.sdpa_measured_faster's use of min(Nq, Nk).

A one-off probe (twelfth session; raw results in docs/bench/, tables in BENCHMARKS.md). On the GPU machine:
    source scripts/gpu_env.sh && OUT=/tmp/out python3 scripts/probes/nq_nk_grid.py
"""
import json, os, sys, time
import torch
sys.path.insert(0, os.getcwd())
import sagegen
from sagegen.build import build
from sagegen.render import default_out_dir
from sagegen.runtime import api, registry
from sagegen.runtime.device import device_arch
from sagegen.variants import select
from triton.testing import do_bench
from torch.nn.attention import SDPBackend, sdpa_kernel

F = torch.nn.functional
B, H = 4, 32
arch = device_arch(0).name
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
bench = lambda f: float(do_bench(f, warmup=5, rep=40, return_mode="median")) * 1e3  # us
NQ = [int(x) for x in os.environ.get("NQ", "256 1024 2048 4096 8192").split()]
NK = [int(x) for x in os.environ.get("NK", "1024 2048 4096 8192 32768").split()]
PRECS = os.environ.get("PRECS", "fast balanced accurate").split()
DS, HKV = (64, 128), (32, 8)
specs = {}
for d in DS:
    for nq in NQ:
        for nk in NK:
            for hkv in HKV:
                for prec in PRECS:
                    key = registry.make_key(arch=arch, dtype="bf16", out="bf16", d=d, causal=False, nq=nq, nk=nk,
                                            batch_heads=B * H, gqa=H // hkv, precision=prec)
                    s = registry.heuristic(key, sm_count=api.sm_count(0)); specs[s.name] = s
t0 = time.time()
build(list(specs.values()) + select([arch], "quant_*_x_bf16_*"), out_dir=default_out_dir(), jobs=16, progress=False)
print("build", round(time.time() - t0), "s", len(specs), flush=True)
rows = []
for d in DS:
    for hkv in HKV:
        for nk in NK:
            k, v = (torch.randn(B, hkv, nk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            for nq in NQ:
                q = torch.randn(B, H, nq, d, device="cuda", dtype=torch.bfloat16)
                row = {"d": d, "nq": nq, "nk": nk, "Hkv": hkv}
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    row["cudnn"] = bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=hkv != H))
                for prec in PRECS:
                    row[prec] = bench(lambda: sagegen.attention(q, k, v, sdpa_fallback=False, precision=prec))
                print(d, hkv, nq, nk, " ".join(f"{p} {row['cudnn'] / row[p]:.2f}" for p in PRECS), flush=True)
                rows.append(row)
            k = v = q = None
            torch.cuda.empty_cache()
json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "unit": "us", "B": B, "H": H,
           "note": "value = e2e us; ratio cudnn/kernel > 1 means the kernel is faster", "rows": rows},
          open(os.path.join(os.environ.get("OUT", "."), "grid_probe.json"), "w"), indent=1)
print("done", round(time.time() - t0), "s")
