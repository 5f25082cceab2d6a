// The softmax of INT8 P.V (pv = i8): P = round(255 p / p_b) as u8, each row of a key block scaled to its own
// largest probability p_b = max(max_j p_j, 2^-60) (p against the running max), so every block uses the whole u8
// range however far below the running max its scores sit; the reference's pv="int8" (sagegen/reference/_intqk.py).
//
// In log2 units: the block's reference is m_q = max(block max, running max - 60) and P = 255 * 2^(s - m_q) (never
// above 255: see the rounding of the folded score bias in block_scaled_softmax). O keeps
// the units of the last block's m_q, in multiples of 2^-149: the P.V tile's int32 sums x (0 <= x < 2^23), read as
// floats, are exactly the denormals x * 2^-149, so a block merges as o = o * gamma + tile with
// gamma = 2^(previous m_q - m_q): one FFMA per output element (kernel.cuh merge_pv), no conversion, and no branch to
// rescale O (gamma applies every block, as the exp per row it costs). O is an fp32 with at least the resolution of
// one integer unit of the current block's sums (denormal below 2^-126, normal above); the floor bounds gamma by
// 2^60, so O stays below 2^93 units (2^-56) for up to 2^10 blocks. The row sum l follows the same gammas in units of
// P (normal floats); the epilogue scales O by 2^149.
#pragma once
#include "common/numeric.cuh"
#include "attn_mma/softmax.cuh"

namespace sagegen::attn {

constexpr float kLog2U8Max = 7.994353436858858f;  // log2(255): P's gain, folded into the exp's argument
constexpr float kU8FloorLog2 = 60.f;              // p_b >= 2^-60 (the reference's U8_FLOOR)

// The two rows a thread holds in one 16-row m-tile.
struct BlockScaledRows {
  float run_max[2] = {kNegInf, kNegInf};  // the running max of each row (log2 units)
  float ref[2] = {kNegInf, kNegInf};      // m_q of the last block: O's and sum's units
  float sum[2] = {0.f, 0.f};              // this thread's part of l (the quad reduces it at the end)
};

// One key block of biased raw scores (kernel.cuh's kScoreBias; masked ones -inf, so their int32 patterns order
// like their values) -> 255 * 2^(s - m_q) in s, and each row's merge factor gamma. scale: this thread's raw score
// -> log2 units (q_scale * k_scale * sm_scale * log2 e). A NaN scale (NaN in Q or K) makes gamma NaN: u8 P cannot
// carry a NaN to the output as e4m3 P does, so O does (NaN inputs propagate, never become finite garbage).
template <int kNTiles>
__device__ __forceinline__ void block_scaled_softmax(float (&s)[kNTiles][4], float scale, BlockScaledRows& st,
                                                     float (&gamma)[2], float score_bias) {
  float block_max[2], own_max[2];  // the row's (quad) max in log2 units; this lane's largest raw score
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    int m[2 * kNTiles];
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
      m[2 * j] = __float_as_int(s[j][2 * r]);
      m[2 * j + 1] = __float_as_int(s[j][2 * r + 1]);
    }
    own_max[r] = __int_as_float(max3_tree(m));
    // Scale before the quad reduction: with per-thread K scales the 4 lanes of a row scale differently.
    block_max[r] = quad_max((own_max[r] - score_bias) * scale);
  }
  const float nan_if_nan = fmaf(scale, 0.f, 1.f);  // 1, or NaN for a NaN (or infinite) scale
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float run_max = fmaxf(st.run_max[r], block_max[r]);
    const float ref = fmaxf(block_max[r], run_max - kU8FloorLog2);  // m_q; -inf while the row has seen no key
    // ref == previous (both -inf included: no NaN from -inf - -inf) -> 1; the first visible block -> 0
    gamma[r] = (ref == st.ref[r] ? 1.f : exp2_approx(st.ref[r] - ref)) * nan_if_nan;
    st.run_max[r] = run_max;
    st.ref[r] = ref;
    // A row with no visible key yet exponentiates against 0: its -inf scores give 0, not NaN.
    float neg_ref = (ref == kNegInf ? 0.f : -ref) + kLog2U8Max - score_bias * scale;
    // The bias folded into neg_ref (kernel.cuh kScoreBias) costs it up to half an ulp of bias * scale: ~0.004 log2
    // units for heavy-tailed inputs' scales, more for larger ones. Upward, that lifts this lane's largest P past
    // 255.5, which 1024 + P in pack_u8x4 would wrap to a small byte (measured: rel-L1 0.11-0.25 on Student-t
    // inputs). So any excess of this lane's largest exp argument over log2(255) is taken off, rounding down (a
    // nearest-rounded step smaller than neg_ref's ulp would vanish): P <= 255, and the lanes' references keep
    // differing by about that rounding, as they do without it. 4 instructions per row and no shuffle (a row-uniform
    // headroom through a quad max cost 10-12% at d=64).
    neg_ref = __fsub_rd(neg_ref, fmaxf(fmaf(own_max[r], scale, neg_ref) - kLog2U8Max, 0.f));
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
      s[j][2 * r] = exp2_approx(fmaf(s[j][2 * r], scale, neg_ref));
      s[j][2 * r + 1] = exp2_approx(fmaf(s[j][2 * r + 1], scale, neg_ref));
    }
  }
}

