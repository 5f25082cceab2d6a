"""Does the quantization pass of batch chunk c+1 overlap the attention kernel of chunk c on two streams?

A one-off probe (twelfth session; raw results in docs/bench/, tables in BENCHMARKS.md). On the GPU machine:
    source scripts/gpu_env.sh && OUT=/tmp/out python3 scripts/probes/quant_overlap.py
"""
import json, os, sys, time
import torch
sys.path.insert(0, os.getcwd())
import sagegen
from sagegen.build import build
from sagegen.render import default_out_dir
from sagegen.runtime import api, registry
from sagegen.runtime import attn_wgmma as W
from sagegen.runtime.device import device_arch
from sagegen.variants import select
from triton.testing import do_bench

B, H, d = 4, 32, 128
prec = os.environ.get("PREC", "fast")
dev = torch.cuda.current_device(); arch = device_arch(dev).name
print(torch.cuda.get_device_name(dev), flush=True)
ns = [int(x) for x in os.environ.get("NS", "8192 16384").split()]
specs = {}
for n in ns:
    for b in (1, 2, 4):
        for causal in (False,):
            key = registry.make_key(arch=arch, dtype="bf16", out="bf16", d=d, causal=causal, nq=n, nk=n,
                                    batch_heads=b * H, precision=prec)
            s = registry.heuristic(key, sm_count=api.sm_count(dev)); specs[s.name] = s
built = build(list(specs.values()) + select([arch], "quant_*_x_bf16_*"), out_dir=default_out_dir(), jobs=16, progress=False)
print("built", len(built.built), "failed", len(built.failed), flush=True)
bench = lambda f: float(do_bench(f, warmup=25, rep=200, return_mode="median"))
tops = lambda n, ms: 4 * B * H * n * n * d / (ms * 1e-3) / 1e12
res = []
side = [torch.cuda.Stream(), torch.cuda.Stream()]
for n in ns:
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v = (torch.randn(B, H, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    kw = dict(sdpa_fallback=False, precision=prec)
    spec = api.describe(q, k, v, **kw).spec
    qz = W.quantize_for(q, k, v, spec, "HND", False)
    ms_k = bench(lambda: W.run_kernel(qz, spec, q_shape=q.shape, layout="HND", B=B, Hq=H, Hkv=H, sm_scale=d ** -0.5))
    qz = None
    ref = api.attention(q, k, v, **kw)
    ms_e = bench(lambda: api.attention(q, k, v, **kw))
    row = {"n": n, "kernel": tops(n, ms_k), "e2e": tops(n, ms_e)}
    for chunk in (2, 1):
        outs = [None] * (B // chunk)
        def piped():
            main = torch.cuda.current_stream()
            for s in side:
                s.wait_stream(main)
            for c in range(B // chunk):
                s = side[c % 2]
                with torch.cuda.stream(s):
                    outs[c] = api.attention(q[c * chunk:(c + 1) * chunk], k[c * chunk:(c + 1) * chunk],
                                            v[c * chunk:(c + 1) * chunk], **kw)
            for s in side:
                main.wait_stream(s)
        piped(); torch.cuda.synchronize()
        o = torch.cat(outs)
        row[f"piped_b{chunk}"] = tops(n, bench(piped))
        row[f"piped_b{chunk}_equal"] = bool(torch.equal(o, ref))
        def serial():
            for c in range(B // chunk):
                outs[c] = api.attention(q[c * chunk:(c + 1) * chunk], k[c * chunk:(c + 1) * chunk],
                                        v[c * chunk:(c + 1) * chunk], **kw)
        row[f"serial_b{chunk}"] = tops(n, bench(serial))
    print(row, flush=True); res.append(row)
    q = k = v = ref = o = None; outs = None; torch.cuda.empty_cache()
os.makedirs(os.environ.get("OUT", "."), exist_ok=True)
json.dump(res, open(os.path.join(os.environ.get("OUT", "."), f"pipe_{prec}.json"), "w"), indent=1)
