// Short key sequences in one launch (the attn_short family, nk <= 128): the CTA quantizes its own operands into
// shared memory instead of reading the quantization pass's buffers. Same scheme as the pass (templates/quant/
// quant.cuh) and the same emulation: K smoothed by its channel mean over all nk keys, then INT8 per scale group;
// Q INT8 per scale group; V cast to fp16. Every CTA of a head redoes K and V (at most 128 keys, read through L2,
// a few hundred instructions per thread): cheaper than a second launch for the shapes this family serves.
//
// Thread map (as the pass's): each thread owns one 16-byte vector (8 channels) of a row; D / 8 consecutive lanes
// hold one row, so a row's reductions are warp shuffles.
#pragma once
#include <cuda/std/limits>
#include <cuda/std/type_traits>
#include "common/numeric.cuh"
#include "common/row_vec.cuh"
#include "common/attn_common.cuh"
#include "attn_mma/smem.cuh"
#include "attn_mma/mma_sm80.cuh"

namespace sagegen::attn {

constexpr int kShortKeys = 128;  // keys the short family holds in shared memory (quant_layout.N_ALIGN)

struct FusedInputs {  // the caller's q, k, v (common/row_vec.cuh)
  Tensor4 q, k, v;
};

template <int D, int Rows>  // Rows: rows per pass of the thread map
struct FusedScratch {
  float red[Rows][D];          // per-row-slot channel partial sums of K
  float mean[D];               // K's channel means
  float k_amax[kShortKeys];    // per K scale group (at most 64 in 128 keys)
  float q_amax[kShortKeys];    // per Q scale group of this CTA's rows
  float k_scale[kShortKeys];   // amax / 127: what the main loop multiplies by
  float q_scale[kShortKeys];
  float q_bias[kShortKeys];    // q . mean(k) per row of this CTA: smoothing's shift of the LSE
  float v_unscale[D];          // bf16 V: 2^k for a channel stored as v * 2^-k (fp16 range); else 1
};

// bf16 V holds values past fp16's range (65504), which the fp16 P.V operand cannot: a channel whose amax reaches
// 2^15 is stored times 2^-k (exact: a power of two), amax * 2^-k < 2^15, and the output channel is multiplied by
// 2^k. Channels below 2^15 (every realistic one) keep k = 0, so the emulation's plain fp16 cast still describes
// them bit for bit. NaN / inf channels keep k = 0 and propagate as in torch SDPA.
__device__ __forceinline__ float v_channel_scale(float amax) {
  if (!(amax >= 32768.f) || amax == cuda::std::numeric_limits<float>::infinity()) return 1.f;
  int e;
  frexpf(amax, &e);  // amax < 2^e
  return ldexpf(1.f, 15 - e);
}

// K (head hk, keys < nk), V (fp16) and this CTA's kBlockM Q rows (head h, from m0) into sK / sV / sQ, laid out as
// kShortKeys / kBlockN resident key blocks of the main loop's swizzled tiles; the scales and the LSE shift into fs.
// want_bias: compute q . mean(k) (only when the LSE is returned). Ends with a CTA barrier.
template <class C, class T>
__device__ void quantize_into_smem(const FusedInputs& in, int b, int h, int hk, int m0, int nq, int nk, int d,
                                   bool want_bias, uint8_t* sQ, uint8_t* sK, uint8_t* sV,
                                   FusedScratch<C::kD, C::kThreads / (C::kD / 8)>& fs) {
  constexpr int D = C::kD, kVec = D / 8, kRows = C::kThreads / kVec;
  constexpr int kPassK = kShortKeys / kRows, kPassQ = C::kBlockM / kRows;
  static_assert(kRows <= 32 && kShortKeys % kRows == 0 && C::kBlockM % kRows == 0, "thread map");
  using TileQK = SwizzledTile<D>;
  using TileV = SwizzledTile<D * 2>;
  const int cv = threadIdx.x % kVec, r0 = threadIdx.x / kVec, ch = cv * 8;
  for (int i = threadIdx.x; i < kShortKeys; i += C::kThreads) fs.k_amax[i] = fs.q_amax[i] = 0.f;

  // Every load of K, V and this CTA's Q rows in flight first (the prologue is latency-bound: one round trip to
  // memory instead of three), then K's channel sums in a fixed order (deterministic means). V goes straight into
  // its tile (cp.async, zero-filled past nk and d): fp16 is already the operand, bf16 is converted in place below.
  Vec8x16 raw[kPassK], qraw[kPassQ];
#pragma unroll
  for (int p = 0; p < kPassK; ++p) {
    const int row = r0 + p * kRows;
    const bool valid = row < nk && ch < d;
    const T* src = static_cast<const T*>(in.v.ptr) + b * in.v.sb + hk * in.v.sh + (valid ? row * in.v.sn + ch : 0);
    cp_async_16_zfill(sV + TileV::offset(row, cv), src, valid);
  }
  cp_async_commit();
#pragma unroll
  for (int p = 0; p < kPassK; ++p) raw[p] = load_row_vec<T>(in.k, b, hk, r0 + p * kRows, ch, nk, d);
#pragma unroll
  for (int p = 0; p < kPassQ; ++p) qraw[p] = load_row_vec<T>(in.q, b, h, m0 + r0 + p * kRows, ch, nq, d);
  {
    float s[8] = {};
#pragma unroll
    for (int p = 0; p < kPassK; ++p) {
      float f[8];
      unpack8<T>(raw[p], f);
#pragma unroll
      for (int i = 0; i < 8; ++i) s[i] += f[i];
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) fs.red[r0][ch + i] = s[i];
  }
  __syncthreads();
  const float inv_nk = 1.f / float(nk);
  for (int c = threadIdx.x; c < D; c += C::kThreads) {
    float x = 0.f;
    for (int r = 0; r < kRows; ++r) x += fs.red[r][c];
    fs.mean[c] = x * inv_nk;
  }
  __syncthreads();
  float mean[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) mean[i] = fs.mean[ch + i];
  constexpr bool kScaleV = !cuda::std::is_same_v<T, __half>;  // only bf16 can exceed fp16's range
  cp_async_wait<0>();  // this thread's V vectors have landed (its own: no barrier needed to read them)
  if constexpr (kScaleV) {  // channel amax partials of V into red (free again: the means are read)
    float vmax[8] = {};
#pragma unroll
    for (int p = 0; p < kPassK; ++p) {
      float f[8];
      unpack8<T>(*reinterpret_cast<const Vec8x16*>(sV + TileV::offset(r0 + p * kRows, cv)), f);
#pragma unroll
      for (int i = 0; i < 8; ++i) vmax[i] = max_keep_nan(vmax[i], fabsf(f[i]));
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) fs.red[r0][ch + i] = vmax[i];
  }

  // Smoothed K: each group's amax, then INT8 into the resident tiles (rows past nk are zeros, as the pass's).
  auto smoothed = [&](const Vec8x16& v, int row, float (&f)[8]) {
    unpack8<T>(v, f);
#pragma unroll
    for (int i = 0; i < 8; ++i) f[i] = (row < nk && ch + i < d) ? f[i] - mean[i] : 0.f;
  };
#pragma unroll
  for (int p = 0; p < kPassK; ++p) {
    const int row = r0 + p * kRows;
    float f[8], amax = 0.f;
    smoothed(raw[p], row, f);
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = max_keep_nan(amax, fabsf(f[i]));
    amax = row_max<D>(amax);
    if (cv == 0) atomic_max_nonneg(&fs.k_amax[scale_group(row, C::kKTile, C::kKSub)], amax);
  }
  __syncthreads();
  if constexpr (kScaleV) {  // every partial is in (the barrier above): each channel's scale, read after the next
    for (int c = threadIdx.x; c < D; c += C::kThreads) {
      float x = 0.f;
      for (int r = 0; r < kRows; ++r) x = max_keep_nan(x, fs.red[r][c]);
      fs.v_unscale[c] = 1.f / v_channel_scale(x);
    }
  }
#pragma unroll
  for (int p = 0; p < kPassK; ++p) {
    const int row = r0 + p * kRows;
    const float inv = int8_inverse(fs.k_amax[scale_group(row, C::kKTile, C::kKSub)]);
    float f[8];
    smoothed(raw[p], row, f);
    *reinterpret_cast<uint2*>(sK + TileQK::offset(row, ch >> 4) + (ch & 15)) =
        make_uint2(int8x4_rn(f[0] * inv, f[1] * inv, f[2] * inv, f[3] * inv),
                   int8x4_rn(f[4] * inv, f[5] * inv, f[6] * inv, f[7] * inv));
  }

  // Q: group amax (and q . mean(k) for the LSE), then INT8. Rows are local to the CTA: m0 is a multiple of every
  // Q scale tile, so local and global rows fall in the same groups.
#pragma unroll
  for (int p = 0; p < kPassQ; ++p) {
    const int row = r0 + p * kRows;
    float f[8], amax = 0.f, dot = 0.f;
    unpack8<T>(qraw[p], f);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      amax = max_keep_nan(amax, fabsf(f[i]));
      dot += f[i] * mean[i];
    }
    amax = row_max<D>(amax);
    if (want_bias) {
      dot = row_sum<D>(dot);
      if (cv == 0) fs.q_bias[row] = dot;
    }
    if (cv == 0) atomic_max_nonneg(&fs.q_amax[scale_group(row, C::kQTile, C::kQSub)], amax);
  }
  __syncthreads();
#pragma unroll
  for (int p = 0; p < kPassQ; ++p) {
    const int row = r0 + p * kRows;
    const float inv = int8_inverse(fs.q_amax[scale_group(row, C::kQTile, C::kQSub)]);
    float f[8];
    unpack8<T>(qraw[p], f);
    *reinterpret_cast<uint2*>(sQ + TileQK::offset(row, ch >> 4) + (ch & 15)) =
        make_uint2(int8x4_rn(f[0] * inv, f[1] * inv, f[2] * inv, f[3] * inv),
                   int8x4_rn(f[4] * inv, f[5] * inv, f[6] * inv, f[7] * inv));
  }
  // V: bf16 -> fp16 in place (times its channel's 2^-k), each thread the vectors it copied; the barrier below
  // publishes them, and the scales (written before the previous barrier) are visible here.
  if constexpr (kScaleV) {
    float vs[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) vs[i] = 1.f / fs.v_unscale[ch + i];  // exact: powers of two
#pragma unroll
    for (int p = 0; p < kPassK; ++p) {
      Vec8x16* at = reinterpret_cast<Vec8x16*>(sV + TileV::offset(r0 + p * kRows, cv));
      float f[8];
      unpack8<T>(*at, f);
      Vec8x16 o;
#pragma unroll
      for (int i = 0; i < 4; ++i) o.w[i] = pack_half2(f[2 * i] * vs[2 * i], f[2 * i + 1] * vs[2 * i + 1]);
      *at = o;
    }
  }
  for (int i = threadIdx.x; i < kShortKeys; i += C::kThreads) {
    fs.k_scale[i] = fs.k_amax[i] / 127.f;
    fs.q_scale[i] = fs.q_amax[i] / 127.f;
  }
  __syncthreads();
}

}  // namespace sagegen::attn
