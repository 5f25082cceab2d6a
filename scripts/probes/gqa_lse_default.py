"""What a default call gets with GQA and/or an LSE, against cuDNN doing the same (H100, B=4, Hq=32).

A one-off probe (twelfth session; raw results in docs/bench/, tables in BENCHMARKS.md). On the GPU machine:
    source scripts/gpu_env.sh && OUT=/tmp/out python3 scripts/probes/gqa_lse_default.py
"""
import json, os, sys
import torch
sys.path.insert(0, os.getcwd())
import sagegen
from sagegen.build import build
from sagegen.render import default_out_dir
from sagegen.runtime import api, registry
from sagegen.runtime.device import device_arch
from sagegen.variants import select
from triton.testing import do_bench

B, H = 4, 32
arch = device_arch(0).name
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
bench = lambda f: float(do_bench(f, warmup=10, rep=80, return_mode="median"))
tops = lambda n, d, c, ms: 4 * B * H * n * n * d / (ms * 1e-3) / 1e12 / (2 if c else 1)
ns, ds = (1024, 2048, 4096, 8192), (64, 128)
specs = {}
for d in ds:
    for n in ns:
        for c in (False, True):
            for g in (1, 4):
                key = registry.make_key(arch=arch, dtype="bf16", out="bf16", d=d, causal=c, nq=n, nk=n,
                                        batch_heads=B * H, gqa=g, precision="fast")
                s = registry.heuristic(key, sm_count=api.sm_count(0)); specs[s.name] = s
build(list(specs.values()) + select([arch], "quant_*_x_bf16_*"), out_dir=default_out_dir(), jobs=16, progress=False)
rows = []
for d in ds:
    for n in ns:
        for hkv, lse in ((8, False), (32, True), (8, True)):
            q = torch.randn(B, H, n, d, device="cuda", dtype=torch.bfloat16)
            k, v = (torch.randn(B, hkv, n, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            for c in (False, True):
                def cudnn():
                    return torch.ops.aten._scaled_dot_product_cudnn_attention.default(
                        q, k, v, None, compute_log_sumexp=lse, dropout_p=0.0, is_causal=c, return_debug_mask=False,
                        scale=None)
                kw = dict(is_causal=c, return_lse=lse)
                row = {"d": d, "n": n, "Hkv": hkv, "lse": lse, "causal": c,
                       "runs": api.describe(q, k, v, **kw).name.split("_o_")[0]}
                row["cudnn"] = tops(n, d, c, bench(cudnn))
                row["kernel_e2e"] = tops(n, d, c, bench(lambda: sagegen.attention(q, k, v, sdpa_fallback=False, **kw)))
                row["default"] = tops(n, d, c, bench(lambda: sagegen.attention(q, k, v, **kw)))
                row["default_over_cudnn"] = row["default"] / row["cudnn"]
                print({a: (round(b, 2) if isinstance(b, float) else b) for a, b in row.items()}, flush=True)
                rows.append(row)
json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
          open(os.path.join(os.environ.get("OUT", "."), "lse_gqa_default.json"), "w"), indent=1)
