"""torch SDPA (flash / cuDNN) with GQA and with an LSE: what each backend accepts, its LSE, and its speed
against sagegen's kernel.

A one-off probe (twelfth session; raw results in docs/bench/, tables in BENCHMARKS.md). On the GPU machine:
    source scripts/gpu_env.sh && OUT=/tmp/out python3 scripts/probes/sdpa_gqa_probe.py
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

print(torch.__version__, torch.cuda.get_device_name(), torch.backends.cudnn.version(), flush=True)
dev = 0; arch = device_arch(dev).name
bench = lambda f: float(do_bench(f, warmup=10, rep=60, return_mode="median"))
B, Hq, Hkv = 4, 32, 8
F = torch.nn.functional
res = []
# 1. what each backend accepts, and the LSE's form
q = torch.randn(1, 4, 300, 128, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, 2, 500, 128, device="cuda", dtype=torch.bfloat16)
v = torch.randn_like(k)
ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(2, 1), v.float().repeat_interleave(2, 1))
s = (q.float() @ k.float().repeat_interleave(2, 1).transpose(-1, -2)) * 128 ** -0.5
lse_ref = torch.logsumexp(s, -1)
for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                 ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
    try:
        with sdpa_kernel(be):
            o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        print("gqa", name, "ok", float((o.float() - ref).abs().max()), flush=True)
    except Exception as e:
        print("gqa", name, "fails:", str(e).splitlines()[0][:200], flush=True)
    try:
        p = torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, False, True)
        fn = {"flash": torch.backends.cuda.can_use_flash_attention, "cudnn": torch.backends.cuda.can_use_cudnn_attention,
              "efficient": torch.backends.cuda.can_use_efficient_attention}[name]
        print("can_use", name, "gqa", fn(p, True), flush=True)
    except Exception as e:
        print("can_use", name, "err", e, flush=True)
kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
try:
    r = torch.ops.aten._scaled_dot_product_flash_attention.default(q, kk, vv, dropout_p=0.0, is_causal=False,
                                                                   return_debug_mask=False, scale=None)
    print("flash lse", r[1].shape, r[1].dtype, float((r[1] - lse_ref).abs().max()), flush=True)
except Exception as e:
    print("flash lse fails", e)
for gqa_k, gqa_v, tag in ((kk, vv, "mha"), (k, v, "gqa")):
    try:
        r = torch.ops.aten._scaled_dot_product_cudnn_attention.default(q, gqa_k, gqa_v, None, compute_log_sumexp=True,
                                                                       dropout_p=0.0, is_causal=False,
                                                                       return_debug_mask=False, scale=None)
        print("cudnn lse", tag, r[1].shape, r[1].dtype, r[1].stride(), float((r[1].reshape(lse_ref.shape) - lse_ref).abs().max()),
              "out err", float((r[0].float() - ref).abs().max()), flush=True)
    except Exception as e:
        print("cudnn lse fails", tag, str(e).splitlines()[0][:300], flush=True)
try:
    r = torch.ops.aten._scaled_dot_product_flash_attention.default(q, k, v, dropout_p=0.0, is_causal=False,
                                                                   return_debug_mask=False, scale=None)
    print("flash aten gqa", float((r[0].float() - ref).abs().max()), float((r[1] - lse_ref).abs().max()), flush=True)
except Exception as e:
    print("flash aten gqa fails", str(e).splitlines()[0][:300], flush=True)

# 2. speed, d=128 and 64, GQA 32/8
specs = {}
for d in (64, 128):
    for n in (1024, 2048, 4096, 8192):
        for c in (False, True):
            for lse in (False,):
                key = registry.make_key(arch=arch, dtype="bf16", out="bf16", d=d, causal=c, nq=n, nk=n,
                                        batch_heads=B * Hq, precision="fast")
                sp = registry.heuristic(key, sm_count=api.sm_count(dev)); specs[sp.name] = sp
build(list(specs.values()) + select([arch], "quant_*_x_bf16_*"), out_dir=default_out_dir(), jobs=16, progress=False)
tops = lambda n, d, c, ms: 4 * B * Hq * n * n * d / (ms * 1e-3) / 1e12 / (2 if c else 1)
for d in (64, 128):
    for n in (1024, 2048, 4096, 8192):
        q = torch.randn(B, Hq, n, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(B, Hkv, n, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        for c in (False, True):
            row = {"d": d, "n": n, "causal": c}
            for name, be in (("flash_gqa", SDPBackend.FLASH_ATTENTION), ("cudnn_gqa", SDPBackend.CUDNN_ATTENTION)):
                try:
                    with sdpa_kernel(be):
                        F.scaled_dot_product_attention(q, k, v, is_causal=c, enable_gqa=True)
                        row[name] = tops(n, d, c, bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=c, enable_gqa=True)))
                except Exception as e:
                    row[name] = None
            def exp_cudnn():
                kk, vv = k.repeat_interleave(Hq // Hkv, 1), v.repeat_interleave(Hq // Hkv, 1)
                return torch.ops.aten._scaled_dot_product_cudnn_attention.default(q, kk, vv, None, compute_log_sumexp=True,
                        dropout_p=0.0, is_causal=c, return_debug_mask=False, scale=None)
            row["cudnn_expand_lse"] = tops(n, d, c, bench(exp_cudnn))
            def fl():
                return torch.ops.aten._scaled_dot_product_flash_attention.default(q, k, v, dropout_p=0.0, is_causal=c,
                        return_debug_mask=False, scale=None)
            try:
                fl(); row["flash_aten_gqa_lse"] = tops(n, d, c, bench(fl))
            except Exception:
                row["flash_aten_gqa_lse"] = None
            sagegen.attention(q, k, v, is_causal=c, sdpa_fallback=False)
            row["sagegen"] = tops(n, d, c, bench(lambda: sagegen.attention(q, k, v, is_causal=c, sdpa_fallback=False)))
            row["sagegen_lse"] = tops(n, d, c, bench(lambda: sagegen.attention(q, k, v, is_causal=c, sdpa_fallback=False, return_lse=True)))
            row["default"] = tops(n, d, c, bench(lambda: sagegen.attention(q, k, v, is_causal=c)))
            print({kk_: (round(vv_) if isinstance(vv_, float) else vv_) for kk_, vv_ in row.items()}, flush=True)
            res.append(row)
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), "gqa_probe.json"), "w"), indent=1)
