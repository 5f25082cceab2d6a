// Shared-memory tiles: row-major rows of 16-byte chunks, XOR-swizzled so that the 8 row addresses of one
// ldmatrix (same chunk column, 8 consecutive rows) fall in 8 different bank groups, and cp.async stores of a
// row stay contiguous.
#pragma once
#include "attn_mma/mma_sm80.cuh"

namespace sagegen::attn {

template <int kRowBytes>
struct SwizzledTile {
  static constexpr int kChunks = kRowBytes / 16;
  static_assert(kChunks == 4 || kChunks % 8 == 0, "rows of 64 B or a multiple of 128 B");
  // 128-byte rows and wider: flip the low 3 chunk bits by row % 8. 64-byte rows (two per 128-byte bank line):
  // flip the 2 chunk bits by (row / 2) % 4, which together with the row's half-line gives 8 distinct groups.
  __device__ __forceinline__ static int offset(int row, int chunk) {
    const int swz = kChunks == 4 ? (row >> 1) & 3 : row & 7;
    return row * kRowBytes + ((chunk ^ swz) << 4);
  }
};

// Copy `rows` x kRowBytes from global (row stride in bytes) into a swizzled tile, all threads cooperating.
template <int kRowBytes, int kRows, int kThreads>
__device__ __forceinline__ void load_tile(uint8_t* smem, const uint8_t* gmem, long long row_stride) {
  using T = SwizzledTile<kRowBytes>;
  constexpr int kTotal = kRows * T::kChunks;
#pragma unroll
  for (int i = 0; i < (kTotal + kThreads - 1) / kThreads; ++i) {
    const int idx = threadIdx.x + i * kThreads, row = idx / T::kChunks, chunk = idx % T::kChunks;
    if (kTotal % kThreads != 0 && idx >= kTotal) break;
    cp_async_16(smem + T::offset(row, chunk), gmem + row * row_stride + chunk * 16);
  }
}

// Same, but rows at or past `valid_rows` are zero-filled (for tensors that are not padded to the tile).
template <int kRowBytes, int kRows, int kThreads>
__device__ __forceinline__ void load_tile_guarded(uint8_t* smem, const uint8_t* gmem, long long row_stride,
                                                  int valid_rows) {
  using T = SwizzledTile<kRowBytes>;
  constexpr int kTotal = kRows * T::kChunks;
#pragma unroll
  for (int i = 0; i < (kTotal + kThreads - 1) / kThreads; ++i) {
    const int idx = threadIdx.x + i * kThreads, row = idx / T::kChunks, chunk = idx % T::kChunks;
    if (kTotal % kThreads != 0 && idx >= kTotal) break;
    const bool valid = row < valid_rows;
    cp_async_16_zfill(smem + T::offset(row, chunk), gmem + (valid ? row : 0) * row_stride + chunk * 16, valid);
  }
}

}  // namespace sagegen::attn