// d = a * b + c keeping denormal operands and results: O's merge reads the P.V tile's int32 sums as denormal
// floats, and O itself is often denormal, which a flush-to-zero FFMA (fma.rn.ftz, as -ftz=true or fast-math would
// make fmaf) turns into 0. Spelled in PTX so the kernel stays right whatever flags it is compiled with.
__device__ __forceinline__ float fma_keep_denormals(float a, float b, float c) {
  float d;
  asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(d) : "f"(a), "f"(b), "f"(c));
  return d;
}

// Four values in [0, 255] -> four u8 (the lowest from a), each rounded to nearest even: fp16 holds x < 256 to
// 1/8 or finer, and 1024 + x in fp16 has a unit step, so the sum's low byte is the rounded x. Two F2FP, two HADD2
// and one PRMT; the reference rounds the same way (fp16 first, then to an integer).
__device__ __forceinline__ uint32_t pack_u8x4(float a, float b, float c, float d) {
#ifdef SAGEGEN_PROBE_U8_F2IP  // ablation probe (scripts/probe_wgmma.py): cvt.rni.s32.f32 + cvt.pack.sat.u8, which
  // ptxas fuses into one F2IP.U8.F32 per two values (2 instructions per four instead of 5; rounds once). Measured
  // (H100, eleventh session): a tie at d=128, 2-4% slower at d=64, where the exp unit sets the pace
  {
    uint32_t cd, abcd;  // cvt.pack.sat.u8.s32.b32 r, x, y, z: r = z << 16 | sat(x) << 8 | sat(y)
    asm("cvt.pack.sat.u8.s32.b32 %0, %1, %2, 0;" : "=r"(cd) : "r"(__float2int_rn(d)), "r"(__float2int_rn(c)));
    asm("cvt.pack.sat.u8.s32.b32 %0, %1, %2, %3;" : "=r"(abcd) : "r"(__float2int_rn(b)), "r"(__float2int_rn(a)),
        "r"(cd));
    return abcd;
  }
#endif
  const __half2 k1024 = __float2half2_rn(1024.f);
  const __half2 lo = __hadd2(__floats2half2_rn(a, b), k1024), hi = __hadd2(__floats2half2_rn(c, d), k1024);
  return __byte_perm(*reinterpret_cast<const uint32_t*>(&lo), *reinterpret_cast<const uint32_t*>(&hi), 0x6420);
}

}  // namespace sagegen::attn
