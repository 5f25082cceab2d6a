// Quantization passes (see sagegen/quant_layout.py for the contract, sagegen/variants/quant.py for the variants).
// Plain CUDA C++: memory-bound code gains nothing from CuTe and compiles in ~1 s without it.
//
// Both kernels use 256 threads and give each thread one 16-byte vector (8 channels) of a row: a row of D channels
// is D/8 consecutive threads, a pass covers 2048/D rows, and a CTA walks one 128-row chunk (N_ALIGN) or one split.
#pragma once
#include "common/numeric.cuh"
#include "common/row_vec.cuh"

namespace sagegen::quant {

constexpr int kThreads = 256;
constexpr int kChunk = 128;  // rows per CTA in the qkv pass == N_ALIGN

template <int D> struct RowMap {
  static constexpr int kVecPerRow = D / 8;
  static constexpr int kRowsPerPass = kThreads / kVecPerRow;
  static_assert(kRowsPerPass % 8 == 0, "a pass must cover whole 8-row fragments");
};

// ---- pass 1: per-split channel sums of K and channel amax of V ------------------------------------------------
template <class T, int D, bool kWithV>
__device__ void stats(Tensor4 k, Tensor4 v, int H, int n, int d, int rows_per_split, float* ksum, float* vamax) {
  using M = RowMap<D>;
  __shared__ float red[2][M::kRowsPerPass][D];
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z, splits = gridDim.x;
  const int cv = threadIdx.x % M::kVecPerRow, r0 = threadIdx.x / M::kVecPerRow, ch = cv * 8;
  const int row_end = min(n, (split + 1) * rows_per_split);
  float s[8] = {}, m[8] = {};
  constexpr int kUnroll = 4;  // independent loads in flight per thread: the loop is latency-bound otherwise
  for (int row0 = split * rows_per_split + r0; row0 < row_end; row0 += kUnroll * M::kRowsPerPass) {
    Vec8x16 kv[kUnroll], vv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int row = row0 + u * M::kRowsPerPass;
      kv[u] = load_row_vec<T>(k, b, h, row, ch, row_end, d);
      if constexpr (kWithV) vv[u] = load_row_vec<T>(v, b, h, row, ch, row_end, d);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float f[8];
      unpack8<T>(kv[u], f);
#pragma unroll
      for (int i = 0; i < 8; ++i) s[i] += f[i];
      if constexpr (kWithV) {
        unpack8<T>(vv[u], f);
#pragma unroll
        for (int i = 0; i < 8; ++i) m[i] = max_keep_nan(m[i], fabsf(f[i]));
      }
    }
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    red[0][r0][ch + i] = s[i];
    red[1][r0][ch + i] = m[i];
  }
  __syncthreads();
  const long long out = ((long long)(b * H + h) * splits + split) * D;
  for (int c = threadIdx.x; c < D; c += kThreads) {
    float acc = 0.f, mx = 0.f;
    for (int r = 0; r < M::kRowsPerPass; ++r) {  // fixed order: deterministic sums
      acc += red[0][r][c];
      mx = max_keep_nan(mx, red[1][r][c]);
    }
    ksum[out + c] = acc;
    if constexpr (kWithV) vamax[out + c] = mx;
  }
}

// ---- pass 2: INT8 Q, INT8 smoothed K, V cast or 8-bit-transposed (e4m3 or int8) --------------------------------
struct QkvArgs {
  Tensor4 q, k, v;
  int Hq, Hkv, nq, nk, d, nq_pad, nk_pad;  // Q and K/V lengths may differ (cross attention, KV cache)
  int q_tile, q_sub, k_tile, k_sub;  // ScaleGroups of Q and K
  int splits;                        // of the stats pass; 0: no stats pass, the keys fit one chunk (nk <= 128)
                                     // and its CTA takes K's mean / V's amax from its own rows (local_stats)
  int qk_image;                      // Q/K in the wgmma operand image (quant_layout.qk_to_image)
  const float* ksum;                 // [B, Hkv, splits, D]
  const float* vamax;                // [B, Hkv, splits, D] (8-bit V only: e4m3 or int8, per-channel scales)
  int8_t* q8; float* q_scale;        // [B, Hq, n_pad, D], [B, Hq, n_pad/q_tile*q_sub]
  int8_t* k8; float* k_scale;
  void* v_out; float* v_scale;       // fp16 [B, Hkv, n_pad, D], e4m3 [B, Hkv, D, n_pad] or its image
                                     // [B, Hkv, n_pad/128, D, 128], int8 in that image; scales [B, Hkv, D]
  float* qk_bias;                    // optional [B, Hq, nq]: q . mean(k), to restore the LSE after smoothing
};

