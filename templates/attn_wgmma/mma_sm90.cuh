// The warpgroup MMAs of the sm90a family, as a policy class: the kernel calls MmaSm90::qk / ::pv only, so an
// exact equivalent (another arch's instruction with the same fragments) can replace it without touching the
// kernel. CuTe supplies the instruction atoms and the shared-memory descriptor type.
#pragma once
#include <cuda/std/utility>
#include <cute/arch/mma_sm90_desc.hpp>
#include <cute/arch/mma_sm90_gmma.hpp>
#ifdef SAGEGEN_WGMMA_EXTENDED_N  // N = 72 / 136 live in CuTe's 30k-line extension header: only variants that need it
#include <cute/arch/mma_sm90_gmma_ext.hpp>
#endif

namespace sagegen::wg {

namespace G = cute::SM90::GMMA;
using cuda::std::uint32_t;
using cuda::std::uint64_t;

// Descriptor of a K-major operand tile in the image the quantization pass writes (sagegen/quant_layout.py):
// rows of W bytes (64 or 128), 16-byte chunks swizzled across 8-row groups that lie GroupBytes apart (8 * W, or
// more where an 8-row group holds several swizzle atoms side by side). The tile starts on a 1024-byte boundary
// because the hardware swizzles address bits; a k-step adds its byte offset.
template <int W, int GroupBytes = 8 * W>
__device__ __forceinline__ uint64_t kmajor_desc(uint32_t smem_addr) {
  static_assert(W == 64 || W == 128, "the image uses the 64- or 128-byte swizzle");
  static_assert(GroupBytes % (8 * W) == 0 && (GroupBytes >> 4) < (1 << 14), "8-row groups of whole atoms");
  cute::GmmaDescriptor d;
  d.bitfield.start_address_ = uint16_t(smem_addr >> 4);
  d.bitfield.leading_byte_offset_ = 1;  // unused by swizzled K-major layouts
  d.bitfield.stride_byte_offset_ = uint16_t(GroupBytes >> 4);
  d.bitfield.base_offset_ = 0;
  d.bitfield.layout_type_ = uint8_t(W == 128 ? G::LayoutType::B128 : G::LayoutType::B64);
  return d.desc_;
}

// Descriptor of an MN-major fp16 operand in the V fp16 image (sagegen/quant_layout.py): per k index one 128-byte
// row of 64 N-elements, 16-byte chunks swizzled across 8-row groups that lie 1024 bytes apart (SBO); the next 64
// N-elements (channel slab) start SlabBytes further on (LBO). Same 1024-byte alignment rule as above.
template <int SlabBytes>
__device__ __forceinline__ uint64_t mnmajor_desc(uint32_t smem_addr) {
  static_assert(SlabBytes % 1024 == 0 && (SlabBytes >> 4) < (1 << 14), "slab offset must fit the descriptor");
  cute::GmmaDescriptor d;
  d.bitfield.start_address_ = uint16_t(smem_addr >> 4);
  d.bitfield.leading_byte_offset_ = uint16_t(SlabBytes >> 4);
  d.bitfield.stride_byte_offset_ = uint16_t(1024 >> 4);
  d.bitfield.base_offset_ = 0;
  d.bitfield.layout_type_ = uint8_t(G::LayoutType::B128);
  return d.desc_;
}

template <int N> struct QkI8;  // S (s32) = Q (s8, smem) . K^T (s8, smem): m64 nN k32
template <> struct QkI8<64> { using Op = G::MMA_64x64x32_S32S8S8_SS_TN; };
template <> struct QkI8<128> { using Op = G::MMA_64x128x32_S32S8S8_SS_TN; };
template <int N> struct PvE4m3;  // O (f32) = P (e4m3, registers) . V^T (e4m3, smem): m64 nN k32
template <> struct PvE4m3<64> { using Op = G::MMA_64x64x32_F32E4M3E4M3_RS_TN<>; };
template <> struct PvE4m3<128> { using Op = G::MMA_64x128x32_F32E4M3E4M3_RS_TN<>; };
template <int N> struct PvU8;  // O (s32) = P (u8, registers) . V^T (u8: s8 + 128, smem): m64 nN k32
template <> struct PvU8<64> { using Op = G::MMA_64x64x32_S32U8U8_RS_TN; };
template <> struct PvU8<128> { using Op = G::MMA_64x128x32_S32U8U8_RS_TN; };
template <int N> struct PvF16;  // O (f32) += P (f16, registers) . V (f16, smem, MN-major): m64 nN k16
template <> struct PvF16<64> { using Op = G::MMA_64x64x16_F32F16F16_RS<G::Major::K, G::Major::MN>; };
template <> struct PvF16<128> { using Op = G::MMA_64x128x16_F32F16F16_RS<G::Major::K, G::Major::MN>; };
template <> struct PvF16<256> { using Op = G::MMA_64x256x16_F32F16F16_RS<G::Major::K, G::Major::MN>; };
#ifdef SAGEGEN_WGMMA_EXTENDED_N
// Head dim + 8: V with 8 columns of ones appended, so the MMA also sums P (the softmax denominator).
template <> struct PvE4m3<72> { using Op = G::MMA_64x72x32_F32E4M3E4M3_RS_TN<>; };
template <> struct PvE4m3<136> { using Op = G::MMA_64x136x32_F32E4M3E4M3_RS_TN<>; };
template <> struct PvF16<72> { using Op = G::MMA_64x72x16_F32F16F16_RS<G::Major::K, G::Major::MN>; };
template <> struct PvF16<136> { using Op = G::MMA_64x136x16_F32F16F16_RS<G::Major::K, G::Major::MN>; };
#endif

template <class Op, class Acc, size_t... I>
__device__ __forceinline__ void fma_ss(uint64_t a, uint64_t b, Acc* d, G::ScaleOut acc,
                                       cuda::std::index_sequence<I...>) {
  Op::fma(a, b, d[I]..., acc);
}
template <class Op, class Acc, size_t... I>
__device__ __forceinline__ void fma_rs(const uint32_t (&a)[4], uint64_t b, Acc* d, G::ScaleOut acc,
                                       cuda::std::index_sequence<I...>) {
  Op::fma(a[0], a[1], a[2], a[3], b, d[I]..., acc);
}

template <class T, int N> __device__ __forceinline__ void fence_operands(T (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) cute::warpgroup_fence_operand(r[i]);
}

struct MmaSm90 {
  // One k32 step of S = Q.K^T for a 64 x N tile; accumulate = false starts from zero.
  template <int N>
  __device__ static __forceinline__ void qk(uint64_t q_desc, uint64_t k_desc, uint32_t (&s)[N / 2], bool accumulate) {
    fma_ss<typename QkI8<N>::Op>(q_desc, k_desc, s, accumulate ? G::ScaleOut::One : G::ScaleOut::Zero,
                                 cuda::std::make_index_sequence<N / 2>{});
  }
  // One k32 step of O = P.V for a 64 x N tile (N = head dim); P's fragment is 4 registers of 4 e4m3 each.
  template <int N>
  __device__ static __forceinline__ void pv(const uint32_t (&p)[4], uint64_t vt_desc, float (&o)[N / 2],
                                            bool accumulate) {
    fma_rs<typename PvE4m3<N>::Op>(p, vt_desc, o, accumulate ? G::ScaleOut::One : G::ScaleOut::Zero,
                                   cuda::std::make_index_sequence<N / 2>{});
  }
  // One k32 step of O = P.V for a 64 x N tile in int32 (exact); P's fragment is 4 registers of 4 u8 each, laid
  // out as the e4m3 one; V^T unsigned (the quantization pass stores INT8 V offset by 128: every sum >= 0).
  template <int N>
  __device__ static __forceinline__ void pv_u8(const uint32_t (&p)[4], uint64_t vt_desc, uint32_t (&o)[N / 2],
                                               bool accumulate) {
    fma_rs<typename PvU8<N>::Op>(p, vt_desc, o, accumulate ? G::ScaleOut::One : G::ScaleOut::Zero,
                                 cuda::std::make_index_sequence<N / 2>{});
  }
  // One k16 step of O += P.V for a 64 x N tile (N = head dim, + 8 with the row sum); P's fragment is 4 registers
  // of 2 fp16 each.
  template <int N>
  __device__ static __forceinline__ void pv_f16(const uint32_t (&p)[4], uint64_t v_desc, float (&o)[N / 2]) {
    fma_rs<typename PvF16<N>::Op>(p, v_desc, o, G::ScaleOut::One, cuda::std::make_index_sequence<N / 2>{});
  }
  __device__ static __forceinline__ void begin() { cute::warpgroup_arrive(); }
  __device__ static __forceinline__ void commit() { cute::warpgroup_commit_batch(); }
  template <int Pending> __device__ static __forceinline__ void wait() { cute::warpgroup_wait<Pending>(); }
};

}  // namespace sagegen::wg
