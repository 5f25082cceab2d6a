// Small pieces every attention family shares: scale-group lookup (sagegen/quant_layout.py ScaleGroups), the
// scale floor, and packing of two output values.
#pragma once
#include "common/numeric.cuh"

namespace sagegen::attn {

// An all-zero Q or K group has scale 0; scores are scaled by at least this so that -inf * scale stays -inf.
constexpr float kMinScale = 1e-30f;

template <class OutT> __device__ __forceinline__ uint32_t pack_out(float a, float b);
template <> __device__ __forceinline__ uint32_t pack_out<__half>(float a, float b) { return pack_half2(a, b); }
template <> __device__ __forceinline__ uint32_t pack_out<__nv_bfloat16>(float a, float b) {
  __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}

__device__ __forceinline__ int scale_group(int row, int tile, int sub) {
  return (row / tile) * sub + (row % 8) / (8 / sub);
}

}  // namespace sagegen::attn