// The scale group of a row (quant_layout.ScaleGroups.index) from shift counts: tile divides 128 and sub is 1, 4 or
// 8 (ScaleGroups checks both), so both are powers of two. With the runtime divisions instead, each of a thread's
// 16 calls per chunk cost three integer-division sequences.
struct ScaleShifts {
  int tile, sub;  // log2(tile), log2(sub)
  __device__ __forceinline__ ScaleShifts(int tile_, int sub_) : tile(__ffs(tile_) - 1), sub(__ffs(sub_) - 1) {}
  __device__ __forceinline__ int index(int row) const { return ((row >> tile) << sub) + ((row & 7) >> (3 - sub)); }
};

// Combines the stats pass's per-split partials of one channel (stride D apart) in split order with op. The loads
// go out in predicated batches of kBatch before any is used, with no remainder loop: these L2 round trips sit
// between a chunk's loads and its first use (the pass went 784 -> 728 us at 8k with this and a lower-register V
// packing loop, against a `#pragma unroll 4` loop over the runtime count). The order keeps a sum bit-identical to
// a sequential one.
template <int D, class Op>
__device__ __forceinline__ float combine_splits(const float* p, int splits, float init, Op op) {
  constexpr int kBatch = 4;  // as measured (16 did not remove the qkv kernel's spills either)
  float acc = init;
  for (int s0 = 0; s0 < splits; s0 += kBatch) {
    float part[kBatch];
#pragma unroll
    for (int s = 0; s < kBatch; ++s) part[s] = s0 + s < splits ? p[(s0 + s) * D] : init;
#pragma unroll
    for (int s = 0; s < kBatch; ++s) acc = op(acc, part[s]);
  }
  return acc;
}

// Without a stats pass (a.splits == 0: every key is in this one chunk), the chunk's CTA computes the statistics
// from the rows it holds, in the stats pass's order: each thread over its rows r0, r0 + kRowsPerPass, ... (pass
// order), then the rows of the pass in order, so the K mean is bit-identical to the two-pass one. op: + (K sums)
// or the NaN-keeping max of |x| (V amax); rows past n hold zeros (load_row_vec), which change neither. One
// instantiation for both (abs_max a runtime flag): one 8 KB scratch array, not two, in the kernel's static shared
// memory (sm86/sm89 have 100 KB per SM for the 3-4 CTAs the pass wants).
template <class T, int D, int kPasses>
__device__ __forceinline__ void local_stats_to_smem(const Vec8x16 (&raw)[kPasses], bool abs_max, float scale,
                                                    float* out) {
  using M = RowMap<D>;
  __shared__ float red[M::kRowsPerPass][D];
  const int cv = threadIdx.x % M::kVecPerRow, r0 = threadIdx.x / M::kVecPerRow, ch = cv * 8;
  float acc[8] = {};
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    float f[8];
    unpack8<T>(raw[p], f);
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = abs_max ? max_keep_nan(acc[i], fabsf(f[i])) : acc[i] + f[i];
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) red[r0][ch + i] = acc[i];
  __syncthreads();
  for (int c = threadIdx.x; c < D; c += kThreads) {
    float x = 0.f;
    for (int r = 0; r < M::kRowsPerPass; ++r) x = abs_max ? max_keep_nan(x, red[r][c]) : x + red[r][c];
    out[c] = abs_max ? x : x * scale;
  }
}

// Channel means of K into shared memory, one channel per thread. Every 8 threads of a row share 8 channels:
// reading the partials per channel rather than per thread cuts the L1/L2 traffic 16-fold (ncu: the qkv pass was
// L2-bound).
template <int D>
__device__ __forceinline__ void k_mean_to_smem(const QkvArgs& a, int b, int hk, float* mean) {
  const float* p = a.ksum + (long long)(b * a.Hkv + hk) * a.splits * D;
  const float inv_n = 1.f / float(a.nk);
  for (int c = threadIdx.x; c < D; c += kThreads)
    mean[c] = combine_splits<D>(p + c, a.splits, 0.f, [](float x, float y) { return x + y; }) * inv_n;
}

