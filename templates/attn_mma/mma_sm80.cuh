// The arch-specific instructions of the attention family, behind one small policy: the mma.sync atoms
// (CuTe's SM80 atoms), ldmatrix and cp.async. A future FP8 (sm89/sm120) or NVFP4 (sm120a) family swaps this file
// for one with the same member functions; the kernel, softmax and masking headers stay.
#pragma once
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "attn_mma needs mma.sync int8 / ldmatrix / cp.async (sm_80 or newer)"
#endif
#include <cute/arch/mma_sm80.hpp>
#include <cute/arch/copy_sm75.hpp>
#include <cute/arch/copy_sm80.hpp>
#include "common/numeric.cuh"

namespace sagegen::attn {

struct MmaSm80 {
  // S(16x8, s32) += Q(16x32, s8) . K^T(32x8, s8)
  __device__ __forceinline__ static void qk(int32_t (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    uint32_t* d = reinterpret_cast<uint32_t*>(c);
#ifdef SAGEGEN_PROBE_NO_MMA  // ablation probe (scripts/probe_wgmma.py, attn_mma specs): no tensor op, same deps
    asm volatile("" : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]),
                 "r"(b0), "r"(b1));
    return;
#endif
    cute::SM80_16x8x32_S32S8S8S32_TN::fma(d[0], d[1], d[2], d[3], a[0], a[1], a[2], a[3], b0, b1,
                                          d[0], d[1], d[2], d[3]);
  }
  // O(16x8, f32) += P(16x16, f16) . V(16x8, f16)
  __device__ __forceinline__ static void pv(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef SAGEGEN_PROBE_NO_MMA
    asm volatile("" : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]),
                 "r"(b0), "r"(b1));
    return;
#endif
    cute::SM80_16x8x16_F32F16F16F32_TN::fma(c[0], c[1], c[2], c[3], a[0], a[1], a[2], a[3], b0, b1,
                                            c[0], c[1], c[2], c[3]);
  }
  // O(16x8, f16) += P . V with the accumulator rounded to fp16 each step (SageAttention's fp16-accumulate mode)
  __device__ __forceinline__ static void pv(uint32_t (&c)[2], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef SAGEGEN_PROBE_NO_MMA
    asm volatile("" : "+r"(c[0]), "+r"(c[1]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    return;
#endif
    cute::SM80_16x8x16_F16F16F16F16_TN::fma(c[0], c[1], a[0], a[1], a[2], a[3], b0, b1, c[0], c[1]);
  }
};

// ldmatrix x4: four 8x8 b16 matrices, one row address per lane (lane / 8 picks the matrix).
__device__ __forceinline__ void ldsm_x4(const void* smem_row, uint32_t (&r)[4]) {
  cute::SM75_U32x4_LDSM_N::copy(*reinterpret_cast<const cute::uint128_t*>(smem_row), r[0], r[1], r[2], r[3]);
}
__device__ __forceinline__ void ldsm_x4_trans(const void* smem_row, uint32_t (&r)[4]) {
  cute::SM75_U16x8_LDSM_T::copy(*reinterpret_cast<const cute::uint128_t*>(smem_row), r[0], r[1], r[2], r[3]);
}

// 16-byte global -> shared copies that bypass L1; the zero-fill form writes zeros when `valid` is false.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
  cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(*reinterpret_cast<const cute::uint128_t*>(gmem),
                                                         *reinterpret_cast<cute::uint128_t*>(smem));
}
__device__ __forceinline__ void cp_async_16_zfill(void* smem, const void* gmem, bool valid) {
  cute::SM80_CP_ASYNC_CACHEGLOBAL_ZFILL<cute::uint128_t>::copy(
      *reinterpret_cast<const cute::uint128_t*>(gmem), *reinterpret_cast<cute::uint128_t*>(smem), valid);
}
__device__ __forceinline__ void cp_async_commit() { cute::cp_async_fence(); }
template <int N> __device__ __forceinline__ void cp_async_wait() { cute::cp_async_wait<N>(); }

}  // namespace sagegen::attn
