// Which scores are kept: keys past the sequence end are dropped; with causal masking, key c is visible to
// query r when c <= r + offset (offset = 0: top-left alignment; offset = nk - nq: bottom-right).
#pragma once
#include "attn_mma/softmax.cuh"

namespace sagegen::attn {

template <bool kCausal, int kNTiles>
__device__ __forceinline__ void apply_mask(float (&s)[kNTiles][4], int row0, int col0, int nk, int offset) {
  // row0: this thread's first row (the second is row0 + 8); col0: the thread's first column in the block.
#pragma unroll
  for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = row0 + (e >> 1) * 8, col = col0 + j * 8 + (e & 1);
      const bool keep = col < nk && (!kCausal || col <= row + offset);
      if (!keep) s[j][e] = kNegInf;
    }
  }
}

// Key-block range a CTA must visit: all blocks up to the last key its last row can see.
template <bool kCausal, int kBlockM, int kBlockN>
__device__ __forceinline__ int key_blocks(int m0, int nk, int offset) {
  int end = nk;
  if (kCausal) end = min(nk, m0 + kBlockM + offset);
  return end <= 0 ? 0 : (end + kBlockN - 1) / kBlockN;
}

// Whether block j needs per-element masking (the sequence tail, or keys past the CTA's first row's diagonal).
template <bool kCausal, int kBlockN>
__device__ __forceinline__ bool block_needs_mask(int j, int m0, int nk, int offset) {
  const int last_col = (j + 1) * kBlockN - 1;
  return last_col >= nk || (kCausal && last_col > m0 + offset);
}

// The first block j for which block_needs_mask is true; every later block needs it too (the tail block is the
// last one, and a block past the diagonal is followed only by blocks further past it).
template <bool kCausal, int kBlockN>
__device__ __forceinline__ int first_masked_block(int m0, int nk, int offset) {
  int first = nk / kBlockN;  // the block holding key nk (past the end when nk is a multiple of kBlockN)
  if (kCausal) {
    // (j + 1) * kBlockN - 1 > m0 + offset  <=>  j >= (m0 + offset + 1) / kBlockN, for m0 + offset + 1 > 0
    const int diag = m0 + offset + 1 <= 0 ? 0 : (m0 + offset + 1) / kBlockN;
    first = min(first, diag);
  }
  return first;
}

}  // namespace sagegen::attn