// Byte offset of channel ch (a multiple of 8) of Q/K row `row` (row mod 128) in a 128-row chunk of the operand
// image (quant_layout.qk_image_offset): the 64-byte swizzle for D = 64; for D >= 128, 8-row x 128-byte swizzle atoms
// (chunk c of row r at c ^ r % 8), the D / 128 atoms of an 8-row group side by side (D = 128: row r at 128 r).
template <int D> __device__ __forceinline__ int qk_image_offset(int row, int ch) {
  static_assert(D == 64 || D == 128 || D == 256, "operand images exist for D = 64, 128, 256");
  const int chunk = ch >> 4, byte = ch & 15;
  if constexpr (D == 64) return row * 64 + (((chunk ^ ((row >> 1) & 3)) << 4) | byte);
  return (row >> 3) * (8 * D) + (ch >> 7) * 1024 + (row & 7) * 128 + ((((chunk & 7) ^ (row & 7)) << 4) | byte);
}

// One 128-row chunk of Q (smooth = false) or K (smooth = true) -> int8 + per-group scales.
template <class T, int D>
__device__ void quantize_int8_chunk(const QkvArgs& a, const Tensor4& x, int H, int chunk_id, bool is_k,
                                    int8_t* out, float* scale, int tile, int sub) {
  using M = RowMap<D>;
  constexpr int kPasses = kChunk / M::kRowsPerPass;
  __shared__ float group_amax[kChunk];  // at most 128 groups in a chunk (tile 8, sub 8)
  const int n = is_k ? a.nk : a.nq, n_pad = is_k ? a.nk_pad : a.nq_pad;
  const int chunks = n_pad / kChunk;
  const int bh = chunk_id / chunks, chunk = chunk_id % chunks, b = bh / H, h = bh % H;
  const int cv = threadIdx.x % M::kVecPerRow, r0 = threadIdx.x / M::kVecPerRow, ch = cv * 8;
  const int groups = kChunk / tile * sub;
  const ScaleShifts shifts(tile, sub);
  for (int g = threadIdx.x; g < groups; g += kThreads) group_amax[g] = 0.f;

  // Issue the chunk's loads first: the K-mean partials below (L2 hits) then overlap their latency.
  Vec8x16 raw[kPasses];
#pragma unroll
  for (int p = 0; p < kPasses; ++p) raw[p] = load_row_vec<T>(x, b, h, chunk * kChunk + r0 + p * M::kRowsPerPass, ch, n, a.d);

  __shared__ float s_mean[D];
  const int hk = is_k ? h : h / (a.Hq / a.Hkv);
  const bool need_mean = is_k || a.qk_bias != nullptr;  // splits == 0 only without qk_bias (QuantPlan)
  if (need_mean) {
    if (a.splits == 0) local_stats_to_smem<T, D, kPasses>(raw, false, 1.f / float(a.nk), s_mean);
    else k_mean_to_smem<D>(a, b, hk, s_mean);
  }
  __syncthreads();
  float mean[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) mean[i] = need_mean ? s_mean[ch + i] : 0.f;
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    const int lrow = r0 + p * M::kRowsPerPass, row = chunk * kChunk + lrow;
    float f[8], amax = 0.f, dot = 0.f;
    unpack8<T>(raw[p], f);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const bool live = row < n && ch + i < a.d;
      if (is_k) f[i] = live ? f[i] - mean[i] : 0.f;
      else dot += f[i] * mean[i];
      amax = max_keep_nan(amax, fabsf(f[i]));
    }
    amax = row_max<D>(amax);
    if (!is_k && a.qk_bias != nullptr) {
      dot = row_sum<D>(dot);
      if (cv == 0 && row < n) a.qk_bias[(long long)bh * n + row] = dot;
    }
    if (cv == 0) atomic_max_nonneg(&group_amax[shifts.index(lrow)], amax);
  }
  __syncthreads();
  const long long row_base = (long long)bh * n_pad + chunk * kChunk;
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    const int lrow = r0 + p * M::kRowsPerPass, row = chunk * kChunk + lrow;
    const float amax = group_amax[shifts.index(lrow)];
    const float inv = int8_inverse(amax);  // NaN amax -> NaN values
    float f[8];
    unpack8<T>(raw[p], f);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const bool live = row < n && ch + i < a.d;
      f[i] = live ? (is_k ? f[i] - mean[i] : f[i]) * inv : 0.f;  // |f| <= 127 (amax is over these same values)
    }
    uint2 packed = make_uint2(int8x4_rn(f[0], f[1], f[2], f[3]), int8x4_rn(f[4], f[5], f[6], f[7]));
    // lrow = row mod 128: a chunk is whole 8-row groups, so its image is the plain chunk's bytes permuted
    const int offset = a.qk_image ? qk_image_offset<D>(lrow, ch) : lrow * D + ch;
    *reinterpret_cast<uint2*>(out + row_base * D + offset) = packed;
  }
  const long long scale_base = (long long)bh * (n_pad / tile * sub) + chunk * groups;
  for (int g = threadIdx.x; g < groups; g += kThreads) scale[scale_base + g] = group_amax[g] / 127.f;
}

