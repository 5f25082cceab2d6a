// Online softmax in base 2 over the accumulator fragment of mma.sync: each thread holds, per 16-row m-tile,
// rows g = lane/4 and g + 8, two columns per 8-column n-tile. A row lives in the 4 lanes of one quad.
#pragma once
#include <cuda/std/limits>

namespace sagegen::attn {

__device__ __forceinline__ float exp2_approx(float x) {  // MUFU.EX2; -inf -> +0
#ifdef SAGEGEN_PROBE_NO_EXP  // ablation probe (scripts/probe_wgmma.py): an FMUL in place of the exp unit
  return __fmul_rn(x, 0.5f);
#endif
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

constexpr float kNegInf = -cuda::std::numeric_limits<float>::infinity();

// Running state of the two rows a thread holds in one m-tile.
struct RowState {
  float max[2] = {kNegInf, kNegInf};  // the reference max each row's probabilities are taken against
  float sum[2] = {0.f, 0.f};          // this thread's partial sums; the quad reduces them once at the end
};

// One key block of raw scores (int32 dot products converted to float, masked entries -inf) -> probabilities,
// for all kMTiles m-tiles of a warp at once so the independent rows' latency chains interleave.
// scale[mt][r] (> 0) maps this thread's raw scores of a row into log2 units (q_scale * k_scale * sm_scale * log2 e), so the
// dequantization and the max subtraction are one FFMA per score.
//
// Lazy rescaling: a row's reference max moves only when the block max exceeds it by more than kSlack (log2
// units). Probabilities can then reach 2^kSlack, which the fp32 accumulators and fp16 P absorb, and most blocks
// after the first few skip rescaling O. Returns whether any row of the warp moved (then O *= alpha).
//
// For the wgmma family (templates/attn_wgmma/kernel.cuh): score_bias is a constant every raw score carries (its
// int32 scores arrive as floats offset by 1.5 * 2^23, no I2F); every probability and row sum comes out multiplied
// by 2^log2_gain (FP8 P maps p onto e4m3's range for free); kRowSum = false leaves st.sum alone for a caller that
// sums P elsewhere (on the P.V MMA).
//
// kOrderedBits: every raw score's bit pattern, read as an int32, orders like its value: true for the wgmma
// family's biased scores (positive floats in [2^23, 2^24]) and the -inf of masked ones (a negative int32). The row
// max then runs on the integer pipe's three-input max (VIMNMX3 on sm_90), two scores per instruction instead of
// one FMNMX each; the result is the same score, so the output is bit-identical.
template <int kN>
__device__ __forceinline__ int max3_tree(int (&m)[kN]) {  // max of kN int32, ternary tree (log3 depth)
#pragma unroll
  for (int w = 1; w < kN; w *= 3)
#pragma unroll
    for (int j = 0; j + w < kN; j += 3 * w)
      m[j] = j + 2 * w < kN ? __vimax3_s32(m[j], m[j + w], m[j + 2 * w]) : max(m[j], m[j + w]);
  return m[0];
}

template <int kMTiles, int kNTiles, int kSlack, bool kRowSum = true, bool kOrderedBits = false>
__device__ __forceinline__ bool online_softmax(float (&s)[kMTiles][kNTiles][4], const float (&scale)[kMTiles][2],
                                               RowState (&st)[kMTiles], float (&alpha)[kMTiles][2],
                                               float score_bias = 0.f, float log2_gain = 0.f) {
  float block_max[kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float row_max;
#ifndef SAGEGEN_PROBE_FLOAT_MAX  // ablation probe (scripts/probe_wgmma.py): the float tree even for ordered bits
      if constexpr (kOrderedBits) {
        int m[2 * kNTiles];
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          m[2 * j] = __float_as_int(s[mt][j][2 * r]);
          m[2 * j + 1] = __float_as_int(s[mt][j][2 * r + 1]);
        }
#ifdef SAGEGEN_PROBE_I2F_SCORES  // ablation probe (scripts/probe_wgmma.py): raw int32 scores, I2FP before the FFMA
        row_max = float(max3_tree(m));
#else
        row_max = __int_as_float(max3_tree(m));
#endif
      } else
#endif
      {
        float m[kNTiles];  // pairwise tree: log-depth dependency chain
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) m[j] = fmaxf(s[mt][j][2 * r], s[mt][j][2 * r + 1]);
#pragma unroll
        for (int w = 1; w < kNTiles; w *= 2)
#pragma unroll
          for (int j = 0; j + w < kNTiles; j += 2 * w) m[j] = fmaxf(m[j], m[j + w]);
        row_max = m[0];
      }
      // Scale before the quad reduction: with per-thread K scales the 4 lanes of a row scale differently.
      block_max[mt][r] = (row_max - score_bias) * scale[mt][r];  // exact subtraction; -inf stays -inf (scale > 0)
#ifdef SAGEGEN_PROBE_NO_MAX  // ablation probe (scripts/probe_wgmma.py): no row max (a constant instead)
      block_max[mt][r] = 0.f;
#endif
    }
#ifndef SAGEGEN_PROBE_NO_MAX
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) block_max[mt][r] = quad_max(block_max[mt][r]);
#endif
  bool moved = false;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // (kSlack = 0 compares with the max itself: max + 0.f is an FADD, since it is not an identity for -0)
      const bool up = block_max[mt][r] > (kSlack == 0 ? st[mt].max[r] : st[mt].max[r] + float(kSlack));
      // A row with every key masked so far has max = -inf: alpha = exp2(-inf) = 0 clears its (empty) state.
      alpha[mt][r] = up ? exp2_approx(st[mt].max[r] - block_max[mt][r]) : 1.f;
      st[mt].max[r] = up ? block_max[mt][r] : st[mt].max[r];
      moved |= up;
    }
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // Rows with no visible key yet keep max = -inf; exponentiate against 0 so they yield 0, not NaN.
      const float neg_ref =
          (st[mt].max[r] == kNegInf ? 0.f : -st[mt].max[r]) + log2_gain - score_bias * scale[mt][r];
      float sum[kNTiles];
