"""Does a warpgroup's softmax-like ALU work slow down while another warpgroup's wgmmas run on the same SM? (sm90a)

One CTA per SM, two warpgroups: warpgroup 0 streams wgmma batches (the fast kernel's Q.K^T: 4 x m64n128k32 s8 from
shared memory; optionally its P.V: 4 x m64n128k32 e4m3 with A from registers) until warpgroup 1 is done; warpgroup 1
runs passes of the fast kernel's softmax arithmetic on 64 registers per thread (row max tree + quad shuffles, one
FFMA and one MUFU.EX2 per value, e4m3 packing), or 64 of a single instruction type per pass (FFMA, MUFU.EX2,
FMNMX, the e4m3 and f16x2 conversions, HMNMX2, HFMA2). Both record clock64 cycles per pass / per batch; each case
runs alone and together. If the two overlapped perfectly, each would keep its alone rate when together. The MMA
batch's extra cycles per ALU instruction issued beside it is that instruction's cost to the tensor cores
(docs/perf-notes.md, fifth session).

usage: python3 scripts/wgmma_interference.py [--alu-iters 2000] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SRC = r'''
#include "attn_wgmma/mma_sm90.cuh"
#include "attn_mma/softmax.cuh"
#include "common/numeric.cuh"
using namespace sagegen;
using attn::exp2_approx;

// MMA: 0 none, 1 Q.K^T batches (IGMMA SS), 2 Q.K^T + P.V batches (IGMMA SS + QGMMA RS), 3 the same with Q from
// registers (IGMMA RS + QGMMA RS), 4 Q.K^T with Q from registers only. ALU: 0 none, 1 softmax,
// 2 FFMA only (no MUFU), 3 FFMA + EX2 (no max), 4 EX2 only, 5 FMNMX only, 6 F2FP e4m3 only; 64 per pass of:
// 7 ex2.approx.f16x2, 8 f32 pair -> f16x2, 9 f16x2 -> e4m3x2, 10 HMNMX2, 11 HFMA2.
template <int MMA, int ALU>
__device__ void bench(unsigned long long* out, int mma_iters, int alu_iters) {
  extern __shared__ __align__(1024) uint8_t smem[];
  __shared__ volatile int done;
  const int wg = threadIdx.x / 128, tid = threadIdx.x % 128;
  if (threadIdx.x == 0) done = 0;
  for (int i = threadIdx.x; i < 64 * 1024 / 16; i += blockDim.x)
    reinterpret_cast<uint4*>(smem)[i] = make_uint4(0, 0, 0, 0);
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
  __syncthreads();
  unsigned long long t0 = clock64(), t1 = t0;
  long long n = 0;
  float sink = 0.f;
  if (wg == 0) {
    if (MMA) {
      const uint32_t base = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
      const uint64_t qd = wg::kmajor_desc<128>(base), kd = wg::kmajor_desc<128>(base + 8192),
                     vd = wg::kmajor_desc<128>(base + 8192 + 16384);
      uint32_t s[64];
      float o[64];
      uint32_t pa[4][4];
#pragma unroll
      for (int i = 0; i < 64; ++i) { s[i] = 0; o[i] = 0.f; }
#pragma unroll
      for (int i = 0; i < 16; ++i) pa[i / 4][i % 4] = 0x38383838u;
      // Stop when the ALU warpgroup is done; the decision must be warpgroup-uniform (wgmma is .aligned), so the
      // four warps vote on it through a named barrier.
      auto stop = [&]() {
        if (ALU == 0) return false;
        uint32_t r;
        asm volatile("{\n .reg .pred p, q;\n setp.ne.u32 q, %1, 0;\n bar.red.or.pred p, 1, 128, q;\n"
                     " selp.u32 %0, 1, 0, p;\n}\n" : "=r"(r) : "r"(uint32_t(done)) : "memory");
        return r != 0;
      };
      for (; n < mma_iters && !stop(); ++n) {
        wg::fence_operands(s);
        wg::fence_operands(o);
        wg::MmaSm90::begin();
        if (MMA <= 2) {
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) wg::MmaSm90::qk<128>(qd + 2 * kk, kd + 2 * kk, s, true);
        } else {  // Q from registers (RS)
#pragma unroll
          for (int kk = 0; kk < 4; ++kk)
            wg::fma_rs<cute::SM90::GMMA::MMA_64x128x32_S32S8S8_RS_TN>(pa[kk], kd + 2 * kk, s,
                cute::SM90::GMMA::ScaleOut::One, cuda::std::make_index_sequence<64>{});
        }
        if (MMA == 2 || MMA == 3) {
#pragma unroll
          for (int kk = 0; kk < 4; ++kk) wg::MmaSm90::pv<128>(pa[kk], vd + 2 * kk, o, true);
        }
        wg::MmaSm90::commit();
        wg::MmaSm90::wait<0>();
        wg::fence_operands(s);
        wg::fence_operands(o);
      }
      t1 = clock64();
      sink = __int_as_float(s[tid % 64]) + o[tid % 64];
    }
  } else if (ALU) {
    float x[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) x[i] = 0.01f * float((tid * 7 + i * 13) % 97);
    const float c = 0.999f;
    for (int it = 0; it < alu_iters; ++it) {
      float m = 0.f;
      if (ALU == 1) {
        float t[32];
#pragma unroll
        for (int j = 0; j < 32; ++j) t[j] = fmaxf(x[2 * j], x[2 * j + 1]);
#pragma unroll
        for (int w = 1; w < 32; w *= 2)
#pragma unroll
          for (int j = 0; j + w < 32; j += 2 * w) t[j] = fmaxf(t[j], t[j + w]);
        m = fmaxf(t[0], __shfl_xor_sync(0xffffffffu, t[0], 1));
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, 2));
      }
      if (ALU <= 3) {
#pragma unroll
        for (int i = 0; i < 64; ++i) {
          const float a = fmaf(x[i], c, -m);
          x[i] = ALU == 2 ? fmaf(a, 0.5f, 0.25f) : exp2_approx(a);
        }
      } else if (ALU == 4) {  // MUFU.EX2 only
#pragma unroll
        for (int i = 0; i < 64; ++i) x[i] = exp2_approx(x[i]);
      } else if (ALU == 5) {  // FMNMX only
#pragma unroll
        for (int i = 0; i < 64; ++i) x[i] = fmaxf(x[i], x[(i + 17) % 64]);
      } else if (ALU == 6) {  // F2FP (e4m3 pairs) only
#pragma unroll
        for (int i = 0; i < 64; ++i)
          x[i] = __uint_as_float(uint32_t(pack_e4m3x2(x[i], x[(i + 1) % 64])) | 0x3c000000u);
      } else {  // f16x2 forms on 64 registers (bits reinterpreted; only the instruction mix matters)
        auto& h = reinterpret_cast<uint32_t(&)[64]>(x);
#pragma unroll
        for (int i = 0; i < 64; ++i) {
          uint32_t r;
          if (ALU == 7) asm volatile("ex2.approx.f16x2 %0, %1;" : "=r"(r) : "r"(h[i]));  // two MUFU.EX2.F16
          if (ALU == 8) r = pack_half2(x[i], x[(i + 1) % 64]);                           // F2FP.F16.F32.PACK_AB
          if (ALU == 9) {                                                                // e4m3x2 from f16x2
            uint16_t b;
            asm volatile("cvt.rn.satfinite.e4m3x2.f16x2 %0, %1;" : "=h"(b) : "r"(h[i]));
            r = uint32_t(b) | 0x3c000000u;
          }
          if (ALU == 10) {  // HMNMX2
            const __half2 m2 = __hmax2(*reinterpret_cast<const __half2*>(&h[i]),
                                       *reinterpret_cast<const __half2*>(&h[(i + 5) % 64]));
            r = *reinterpret_cast<const uint32_t*>(&m2);
          }
          if (ALU == 11) {  // HFMA2
            const __half2 f2 = __hfma2(*reinterpret_cast<const __half2*>(&h[i]), __float2half2_rn(0.999f),
                                       __float2half2_rn(-0.01f));
            r = *reinterpret_cast<const uint32_t*>(&f2);
          }
          h[i] = r;
        }
      }
      if (ALU == 1) {  // the pack into P, kept live through the next pass
        uint32_t packed = 0;
#pragma unroll
        for (int i = 0; i < 64; i += 4)
          packed ^= uint32_t(pack_e4m3x2(x[i], x[i + 1])) | (uint32_t(pack_e4m3x2(x[i + 2], x[i + 3])) << 16);
        x[0] += __uint_as_float(packed & 0x007fffffu) * 1e-30f;
      }
    }
    t1 = clock64();
    done = 1;
#pragma unroll
    for (int i = 0; i < 64; ++i) sink += x[i];
    n = alu_iters;
  }
  if (tid % 32 == 0) {
    const int w = threadIdx.x / 32;
    unsigned long long* row = out + (blockIdx.x * 8 + w) * 3;
    row[0] = t1 - t0;
    row[1] = (unsigned long long)n;
    row[2] = __float_as_uint(sink);
  }
}
#define K(M, A) \
  extern "C" __global__ void __launch_bounds__(256, 1) bench_##M##_##A(unsigned long long* o, int a, int b) { \
    bench<M, A>(o, a, b); \
  }
'''

CASES = ((0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (0, 6), (1, 0), (2, 0), (3, 0), (4, 0),
         (1, 1), (2, 1), (3, 1), (4, 1), (1, 2), (2, 2), (1, 3), (2, 3), (4, 3), (1, 4), (1, 5), (1, 6),
         (0, 7), (1, 7), (0, 8), (1, 8), (0, 9), (1, 9), (0, 10), (1, 10), (0, 11), (1, 11))
SRC += "".join(f"K({mma}, {alu})\n" for mma, alu in CASES)  # one kernel per (MMA, ALU) case
MMA_NAMES = {0: "none", 1: "QK (IGMMA SS)", 2: "QK+PV (IGMMA SS + QGMMA RS)", 3: "QK+PV (IGMMA RS + QGMMA RS)",
             4: "QK (IGMMA RS)"}
ALU_NAMES = {0: "none", 1: "softmax (max, FFMA, EX2, pack)", 2: "FFMA only", 3: "FFMA + EX2", 4: "EX2 only",
             5: "FMNMX only", 6: "F2FP e4m3 only", 7: "ex2.approx.f16x2 only", 8: "f32x2 -> f16x2 only",
             9: "f16x2 -> e4m3x2 only", 10: "HMNMX2 only", 11: "HFMA2 only"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alu-iters", type=int, default=2000)
    ap.add_argument("--mma-iters", type=int, default=4000, help="batches when no ALU warpgroup runs")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    args = ap.parse_args()
    from cuda.bindings import driver
    from cuda.core import LaunchConfig, ObjectCode, Stream, launch

    from sagegen.compiler import compile_cubin
    from sagegen.runtime.device import device_arch

    mod = ObjectCode.from_cubin(compile_cubin("wgmma_interference", SRC, device_arch(0)))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out = torch.zeros(sms * 8 * 3, dtype=torch.int64, device="cuda")
    stream = Stream.from_handle(torch.cuda.current_stream().cuda_stream)
    smem = 100 * 1024  # one CTA per SM
    rows = []
    for mma, alu in CASES:
        k = mod.get_kernel(f"bench_{mma}_{alu}")
        attr = driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        (err,) = driver.cuKernelSetAttribute(attr, smem, k.handle, 0)
        assert err == driver.CUresult.CUDA_SUCCESS, err
        cfg = LaunchConfig(grid=sms, block=256, shmem_size=smem)
        for _ in range(2):
            # with an ALU warpgroup, the MMA warpgroup runs until it is done (the cap is only a safety net)
            cap = args.mma_iters if alu == 0 else 1 << 30
            launch(stream, cfg, k, out.data_ptr(), np.int32(cap), np.int32(args.alu_iters))
        torch.cuda.synchronize()
        r = out.view(sms, 8, 3).cpu().numpy()
        mma_cyc, mma_n = r[:, :4, 0].mean(), r[:, :4, 1].mean()
        alu_cyc, alu_n = r[:, 4:, 0].mean(), r[:, 4:, 1].mean()
        row = {"mma": MMA_NAMES[mma], "alu": ALU_NAMES[alu],
               "cycles_per_mma_batch": float(mma_cyc / mma_n) if mma and mma_n else None,
               "cycles_per_alu_pass": float(alu_cyc / alu_n) if alu and alu_n else None}
        rows.append(row)
        print(f"{torch.cuda.get_device_name(0)} | MMA {row['mma']:<28} | ALU {row['alu']:<31} | cycles per MMA batch "
              f"{row['cycles_per_mma_batch'] or 0:7.1f} | per ALU pass {row['cycles_per_alu_pass'] or 0:7.1f}",
              flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "wgmma_interference.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