// One 128-row chunk of V -> fp16. kImage = false: plain rows [n_pad, D]; true: the wgmma image
// [n_pad/128, D/64, 128, 64] (64-channel slabs, 16-byte chunks 128-byte swizzled by key row; quant_layout.py).
// Both put a chunk's D * 128 values at the same offset, so only the position inside the chunk differs.
template <class T, int D, bool kImage>
__device__ void cast_v_f16_chunk(const QkvArgs& a, int chunk_id) {
  using M = RowMap<D>;
  const int chunks = a.nk_pad / kChunk;
  const int bh = chunk_id / chunks, chunk = chunk_id % chunks, b = bh / a.Hkv, h = bh % a.Hkv;
  const int cv = threadIdx.x % M::kVecPerRow, r0 = threadIdx.x / M::kVecPerRow, ch = cv * 8;
  __half* out = static_cast<__half*>(a.v_out) + ((long long)bh * a.nk_pad + chunk * kChunk) * D;
  // Every load of the chunk in flight before the first store (a loop that loads as it stores keeps few in flight).
  constexpr int kPasses = kChunk / M::kRowsPerPass;
  Vec8x16 raw[kPasses];
#pragma unroll
  for (int p = 0; p < kPasses; ++p)
    raw[p] = load_row_vec<T>(a.v, b, h, chunk * kChunk + r0 + p * M::kRowsPerPass, ch, a.nk, a.d);
#pragma unroll
  for (int p = 0; p < kPasses; ++p) {
    const int lrow = r0 + p * M::kRowsPerPass;
    float f[8];
    unpack8<T>(raw[p], f);
    Vec8x16 o;
#pragma unroll
    for (int i = 0; i < 4; ++i) o.w[i] = pack_half2(f[2 * i], f[2 * i + 1]);
    const int dst = kImage ? (ch / 64) * (kChunk * 64) + lrow * 64 + ((((ch % 64) >> 3) ^ (lrow % 8)) << 3)
                           : lrow * D + ch;
    *reinterpret_cast<Vec8x16*>(out + dst) = o;
  }
}

// The four keys whose 8-bit (e4m3 or int8) bytes are consecutive at byte 4G of a channel row (G = 0..31): plain
// rows 4G..4G+3. The image puts key k = 32g+16h+8a+2t+e at byte 32g+16h+4t+2a+e (quant_layout.v_key_position), so
// that the 8-bit P fragment a thread packs from its wgmma accumulator (keys 2t+e, 8+2t+e of each 16) meets V in the
// order the P.V wgmma reads, with no shuffles: keys 32g+16h+2t+{0,1,8,9} land at 4G for G = 8g+4h+t.
template <bool kImage> __device__ __forceinline__ int v_group_key(int G, int j) {
  if constexpr (kImage) return (G & ~3) * 4 + (G & 3) * 2 + (j & 1) + (j & 2) * 4;
  else return 4 * G + j;
}

