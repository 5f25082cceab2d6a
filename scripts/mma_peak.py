"""Peak throughput of the mma.sync atoms the attention family uses, on this GPU (a roofline for attn_mma).

Each warp issues long runs of independent MMAs on register operands (no memory traffic); TOPS = ops / time.
usage: python3 scripts/mma_peak.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SRC = r'''
#include <cute/arch/mma_sm80.hpp>
template <int KIND> __device__ void run(float* out, int iters) {
  uint32_t a[4] = {threadIdx.x, threadIdx.x * 3u, 7u, 9u}, b[2] = {5u, threadIdx.x};
  float c[8][4] = {};
  uint32_t h[8][2] = {};
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (KIND == 0) cute::SM80_16x8x16_F32F16F16F32_TN::fma(c[j][0], c[j][1], c[j][2], c[j][3], a[0], a[1], a[2], a[3], b[0], b[1], c[j][0], c[j][1], c[j][2], c[j][3]);
      if (KIND == 1) { uint32_t* d = reinterpret_cast<uint32_t*>(c[j]); cute::SM80_16x8x32_S32S8S8S32_TN::fma(d[0], d[1], d[2], d[3], a[0], a[1], a[2], a[3], b[0], b[1], d[0], d[1], d[2], d[3]); }
      if (KIND == 2) cute::SM80_16x8x16_F16F16F16F16_TN::fma(h[j][0], h[j][1], a[0], a[1], a[2], a[3], b[0], b[1], h[j][0], h[j][1]);
    }
  }
  float s = 0.f;
  for (int j = 0; j < 8; ++j) s += c[j][0] + c[j][3] + float(h[j][0] & 1);
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
extern "C" __global__ void __launch_bounds__(256) mma_f16(float* o, int n) { run<0>(o, n); }
extern "C" __global__ void __launch_bounds__(256) mma_s8(float* o, int n) { run<1>(o, n); }
extern "C" __global__ void __launch_bounds__(256) mma_f16acc(float* o, int n) { run<2>(o, n); }
'''


def main():
    from cuda.core import LaunchConfig, ObjectCode, Program, ProgramOptions, Stream, launch

    from sagegen.runtime.device import device_arch
    from sagegen.toolchain import include_dirs

    arch = device_arch(0)
    obj = Program(SRC, "c++", ProgramOptions(arch=arch.nvrtc_arch, std="c++17", device_as_default_execution_space=True,
                                             include_path=list(include_dirs()))).compile("cubin")
    mod = ObjectCode.from_cubin(bytes(obj.code))
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    blocks, threads, iters = sms * 8, 256, 4096
    out = torch.empty(blocks * threads, device="cuda")
    stream = Stream.from_handle(torch.cuda.current_stream().cuda_stream)
    for name, ops_per_mma in (("mma_f16", 16 * 8 * 16 * 2), ("mma_s8", 16 * 8 * 32 * 2), ("mma_f16acc", 16 * 8 * 16 * 2)):
        k = mod.get_kernel(name)
        cfg = LaunchConfig(grid=blocks, block=threads)
        for _ in range(3):
            launch(stream, cfg, k, out.data_ptr(), np.int32(iters))
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        launch(stream, cfg, k, out.data_ptr(), np.int32(iters))
        e1.record()
        torch.cuda.synchronize()
        ms = e0.elapsed_time(e1)
        total = blocks * (threads // 32) * iters * 8 * ops_per_mma
        print(f"{torch.cuda.get_device_name(0)} {name}: {total / ms / 1e9:.0f} TOPS")


if __name__ == "__main__":
    main()