#ifdef SAGEGEN_PROBE_CHORD_EXP  // ablation probe (scripts/probe_wgmma.py): e4m3 codes of 2^x on the FMA pipe
      // For FP8 P with the MMA row sum (no kRowSum): x = log2(448 p). The e4m3 code of 2^x, linear inside each
      // octave, is round(8 x + 56); computed as kMagic + 256 (8 (x - 0.0436) + 56) + 128, so bits 8..15 of the
      // float's pattern hold it (pack_p takes them with PRMT). The 0.0436 offset centres the chord's error
      // (2^f vs 1 + f) and keeps the largest code at 126; the clamp at kMagic sends x < -7 (and -inf) to code 0.
      if constexpr (kOrderedBits && !kRowSum) {
        constexpr float kMagic = 12582912.f;  // 1.5 * 2^23: the float's low 23 bits hold an integer
        const float c8 = scale[mt][r] * 2048.f, add = fmaf(neg_ref, 2048.f, kMagic + 14375.f);
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          s[mt][j][2 * r] = fmaxf(fmaf(s[mt][j][2 * r], c8, add), kMagic);
          s[mt][j][2 * r + 1] = fmaxf(fmaf(s[mt][j][2 * r + 1], c8, add), kMagic);
        }
        continue;
      }
#endif
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
#ifdef SAGEGEN_PROBE_I2F_SCORES
        if constexpr (kOrderedBits) {
          s[mt][j][2 * r] = float(__float_as_int(s[mt][j][2 * r]));
          s[mt][j][2 * r + 1] = float(__float_as_int(s[mt][j][2 * r + 1]));
        }
#endif
        s[mt][j][2 * r] = exp2_approx(fmaf(s[mt][j][2 * r], scale[mt][r], neg_ref));
        s[mt][j][2 * r + 1] = exp2_approx(fmaf(s[mt][j][2 * r + 1], scale[mt][r], neg_ref));
        if constexpr (kRowSum) sum[j] = s[mt][j][2 * r] + s[mt][j][2 * r + 1];
      }
      if constexpr (kRowSum) {
#pragma unroll
        for (int w = 1; w < kNTiles; w *= 2)
#pragma unroll
          for (int j = 0; j + w < kNTiles; j += 2 * w) sum[j] += sum[j + w];
        st[mt].sum[r] = fmaf(st[mt].sum[r], alpha[mt][r], sum[0]);
      }
    }
  return __any_sync(0xffffffffu, moved);
}

}  // namespace sagegen::attn
