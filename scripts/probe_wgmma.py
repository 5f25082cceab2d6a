"""Ablation probes of one attention variant (the sm90a wgmma or the mma.sync family): where does its time go?
Dev tool, one device call.

Each probe compiles the variant's own source with one or more ``SAGEGEN_PROBE_*`` macros defined in front (the
kernel header's hooks; the generator never sets them) and times it kernel-only on the same quantized inputs:
  NO_EXP      the exp unit's MUFU.EX2 replaced by an FMUL (XU pipe freed, instruction count kept)
  NO_MAX      no row max (a constant): the max tree, its quad shuffles and the rescale factor freed
  NO_SOFTMAX  scores packed into P as they are (no max, exp, sum, mask: the softmax's issue slots freed)
  NO_MMA      no wgmma / mma.sync issued (the tensor pipe freed; the barriers, copies and softmax still run)
  NO_LOAD     the producer copies only the first s blocks; later blocks reuse them (no L2 -> shared traffic)
  TRACE       clock64 at 8 points of every overlapped iteration (head 0), printed as median phase lengths
              (the compiler moves instructions across the clock reads: phases are approximate)
  SPLIT_LOOP  the main loop in two halves (no mask branch before the first masked block) in every variant
  FLOAT_MAX   the row max on floats (one FMNMX per score) instead of the integer pipe's three-input max
  CHORD_EXP   P's e4m3 codes from one FFMA + FMNMX + PRMT packing (the chord of 2^x per octave), no MUFU.EX2:
              FP8 P.V variants with the MMA row sum only; its output is a real (less accurate) attention
  U8_PACK     P packed as INT8 P.V would pack it (FADD of 1.5 * 2^23, low bytes by PRMT) instead of F2FP e4m3:
              the P-side cost of an INT8 P.V kernel (the reference's pv="int8"); FP8 P.V variants only
  U8_PACK_F16 the same codes through f16x2 (1024 + x rounds x in f16): two F2FP + two HADD2 + one PRMT per four
  NO_MERGE    the two-level merge o = o * alpha + tile freed (one FFMA per O element and block; O stays 0)
  NO_BIAS     the score accumulator not re-seeded with the 1.5 * 2^23 bias before each Q.K^T (64 MOVs freed)
  I2F_SCORES  FP8 P.V: raw int32 scores (the first k-step zeroes the accumulator, no seeding MOVs), the row max on
              them, one I2FP per score before the FFMA; unmasked blocks only are right (masked keys are not -inf)
  U8_F2IP     INT8 P.V variants (pv=i8): P packed by cvt.rni + cvt.pack.sat (one F2IP per two values) instead of
              the shipped f16x2 path; a real attention, rounded once
TRACE, SPLIT_LOOP, FLOAT_MAX, CHORD_EXP, U8_PACK, U8_PACK_F16, U8_F2IP, NO_MERGE, NO_BIAS and I2F_SCORES exist in
the wgmma kernel only; the mma.sync kernel (attn_mma specs) has the other five.
Probes combine with '+', e.g. NO_LOAD+NO_SOFTMAX is the MMA issue rate with nothing else in the way. Outputs are
garbage under every probe but 'none', CHORD_EXP and U8_F2IP; only the times mean something. --exact prints
each probe's rel-L1 against fp32 attention (torch SDPA on fp32 copies).

usage: python3 scripts/probe_wgmma.py [--spec NAME] [--n 8192 16384] [--probes none NO_EXP ...] [--exact]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from sagegen.compiler import compile_cubin  # noqa: E402
from sagegen.render import render  # noqa: E402
from sagegen.runtime import attn_mma as A  # noqa: E402
from sagegen.runtime import attn_wgmma as W  # noqa: E402
from sagegen.variants import spec_from_name  # noqa: E402

DEFAULT_SPEC = "attn_wgmma_sm90a_qk_i8_pv_e4m3_o_bf16_d128_m128_n128_s3_ovl_free_rs_mma_qg_thread_kg_thread_full"
PROBES = ("NO_EXP", "NO_MAX", "NO_SOFTMAX", "NO_MMA", "NO_LOAD", "TRACE", "SPLIT_LOOP", "FLOAT_MAX", "CHORD_EXP",
          "U8_PACK", "U8_PACK_F16", "U8_F2IP",
          "NO_MERGE", "NO_BIAS", "I2F_SCORES")
# the TRACE events (templates/attn_wgmma/kernel.cuh): phase i runs from event i to event i + 1
PHASES = ("turn wait", "stage wait", "issue QK+PV", "QK wait", "softmax", "PV wait", "finish+pack")


def probe_source(spec, probe: str) -> str:
    defines = [] if probe == "none" else probe.split("+")
    unknown = set(defines) - set(PROBES)
    if unknown:
        raise ValueError(f"unknown probe(s) {sorted(unknown)}; choose from {PROBES} (or 'none')")
    return "".join(f"#define SAGEGEN_PROBE_{d}\n" for d in defines) + render(spec)


def _compile(args):
    name, source, arch = args
    return compile_cubin(name, source, arch)


class ProbeKernel:
    def __init__(self, spec, cubin: bytes, device: int):
        from cuda.bindings import driver
        from cuda.core import ObjectCode

        self.spec, self.driver = spec, driver
        self.kernel = ObjectCode.from_cubin(cubin).get_kernel(spec.name)  # keeps the library loaded
        self.handle = int(self.kernel.handle)
        attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        (err,) = driver.cuKernelSetAttribute(attr, spec.smem_bytes(), self.kernel.handle, device)
        assert err == driver.CUresult.CUDA_SUCCESS, err

    def __call__(self, launch, stream: int, *args):
        if self.spec.family == "attn_mma":  # q8 q_scale k8 k_scale v (v strides) o (o strides) lse ... sm_scale
            q8, q_scale, k8, k_scale, v, v_strides, out, lse, sm_scale = args
            argv = A.PARAMS.pack((q8, q_scale, k8, k_scale, v, *v_strides, out, *launch.out_strides, lse,
                                  *launch.ints, sm_scale, launch.causal_offset))
        else:
            argv = W.PARAMS.pack((*args[:7], *launch.out_strides, args[7], *launch.ints, args[8],
                                  launch.causal_offset))
        g = launch.grid
        (err,) = self.driver.cuLaunchKernel(self.handle, g[0], g[1], g[2], launch.threads, 1, 1, launch.smem, stream,
                                            argv, 0)
        assert not err, err


def summarize_trace(t: torch.Tensor) -> dict:
    """Median cycles of each phase and of the iteration over steady-state blocks (the first and last 4 dropped),
    every CTA and warpgroup; and the median offset of warpgroup 1's QK-retired event after warpgroup 0's."""
    nb = t.shape[2]
    steady = t[:, :, 4:nb - 4].double()
    out = {name: steady[..., i + 1].sub(steady[..., i]).median().item() for i, name in enumerate(PHASES)}
    out["iteration"] = (t[:, :, 5:nb - 3, 0] - t[:, :, 4:nb - 4, 0]).double().median().item()
    if t.shape[1] > 1:
        out["wg1 - wg0 (QK retired)"] = (steady[:, 1, :, 4] - steady[:, 0, :, 4]).median().item()
    print("   trace:", " | ".join(f"{k} {v:.0f}" for k, v in out.items()), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", nargs="+", default=[DEFAULT_SPEC], help="variant names (attn_wgmma or attn_mma)")
    ap.add_argument("--n", type=int, nargs="+", default=[8192, 16384])
    ap.add_argument("--probes", nargs="+",
                    default=["none", "NO_EXP", "NO_SOFTMAX", "NO_MMA", "NO_LOAD", "NO_LOAD+NO_SOFTMAX"])
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--exact", action="store_true", help="also print each probe's rel-L1 against fp32 attention")
    args = ap.parse_args()
    from triton.testing import do_bench

    specs = [spec_from_name(n) for n in args.spec]
    jobs = [(s, p) for s in specs for p in args.probes]
    with ProcessPoolExecutor(max_workers=min(16, len(jobs))) as pool:
        cubins = list(pool.map(_compile, [(s.name, probe_source(s, p), s.arch) for s, p in jobs]))
    dev = torch.device("cuda", 0)
    stream = torch.cuda.current_stream(dev).cuda_stream
    rows = []
    for n in args.n:
        B, H = 4, 32
        for spec in specs:
            q, k, v = (torch.randn(B, H, n, spec.d, device=dev, dtype=torch.bfloat16) for _ in range(3))
            out = torch.empty_like(q)
            out_strides = (H * n * spec.d, n * spec.d, spec.d)
            if spec.family == "attn_mma":
                prep = A.Prepared(q, k, v, spec, "HND", False)
                qz = prep.qz
                launch = A.AttentionLaunch(spec, B, H, H, n, n, spec.d, prep.v_rows, out_strides, 0)
                ptrs = (qz.q8.data_ptr(), qz.q_scale.data_ptr(), qz.k8.data_ptr(), qz.k_scale.data_ptr(),
                        prep.v.data_ptr(), prep.v_strides, out.data_ptr(), 0, spec.d ** -0.5)
                runtime = lambda: A.run_kernel(prep, sm_scale=spec.d ** -0.5, out=out)  # noqa: E731
            else:
                qz = W.quantize_for(q, k, v, spec, "HND", False)
                launch = W.AttentionLaunch(spec, B, H, H, n, n, spec.d, out_strides, 0)
                ptrs = (qz.q8.data_ptr(), qz.q_scale.data_ptr(), qz.k8.data_ptr(), qz.k_scale.data_ptr(),
                        qz.v.data_ptr(), qz.v_scale.data_ptr() if qz.v_scale is not None else 0, out.data_ptr(), 0,
                        spec.d ** -0.5 * W.LOG2E)
                runtime = lambda: W.run_kernel(qz, spec, q_shape=q.shape, layout="HND", B=B, Hq=H,  # noqa: E731
                                               Hkv=H, sm_scale=spec.d ** -0.5, out=out)
            flops = 4 * B * H * n * n * spec.d / (2 if spec.causal else 1)
            line = [f"n={n} {spec.name}"]
            ref = None  # the 'none' probe's output, when it runs first
            exact = None
            if args.exact:
                exact = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                                         is_causal=spec.causal)
            for (s, probe), cubin in zip(jobs, cubins):
                if s is not spec:
                    continue
                kern = ProbeKernel(spec, cubin, 0)
                trace = None
                if "TRACE" in probe.split("+"):
                    nb = -(-n // spec.n)
                    trace = torch.zeros(launch.grid[0] * spec.consumers * nb * 8, device=dev, dtype=torch.int64)
                    assert trace.numel() * 2 <= B * H * n, "trace must fit where the LSE would go"
                run_ptrs = ptrs if trace is None else (*ptrs[:-2], trace.data_ptr(), ptrs[-1])
                out.fill_(float("nan"))  # poison: every probe must write every output
                kern(launch, stream, *run_ptrs)
                torch.cuda.synchronize()
                if probe == "none":
                    ref = out.float().clone()
                diff = ((out.float() - ref).abs().sum() / ref.abs().sum()).item() if ref is not None else None
                err = ((out.float() - exact).abs().sum() / exact.abs().sum()).item() if exact is not None else None
                ms = do_bench(lambda: kern(launch, stream, *run_ptrs), warmup=30, rep=200, return_mode="median")
                if trace is not None:
                    rows.append({"n": n, "spec": spec.name, "probe": probe, "trace": summarize_trace(
                        trace.view(launch.grid[0], spec.consumers, nb, 8).cpu())})
                tops = flops / (ms * 1e-3) / 1e12
                rows.append({"n": n, "spec": spec.name, "probe": probe, "ms": ms, "tops": tops,
                             "rel_l1_vs_none": diff, "rel_l1_vs_exact": err})
                vs_none = f" (vs none {diff:.1e})" if diff is not None and probe != "none" else ""
                vs_exact = f" (vs exact {err:.4f})" if err is not None else ""
                line.append(f"{probe}={tops:.0f}{vs_none}{vs_exact}")
            ms = do_bench(runtime, warmup=30, rep=200, return_mode="median")
            line.append(f"runtime={flops / (ms * 1e-3) / 1e12:.0f}")
            print(" | ".join(line), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "probe_wgmma.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
