// Conversions and packed-vector helpers shared by every kernel family. No CuTe here: this header stays cheap.
#pragma once
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda/std/cstdint>
using cuda::std::int8_t;
using cuda::std::int32_t;
using cuda::std::uint8_t;
using cuda::std::uint16_t;
using cuda::std::uint32_t;

namespace sagegen {

// 8 consecutive 16-bit elements = one 16-byte load/store.
struct alignas(16) Vec8x16 { uint32_t w[4]; };

template <class T> __device__ __forceinline__ float2 to_float2(uint32_t packed);
template <> __device__ __forceinline__ float2 to_float2<__half>(uint32_t p) {
  return __half22float2(*reinterpret_cast<const __half2*>(&p));
}
template <> __device__ __forceinline__ float2 to_float2<__nv_bfloat16>(uint32_t p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&p));
}

template <class T> __device__ __forceinline__ void unpack8(const Vec8x16& v, float (&f)[8]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    float2 t = to_float2<T>(v.w[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

__device__ __forceinline__ uint32_t pack_half2(float a, float b) {
  __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}

// Four floats already in [-127.5, 127.5] (x * 127 / amax of their group) -> four int8, rounded half to even as
// the emulation does (quant_layout.py), packed low byte = a. Adding 1.5 * 2^23 rounds x to an integer in the float's low mantissa bits (one
// FADD on the FMA pipe instead of F2I on the slow conversion pipe plus two clamps), and three byte permutes pack
// the low bytes. NaN gives an arbitrary byte: its group's scale is NaN too.
__device__ __forceinline__ uint32_t int8x4_rn(float a, float b, float c, float d) {
  constexpr float kMagic = 12582912.f;
  const uint32_t ua = __float_as_uint(__fadd_rn(a, kMagic)), ub = __float_as_uint(__fadd_rn(b, kMagic));
  const uint32_t uc = __float_as_uint(__fadd_rn(c, kMagic)), ud = __float_as_uint(__fadd_rn(d, kMagic));
  return __byte_perm(__byte_perm(ua, ub, 0x0040), __byte_perm(uc, ud, 0x0040), 0x5410);
}

// Two floats -> two e4m3 bytes (round to nearest even, saturating to +-448), low byte = a.
__device__ __forceinline__ uint16_t pack_e4m3x2(float a, float b) {
  __nv_fp8x2_storage_t s = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
  return static_cast<uint16_t>(s);
}

// max that keeps NaN (fmaxf drops it): a NaN input must poison its scale, as it poisons softmax in torch SDPA,
// rather than vanish in the int8 conversion. One FMNMX.NAN (sm_80+; |x| arguments fold into its operand
// modifiers), where the portable compare-and-select took three or four instructions per element of an amax.
__device__ __forceinline__ float max_keep_nan(float a, float b) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

// Non-negative floats order like their bit patterns (positive NaN above +inf), so amax can use integer atomics in shared memory.
__device__ __forceinline__ void atomic_max_nonneg(float* addr, float v) {
  atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
}

}  // namespace sagegen
