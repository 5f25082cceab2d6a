"""Does the quantization pass get faster when it runs a few heads at a time, so that the qkv pass reads K and V
back from L2 right after the stats pass read them from HBM?

A one-off probe (thirteenth session; raw results in docs/bench/, tables in BENCHMARKS.md). The kernels are unchanged:
each group is a QuantPlan for B=1 and G heads, launched on pointers offset to that group's slice of the full
buffers. Its outputs must equal the one-launch pass's bit for bit. On the GPU machine:
    source scripts/gpu_env.sh && OUT=/tmp/out python3 scripts/probes/quant_groups.py
"""
import json, os, sys
import torch
sys.path.insert(0, os.getcwd())
from sagegen.build import build
from sagegen.render import default_out_dir
from sagegen.runtime import quant as Qm
from sagegen.runtime.device import device_arch, stream_handle
from sagegen.variants import select, spec_from_name
from triton.testing import do_bench

B, H, d = 4, 32, 128
SPEC = "attn_wgmma_sm90a_qk_i8_pv_e4m3_o_bf16_d128_m192_n128_s2_seq_free_rs_mma_qg_thread_kg_thread_full"
dev = torch.cuda.current_device(); arch = device_arch(dev).name
print(torch.cuda.get_device_name(dev), flush=True)
built = build(select([arch], "quant_*_x_bf16_*"), out_dir=default_out_dir(), jobs=16, progress=False)
print("built", len(built.built), "failed", len(built.failed), flush=True)
spec = spec_from_name(SPEC)
stream = stream_handle(torch.device("cuda", dev))
bench = lambda f: float(do_bench(f, warmup=25, rep=200, return_mode="median")) * 1e3  # us
res = []


def per_head_bytes(shape, dtype):
    n = 1
    for s in shape[2:]:
        n *= s
    return n * dtype.itemsize


for n in [int(x) for x in os.environ.get("NS", "8192 16384").split()]:
    g = torch.Generator(device="cuda").manual_seed(n)
    q, k, v = (torch.randn(B, H, n, d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    qs, ks, vs = (Qm.bhnd_strides(x, "HND") for x in (q, k, v))
    args = dict(q_groups=spec.q_groups, k_groups=spec.k_groups, v_mode=spec.v_mode, with_qk_bias=False,
                qk_image=True)
    full = Qm.quant_plan(arch, "bf16", B, H, H, n, n, d, **args)
    ref = {name: torch.empty(shape, device="cuda", dtype=dt) for name, (shape, dt) in full.buffers.items()}
    ptr = lambda bufs, name: bufs[name].data_ptr() if name in bufs else 0  # noqa: E731
    one = lambda: full.launch(dev, stream, q.data_ptr(), qs, k.data_ptr(), ks, v.data_ptr(), vs,  # noqa: E731
                              *[ptr(ref, name) for name in Qm.BUFFERS])
    one(); torch.cuda.synchronize()
    t_one = bench(one)
    row = {"n": n, "one_launch_us": t_one, "groups": []}
    print(f"N={n}: one launch pair {t_one:.1f} us", flush=True)
    for G in (2, 4, 8, 16):
        for splits in (16, 32):
            old = Qm._STATS_SPLITS
            Qm._STATS_SPLITS = splits
            try:
                gp = Qm.QuantPlan(arch, "bf16", 1, G, G, n, n, d, **args)
            finally:
                Qm._STATS_SPLITS = old
            out = {name: torch.full(shape, 0, device="cuda", dtype=dt) for name, (shape, dt) in full.buffers.items()
                   if name not in ("ksum", "vamax")}
            part = {name: torch.empty(shape, device="cuda", dtype=dt) for name, (shape, dt) in gp.buffers.items()
                    if name in ("ksum", "vamax")}
            steps = {name: per_head_bytes(shape, dt) for name, (shape, dt) in full.buffers.items()}
            launches = []
            for b in range(B):
                for h0 in range(0, H, G):
                    off = lambda x, st: x.data_ptr() + (b * st[0] + h0 * st[1]) * x.element_size()  # noqa: E731
                    bufs = []
                    for name in Qm.BUFFERS:
                        if name in part:
                            bufs.append(part[name].data_ptr())
                        elif name in out:
                            bufs.append(out[name].data_ptr() + (b * H + h0) * steps[name])
                        else:
                            bufs.append(0)
                    launches.append((off(q, qs), off(k, ks), off(v, vs), bufs))

            def grouped():
                for qa, ka, va, bufs in launches:
                    gp.launch(dev, stream, qa, qs, ka, ks, va, vs, *bufs)

            grouped(); torch.cuda.synchronize()
            same = all(torch.equal(out[name].view(torch.uint8), ref[name].view(torch.uint8)) for name in out)
            t = bench(grouped)
            row["groups"].append({"G": G, "splits": splits, "us": t, "identical": same})
            print(f"  G={G:2d} splits={splits}: {t:.1f} us ({t / t_one:.3f} x), identical: {same}", flush=True)
    res.append(row)
os.makedirs(os.environ.get("OUT", "/tmp/out"), exist_ok=True)
json.dump({"device": torch.cuda.get_device_name(dev), "rows": res},
          open(os.path.join(os.environ.get("OUT", "/tmp/out"), "quant_groups.json"), "w"), indent=1)