// The element formats of 8-bit V (per-channel scale amax_c / kMax, values v * (kMax / amax_c) encoded).
// pack4 encodes four values of one channel (keys j = 0..3 of a group, already multiplied by the inverse scale) into
// the four bytes of a 32-bit word, key 0 in the low byte.
enum class V8 { kE4m3, kInt8 };
template <V8 F> struct V8Format;
template <> struct V8Format<V8::kE4m3> {  // round to nearest even, saturating to +-448; NaN stays NaN (0x7f)
  static __device__ __forceinline__ uint32_t pack4(float a, float b, float c, float d) {
    return uint32_t(pack_e4m3x2(a, b)) | (uint32_t(pack_e4m3x2(c, d)) << 16);
  }
};
// INT8 as sagegen.reference.quantize_v_int8: round half to even, clamped to [-127, 127]. For a finite amax_c > 0
// with a finite inverse, |v * inv| <= 127 (1 + 2^-23) < 127.5, so the clamp never acts and int8x4_rn's rounding is
// the reference's exactly. It acts where the inverse or the values are not finite: +-inf -> +-127 (the
// reference's clamp; a bf16 channel with 0 < amax_c < 127 / FLT_MAX has inv = +inf), and NaN -> -127 (fmaxf keeps
// the number; the reference's value is NaN, which int8 cannot hold). Two FMNMX per value (the conversion itself is
// one FADD and 3/4 PRMT). Stored offset by 128 (each byte the u8 value + 128, one XOR of the sign bits): the
// attention kernel's u8 x u8 P.V wgmma then sums only non-negative products (attn_wgmma/kernel.cuh, kPvI8).
template <> struct V8Format<V8::kInt8> {
  static __device__ __forceinline__ float clamp(float x) { return fminf(fmaxf(x, -127.f), 127.f); }
  static __device__ __forceinline__ uint32_t pack4(float a, float b, float c, float d) {
    return int8x4_rn(clamp(a), clamp(b), clamp(c), clamp(d)) ^ 0x80808080u;
  }
};

// One 128-key chunk of V -> 8-bit format F (e4m3 or int8) with per-channel scales, transposed through shared
// memory. kImage = false: plain [D, n_pad] rows; true: the wgmma image [n_pad/128, D, 128] (keys at v_group_key's
// positions, 16-byte chunks 128-byte swizzled). Both formats have the same byte layout; only the encoding differs.
// Scale amax_c / kMax and inverse kMax / amax_c, both IEEE divisions (the reference's formats.fdiv). amax_c = 0:
// scale 0, inverse 0 (values 0). NaN amax_c: scale NaN and inverse NaN (values NaN in e4m3, -127 in int8: the
// channel dequantizes to NaN either way). amax_c = +inf: scale inf, inverse 0 (finite values 0, +-inf ones NaN in
// e4m3 and -127 in int8; the channel dequantizes to NaN, 0 * inf, either way).
// Each thread loads the four keys of a group (v_group_key) per channel vector, so it writes each channel's four
// bytes as one 32-bit shared-memory store instead of four byte stores.
template <class T, int D, bool kImage, V8 F>
__device__ void quantize_v8_chunk(const QkvArgs& a, int chunk_id) {
  using M = RowMap<D>;
  using Fmt = V8Format<F>;
  constexpr float kMax = F == V8::kE4m3 ? 448.f : 127.f;  // a local, not a static member: no device global
  // [channel][key] bytes. The 16 threads of a row write channels 8 apart: with plain rows every one of them
  // hits the same bank (any 16-byte-aligned pitch is a multiple of 128 bytes per 8 rows). XOR-ing the 16-byte
  // chunk index with (channel / 8) % 8 spreads them over 8 banks (2-way at worst).
  __shared__ __align__(16) uint8_t tile[D][kChunk];
  auto swz = [](int c, int byte) { return (((byte >> 4) ^ ((c >> 3) & 7)) << 4) | (byte & 15); };
  __shared__ float inv_scale[D];
  const int chunks = a.nk_pad / kChunk;
  const int bh = chunk_id / chunks, chunk = chunk_id % chunks, b = bh / a.Hkv, h = bh % a.Hkv;
  const int cv = threadIdx.x % M::kVecPerRow, r0 = threadIdx.x / M::kVecPerRow, ch = cv * 8;
  // Issue the chunk's loads first: the amax partials below (L2 hits) then overlap their latency. Pass p = 4q + j
  // loads key j of this thread's group q.
  constexpr int kPasses = kChunk / M::kRowsPerPass, kGroups = kPasses / 4;
  static_assert(kPasses % 4 == 0, "a thread's passes must cover whole four-key groups");
  Vec8x16 raw[kPasses];
#pragma unroll
  for (int p = 0; p < kPasses; ++p)
    raw[p] = load_row_vec<T>(a.v, b, h, chunk * kChunk + v_group_key<kImage>(r0 * kGroups + p / 4, p % 4), ch,
                             a.nk, a.d);
  if (a.splits == 0) {  // one chunk holds every key: its amax from the rows in hand (raw is in group order)
    local_stats_to_smem<T, D, kPasses>(raw, true, 1.f, inv_scale);
    __syncthreads();
  }
  for (int c = threadIdx.x; c < D; c += kThreads) {
    const float mx = a.splits == 0 ? inv_scale[c]
                                   : combine_splits<D>(a.vamax + (long long)bh * a.splits * D + c, a.splits, 0.f,
                                                       max_keep_nan);
    inv_scale[c] = mx > 0.f ? kMax / mx : (mx == 0.f ? 0.f : mx);
    if (chunk == 0) a.v_scale[(long long)bh * D + c] = mx / kMax;
  }
  __syncthreads();
  float inv[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) inv[i] = inv_scale[ch + i];
#pragma unroll
  for (int q = 0; q < kGroups; ++q) {
    const int pos = 4 * (r0 * kGroups + q);  // byte of the group's first key in every channel row
#pragma unroll
    for (int w = 0; w < 4; ++w) {  // channels ch + 2w, ch + 2w + 1 of the four keys (few registers live)
      float2 f[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) f[j] = to_float2<T>(raw[4 * q + j].w[w]);
      const int c0 = ch + 2 * w, c1 = c0 + 1;
      const uint32_t w0 = Fmt::pack4(f[0].x * inv[2 * w], f[1].x * inv[2 * w], f[2].x * inv[2 * w],
                                     f[3].x * inv[2 * w]);
      const uint32_t w1 = Fmt::pack4(f[0].y * inv[2 * w + 1], f[1].y * inv[2 * w + 1], f[2].y * inv[2 * w + 1],
                                     f[3].y * inv[2 * w + 1]);
      *reinterpret_cast<uint32_t*>(&tile[c0][swz(c0, pos)]) = w0;
      *reinterpret_cast<uint32_t*>(&tile[c1][swz(c1, pos)]) = w1;
    }
  }
  __syncthreads();
  // Plain: channel rows n_pad bytes apart, the chunk at column chunk * 128. Image: the chunk's [D, 128] block is
  // contiguous, at block `chunk` of the head.
  uint8_t* out = static_cast<uint8_t*>(a.v_out) + (long long)bh * D * a.nk_pad + chunk * kChunk * (kImage ? D : 1);
  for (int i = threadIdx.x; i < D * (kChunk / 16); i += kThreads) {
    const int c = i / (kChunk / 16), seg = i % (kChunk / 16);
    const long long dst = kImage ? c * kChunk + ((seg ^ (c % 8)) * 16) : (long long)c * a.nk_pad + seg * 16;
    *reinterpret_cast<uint4*>(out + dst) = *reinterpret_cast<const uint4*>(&tile[c][swz(c, seg * 16)]);
  }
}

