"""Short queries over long keys (decode / chunked prefill): sagegen's kernel, its default call and torch
SDPA.

A one-off probe (twelfth session; raw results in docs/bench/, tables in BENCHMARKS.md). On the GPU machine:
    source scripts/gpu_env.sh && OUT=/tmp/out python3 scripts/probes/short_queries_default.py
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
from torch.nn.attention import SDPBackend, sdpa_kernel

F = torch.nn.functional
B, H = 4, 32
arch = device_arch(0).name
print(torch.cuda.get_device_name(), torch.__version__, flush=True)
bench = lambda f: float(do_bench(f, warmup=10, rep=60, return_mode="median")) * 1e3  # us
NQ, NK, HKV, DS = (1, 16, 128, 512, 2048), (8192, 32768), (8, 32), (64, 128)
specs = {}
for d in DS:
    for nq in NQ:
        for nk in NK:
            for hkv in HKV:
                for prec in ("fast", "accurate"):
                    key = registry.make_key(arch=arch, dtype="bf16", out="bf16", d=d, causal=False, nq=nq, nk=nk,
                                            batch_heads=B * H, gqa=H // hkv, precision=prec)
                    s = registry.heuristic(key, sm_count=api.sm_count(0)); specs[s.name] = s
build(list(specs.values()) + select([arch], "quant_*_x_bf16_*"), out_dir=default_out_dir(), jobs=16, progress=False)
rows = []
for d in DS:
    for nk in NK:
        for hkv in HKV:
            k, v = (torch.randn(B, hkv, nk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            for nq in NQ:
                q = torch.randn(B, H, nq, d, device="cuda", dtype=torch.bfloat16)
                row = {"d": d, "nq": nq, "nk": nk, "Hkv": hkv}
                for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                    try:
                        with sdpa_kernel(be):
                            F.scaled_dot_product_attention(q, k, v, enable_gqa=hkv != H)
                            row[name] = bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=hkv != H))
                    except Exception as e:
                        row[name] = None
                for prec in ("fast", "accurate"):
                    row[f"kernel_{prec}"] = bench(lambda: sagegen.attention(q, k, v, sdpa_fallback=False, precision=prec))
                row["default"] = bench(lambda: sagegen.attention(q, k, v))
                row["variant"] = api.describe(q, k, v, sdpa_fallback=False).name.split("_o_")[-1][:40]
                row["default_runs"] = api.describe(q, k, v).name[:30]
                print({a: (round(b, 1) if isinstance(b, float) else b) for a, b in row.items()}, flush=True)
                rows.append(row)
json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "unit": "us", "B": B, "H": H,
           "rows": rows}, open(os.path.join(os.environ.get("OUT", "."), "decode_probe.json"), "w"), indent=1)
