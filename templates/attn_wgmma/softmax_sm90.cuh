// Online softmax over one consumer warpgroup's wgmma score tile: per thread rows g and g + 8 (g = lane / 4) and
// columns 8c + 2t + {0, 1} of every 8-column chunk c (t = lane % 4); a row lives in the 4 lanes of a quad.
//
// Integer scores become floats without a conversion instruction: the s32 accumulator starts at the bit pattern
// of 1.5 * 2^23, so after the MMAs each register, read as a float, is exactly 1.5 * 2^23 + s (|s| <= 128 * 127^2
// < 2^22 for d <= 128). The bias, the dequantization scale and the max subtraction then fold into one FFMA per
// score. Measured (NVIDIA H200, d=128, N=8k, overlapped kernel): 825 TOPS against 720 with I2F, which issues on
// the exp unit's pipe. Cost: the folded constant -1.5 * 2^23 * scale is rounded to fp32, which moves every score
// of a thread's row by the same amount, at most 0.375 of one integer unit of the score (half an ulp of
// 1.5 * 2^23 * scale): ~1000x below the INT8 rounding of Q and K themselves (each int8 value is rounded by up to
// 0.5, a d=128 score by hundreds of units). It only shows where Q and K scales are huge (Student-t tails: LSE
// within ~0.03 of the emulation instead of ~0.001).
#pragma once
#include "attn_mma/softmax.cuh"

namespace sagegen::attn_wg {

constexpr uint32_t kScoreBiasBits = 0x4B400000u;  // 1.5 * 2^23 as float bits
constexpr float kScoreBias = 12582912.f;

// One key block: s holds biased scores (masked ones -inf); scale > 0 maps a raw score into log2 units (q_scale *
// k_scale * sm_scale * log2 e, one value per thread). On return s holds 2^log2_gain * p, alpha each row's
// rescale factor for O (the max moves on every increase: 448 p must stay within e4m3's range).
// kRowSum false: the caller gets the row sums elsewhere (the P.V MMA against a column of ones) and st.sum is
// left alone.
template <int kChunks, bool kRowSum = true>
__device__ __forceinline__ void softmax_block(float (&s)[kChunks][4], float scale, attn::RowState& st,
                                              float (&alpha)[2], float log2_gain) {
  float block_max[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float m[kChunks];  // pairwise tree: log-depth dependency chain
#pragma unroll
    for (int c = 0; c < kChunks; ++c) m[c] = fmaxf(s[c][2 * r], s[c][2 * r + 1]);
#pragma unroll
    for (int w = 1; w < kChunks; w *= 2)
#pragma unroll
      for (int c = 0; c + w < kChunks; c += 2 * w) m[c] = fmaxf(m[c], m[c + w]);
    // Scale before the quad reduction: with per-thread K scales the 4 lanes of a row scale differently.
    block_max[r] = attn::quad_max((m[0] - kScoreBias) * scale);  // exact subtraction; -inf stays -inf
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool up = block_max[r] > st.max[r];
    alpha[r] = up ? attn::exp2_approx(st.max[r] - block_max[r]) : 1.f;  // max -inf so far: alpha = 0
    st.max[r] = up ? block_max[r] : st.max[r];
    // Rows with no visible key yet keep max = -inf; exponentiate against 0 so they yield 0, not NaN.
    const float neg_ref = (st.max[r] == attn::kNegInf ? 0.f : -st.max[r]) + log2_gain - kScoreBias * scale;
    float sum[kChunks];
#pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      s[c][2 * r] = attn::exp2_approx(fmaf(s[c][2 * r], scale, neg_ref));
      s[c][2 * r + 1] = attn::exp2_approx(fmaf(s[c][2 * r + 1], scale, neg_ref));
      if constexpr (kRowSum) sum[c] = s[c][2 * r] + s[c][2 * r + 1];
    }
    if constexpr (kRowSum) {
#pragma unroll
      for (int w = 1; w < kChunks; w *= 2)
#pragma unroll
        for (int c = 0; c + w < kChunks; c += 2 * w) sum[c] += sum[c + w];
      st.sum[r] = fmaf(st.sum[r], alpha[r], sum[0]);
    }
  }
}

}  // namespace sagegen::attn_wg
