// Rows of a caller's [B, H, N, d] tensor read as 16-byte vectors: one thread holds 8 channels of a row, D / 8
// consecutive lanes hold the whole row. Shared by the quantization pass (quant/quant.cuh) and the short family's
// in-kernel quantization (attn_mma/fused_quant.cuh), so both read and reduce rows the same way.
#pragma once
#include "common/numeric.cuh"

namespace sagegen {

struct Tensor4 {  // one [B, H, N, d] input with a contiguous last dim; strides in elements
  const void* ptr;
  long long sb, sh, sn;
};

// Channels ch..ch+7 of `row`; zeros past n rows or d channels.
template <class T>
__device__ __forceinline__ Vec8x16 load_row_vec(const Tensor4& t, int b, int h, int row, int ch, int n, int d) {
  Vec8x16 v{{0u, 0u, 0u, 0u}};
  if (row < n && ch < d) {
    const T* p = static_cast<const T*>(t.ptr) + b * t.sb + h * t.sh + row * t.sn + ch;
    v = *reinterpret_cast<const Vec8x16*>(p);
  }
  return v;
}

// Sum / NaN-keeping max over the D/8 lanes that hold one row (consecutive lanes of one warp).
template <int D> __device__ __forceinline__ float row_sum(float x) {
#pragma unroll
  for (int o = D / 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
template <int D> __device__ __forceinline__ float row_max(float x) {
#pragma unroll
  for (int o = D / 16; o > 0; o >>= 1) x = max_keep_nan(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

// 127 / amax of an INT8 scale group: 0 for an all-zero group, NaN for a NaN one (NaN inputs poison their group).
__device__ __forceinline__ float int8_inverse(float amax) {
  return amax > 0.f ? 127.f / amax : (amax == 0.f ? 0.f : amax);
}

}  // namespace sagegen