// blockIdx.y picks the tensor (0 = Q, 1 = K, 2 = V); blockIdx.x walks one batch's 128-row chunks over its heads;
// blockIdx.z is the batch (so grid.x stays small). Grid.x covers the larger of Q and K/V; extra CTAs return.
// kVMode: 0 none, 1 fp16, 2 e4m3 transposed, 3 e4m3 wgmma image, 4 fp16 wgmma image, 5 int8 wgmma image (the
// e4m3 image's bytes, each int8 + 128)
template <class T, int D, int kVMode>
__device__ void qkv(const QkvArgs& a) {
  const int q_items = a.Hq * (a.nq_pad / kChunk), kv_items = a.Hkv * (a.nk_pad / kChunk);
  if (blockIdx.y == 0) {
    if (blockIdx.x >= q_items) return;
    quantize_int8_chunk<T, D>(a, a.q, a.Hq, blockIdx.z * q_items + blockIdx.x, false, a.q8, a.q_scale, a.q_tile, a.q_sub);
  } else if (blockIdx.y == 1) {
    if (blockIdx.x >= kv_items) return;
    quantize_int8_chunk<T, D>(a, a.k, a.Hkv, blockIdx.z * kv_items + blockIdx.x, true, a.k8, a.k_scale, a.k_tile, a.k_sub);
  } else {
    if (kVMode == 0 || blockIdx.x >= kv_items) return;
    if constexpr (kVMode == 1 || kVMode == 4)
      cast_v_f16_chunk<T, D, kVMode == 4>(a, blockIdx.z * kv_items + blockIdx.x);
    if constexpr (kVMode == 2 || kVMode == 3)
      quantize_v8_chunk<T, D, kVMode == 3, V8::kE4m3>(a, blockIdx.z * kv_items + blockIdx.x);
    if constexpr (kVMode == 5)
      quantize_v8_chunk<T, D, true, V8::kInt8>(a, blockIdx.z * kv_items + blockIdx.x);
  }
}

}  // namespace sagegen::quant
