// The attention main loop of the mma.sync family (see sagegen/variants/attn_mma.py for the parameters).
//
// One CTA: kBlockM query rows, kWarps warps of kWarpM rows each (kMTiles 16-row m-tiles). Q (int8) is loaded
// once into registers (or re-read per block when large); K (int8) and V (fp16) blocks of kBlockN keys stream
// through kStages cp.async stages.
// Per key block: S = Q.K^T in int32 -> dequantized with the Q and K scales and sm_scale*log2(e) in one multiply
// -> masked -> online softmax in base 2 -> P (fp16, straight from the accumulator registers) . V.
#pragma once
#include "attn_mma/mma_sm80.cuh"
#include "attn_mma/smem.cuh"
#include "attn_mma/softmax.cuh"
#include "attn_mma/mask.cuh"
#include "attn_mma/fused_quant.cuh"
#include "common/attn_common.cuh"

namespace sagegen::attn {

template <int D, int BlockM, int BlockN, int Warps, int Stages, bool Causal, bool AccF16, class OutT,
          int QTile, int QSub, int KTile, int KSub, class FusedIn = void, class Mma = MmaSm80>
struct Config {
  static constexpr int kD = D, kBlockM = BlockM, kBlockN = BlockN, kWarps = Warps, kStages = Stages;
  static constexpr bool kCausal = Causal, kAccF16 = AccF16;
  static constexpr int kThreads = 32 * Warps, kWarpM = BlockM / Warps, kMTiles = kWarpM / 16;
  static constexpr int kNTiles = BlockN / 8, kDTiles = D / 8, kKSteps = D / 32;
  static constexpr int kQTile = QTile, kQSub = QSub, kKTile = KTile, kKSub = KSub;
  // FusedIn (fp16 / bf16; void: the pass quantized): the short family, which quantizes its inputs itself
  // (fused_quant.cuh) and keeps every key block resident (all kShortKeys keys) instead of streaming stages.
  using In = FusedIn;
  static constexpr bool kFused = !cuda::std::is_same_v<FusedIn, void>;
  static constexpr int kKeyBufs = kFused ? kShortKeys / BlockN : Stages;  // K/V tiles in shared memory
  static constexpr int kSmemQ = BlockM * D, kSmemK = BlockN * D, kSmemV = BlockN * D * 2;
  static constexpr int kSmemBytes = kSmemQ + kKeyBufs * (kSmemK + kSmemV);
  // Q fragments stay in registers when they are few; otherwise each key block re-reads them from shared memory
  // (one ldmatrix per 16x32 fragment, reused across every key tile of the block).
  static constexpr bool kQInRegs = kMTiles * kKSteps * 4 <= 16;
  // Lazy-rescale slack (log2 units): P may reach 2^kSlack. An fp16 P.V accumulator summing a whole key block
  // of such values could overflow, so the fp16-accumulate mode rescales on every increase.
  static constexpr int kSlack = AccF16 ? 0 : 8;
  // Main loop unrolled over the stages (constant shared-memory offsets) where it was measured faster and ptxas
  // keeps it spill-free: 32-row warps at d=64, and at d=128 with 4 stages without a causal mask. H100, kernel TOPS
  // at 8k, same call (docs/perf-notes.md, seventh session): d=64 m128 n32 w4 s2 297 -> 312, s4 302 -> 323;
  // d=128 s4 384 -> 398 (s2 and s3 tie; unrolled they spill 8-24 bytes at d=128, as does causal s4).
  static constexpr int kUnroll =
      (!kFused && kWarpM == 32 && (D == 64 || (Stages == 4 && !Causal))) ? Stages : 1;
  static_assert(Stages >= 2, "at least a double buffer");
  using Out = OutT;
  using MmaOps = Mma;
  static_assert(kWarpM % 16 == 0 && kNTiles % 2 == 0 && D % 32 == 0, "tile shape");
  static_assert(KTile == BlockN, "K scales are per key block (or per thread within it)");
};

struct Params {
  const int8_t* q8; const float* q_scale;  // [B, Hq, nq_pad, D], [B, Hq, groups]
  const int8_t* k8; const float* k_scale;  // [B, Hkv, nk_pad, D], [B, Hkv, groups]
  const __half* v; long long v_sb, v_sh, v_sn;  // fp16 V, any layout with a contiguous last dim
  void* o; long long o_sb, o_sh, o_sn;           // output [.., d] in the caller's layout
  float* lse;                                     // optional [B, Hq, nq], natural log
  int Hq, Hkv, nq, nk, nq_pad, nk_pad, d, v_rows;
  float sm_scale_log2;
  int causal_offset;
  FusedInputs in;  // the short family's inputs (q8, k8, v and the scale pointers are then unused)
};

template <class C>
__device__ __forceinline__ void attn_fwd(const Params& p) {
  using Mma = typename C::MmaOps;
  using TileQK = SwizzledTile<C::kD>;
  using TileV = SwizzledTile<C::kD * 2>;
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* sQ = smem;
  uint8_t* sK = sQ + C::kSmemQ;
  uint8_t* sV = sK + C::kKeyBufs * C::kSmemK;

  // Causal: the last query tiles see the most keys; launch them first so they do not trail at the end.
  const int mb = C::kCausal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, hk = h / (p.Hq / p.Hkv);
  const int m0 = mb * C::kBlockM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
  const long long bh = (long long)b * p.Hq + h, bhk = (long long)b * p.Hkv + hk;
  const uint8_t* gQ = reinterpret_cast<const uint8_t*>(p.q8 + (bh * p.nq_pad + m0) * C::kD);
  const uint8_t* gK = reinterpret_cast<const uint8_t*>(p.k8 + bhk * p.nk_pad * C::kD);
  const uint8_t* gV = reinterpret_cast<const uint8_t*>(p.v + b * p.v_sb + hk * p.v_sh);
  const int nb = key_blocks<C::kCausal, C::kBlockM, C::kBlockN>(m0, p.nk, p.causal_offset);

  auto load_kv = [&](int j, int stage) {
    load_tile<C::kD, C::kBlockN, C::kThreads>(sK + stage * C::kSmemK, gK + (long long)j * C::kBlockN * C::kD, C::kD);
    load_tile_guarded<C::kD * 2, C::kBlockN, C::kThreads>(sV + stage * C::kSmemV,
                                                          gV + (long long)j * C::kBlockN * p.v_sn * 2,
                                                          p.v_sn * 2, p.v_rows - j * C::kBlockN);
  };
  // Scales: the pass's buffers (indexed by global row and key), or the short family's shared memory (Q rows local
  // to the CTA, keys < kShortKeys).
  __shared__ cuda::std::conditional_t<C::kFused, FusedScratch<C::kD, C::kThreads / (C::kD / 8)>, char> fused;
  const float* q_scale_base;
  const float* k_scale_base;
  int q_row0;  // subtracted from a row before its scale-group lookup
  if constexpr (C::kFused) {
    quantize_into_smem<C, typename C::In>(p.in, b, h, hk, m0, p.nq, p.nk, p.d, p.lse != nullptr, sQ, sK, sV, fused);
    q_scale_base = fused.q_scale, k_scale_base = fused.k_scale, q_row0 = m0;
  } else {
    // Prologue: Q with the first kStages - 1 key blocks, one commit group per block (Q rides with block 0).
    load_tile<C::kD, C::kBlockM, C::kThreads>(sQ, gQ, C::kD);
#pragma unroll
    for (int s = 0; s < C::kStages - 1; ++s) {
      if (s < nb) load_kv(s, s);
      cp_async_commit();
    }
    cp_async_wait<C::kStages - 2>();  // Q and block 0 have landed
    __syncthreads();
    q_scale_base = p.q_scale + bh * (p.nq_pad / C::kQTile * C::kQSub);
    k_scale_base = p.k_scale + bhk * (p.nk_pad / C::kKTile * C::kKSub);
    q_row0 = 0;
  }

  const int mi = lane / 8, r8 = lane % 8;
  auto load_q_frag = [&](int mt, int ks, uint32_t (&frag)[4]) {
    ldsm_x4(sQ + TileQK::offset(warp * C::kWarpM + mt * 16 + (mi & 1) * 8 + r8, ks * 2 + (mi >> 1)), frag);
  };
  uint32_t qf[C::kQInRegs ? C::kMTiles : 1][C::kQInRegs ? C::kKSteps : 1][4];
  if constexpr (C::kQInRegs) {
#pragma unroll
    for (int mt = 0; mt < C::kMTiles; ++mt)
#pragma unroll
      for (int ks = 0; ks < C::kKSteps; ++ks) load_q_frag(mt, ks, qf[mt][ks]);
  }

  // Q scales of this thread's rows, with sm_scale * log2(e) folded in.
  float q_scale[C::kMTiles][2];
#pragma unroll
  for (int mt = 0; mt < C::kMTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = m0 + warp * C::kWarpM + mt * 16 + g + 8 * r;
      q_scale[mt][r] = q_scale_base[scale_group(row - q_row0, C::kQTile, C::kQSub)] * p.sm_scale_log2;
    }

  float o[C::kMTiles][C::kDTiles][4] = {};
  RowState st[C::kMTiles];

  // O += P . V for the block in `stage`: P comes straight from the score registers as fp16 A fragments; with
  // kAccF16 the block accumulates in fp16 and joins the fp32 accumulator once (two-level accumulation).
  auto pv_block = [&](int stage, float (&s)[C::kMTiles][C::kNTiles][4], float (&o)[C::kMTiles][C::kDTiles][4]) {
    const uint8_t* sVs = sV + stage * C::kSmemV;
    [[maybe_unused]] uint32_t o16[C::kMTiles][C::kAccF16 ? C::kDTiles : 1][2];
    if constexpr (C::kAccF16) {
#pragma unroll
      for (int mt = 0; mt < C::kMTiles; ++mt)
#pragma unroll
        for (int n = 0; n < C::kDTiles; ++n) o16[mt][n][0] = o16[mt][n][1] = 0u;
    }
#pragma unroll
    for (int kk = 0; kk < C::kNTiles / 2; ++kk) {
      uint32_t pa[C::kMTiles][4];
#pragma unroll
      for (int mt = 0; mt < C::kMTiles; ++mt) {
        pa[mt][0] = pack_half2(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack_half2(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack_half2(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack_half2(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int n2 = 0; n2 < C::kDTiles / 2; ++n2) {
        uint32_t vb[4];
        ldsm_x4_trans(sVs + TileV::offset(kk * 16 + (mi & 1) * 8 + r8, n2 * 2 + (mi >> 1)), vb);
#pragma unroll
        for (int mt = 0; mt < C::kMTiles; ++mt) {
          if constexpr (C::kAccF16) {
            Mma::pv(o16[mt][2 * n2], pa[mt], vb[0], vb[1]);
            Mma::pv(o16[mt][2 * n2 + 1], pa[mt], vb[2], vb[3]);
          } else {
            Mma::pv(o[mt][2 * n2], pa[mt], vb[0], vb[1]);
            Mma::pv(o[mt][2 * n2 + 1], pa[mt], vb[2], vb[3]);
          }
        }
      }
    }
    if constexpr (C::kAccF16) {
#pragma unroll
      for (int mt = 0; mt < C::kMTiles; ++mt)
#pragma unroll
        for (int n = 0; n < C::kDTiles; ++n) {
          const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&o16[mt][n][0]));
          const float2 hi = __half22float2(*reinterpret_cast<const __half2*>(&o16[mt][n][1]));
          o[mt][n][0] += lo.x; o[mt][n][1] += lo.y; o[mt][n][2] += hi.x; o[mt][n][3] += hi.y;
        }
    }
  };

  // S = Q . K^T for key block j into s. The int32 accumulators live in the registers of the fp32 scores they
  // become (0.f has the bits of 0), so the conversion happens in place instead of doubling the live registers.
  auto qk_block = [&](int stage, float (&s)[C::kMTiles][C::kNTiles][4]) {
    const uint8_t* sKs = sK + stage * C::kSmemK;
#pragma unroll
    for (int mt = 0; mt < C::kMTiles; ++mt)
#pragma unroll
      for (int jj = 0; jj < C::kNTiles; ++jj)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][jj][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < C::kKSteps; ++ks) {
      uint32_t qs[C::kQInRegs ? 1 : C::kMTiles][4];
      if constexpr (!C::kQInRegs) {
#pragma unroll
        for (int mt = 0; mt < C::kMTiles; ++mt) load_q_frag(mt, ks, qs[mt]);
      }
#pragma unroll
      for (int jp = 0; jp < C::kNTiles / 2; ++jp) {
        uint32_t kb[4];
        ldsm_x4(sKs + TileQK::offset((2 * jp + (mi >> 1)) * 8 + r8, ks * 2 + (mi & 1)), kb);
#pragma unroll
        for (int mt = 0; mt < C::kMTiles; ++mt) {
          const uint32_t (&a)[4] = C::kQInRegs ? qf[C::kQInRegs ? mt : 0][C::kQInRegs ? ks : 0] : qs[C::kQInRegs ? 0 : mt];
          Mma::qk(reinterpret_cast<int32_t(&)[4]>(s[mt][2 * jp]), a, kb[0], kb[1]);
          Mma::qk(reinterpret_cast<int32_t(&)[4]>(s[mt][2 * jp + 1]), a, kb[2], kb[3]);
        }
      }
    }
  };

  // Dequantize, mask and exponentiate block j's scores, rescale O when a row max moved, then O += P . V.
  auto softmax_pv_block = [&](int j, int stage, float (&s)[C::kMTiles][C::kNTiles][4]) {
#ifdef SAGEGEN_PROBE_NO_SOFTMAX  // ablation probe (scripts/probe_wgmma.py, attn_mma specs): scores into P as is
    pv_block(stage, s, o);
    return;
#endif
    const int col0 = j * C::kBlockN + 2 * tq;
    const float k_scale = k_scale_base[scale_group(col0, C::kKTile, C::kKSub)];
    const bool masked = block_needs_mask<C::kCausal, C::kBlockN>(j, m0, p.nk, p.causal_offset);
    float scale[C::kMTiles][2];
#pragma unroll
    for (int mt = 0; mt < C::kMTiles; ++mt) {
#pragma unroll
      for (int jj = 0; jj < C::kNTiles; ++jj)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[mt][jj][e] = __int2float_rn(__float_as_int(s[mt][jj][e]));
      if (masked) apply_mask<C::kCausal>(s[mt], m0 + warp * C::kWarpM + mt * 16 + g, col0, p.nk, p.causal_offset);
      // An all-zero Q or K group has scale 0; a tiny positive scale keeps -inf * scale = -inf (not NaN). A NaN
      // scale (NaN in the inputs) must survive: the comparison is false for NaN, fmaxf would drop it.
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const float sc = q_scale[mt][r] * k_scale;
        scale[mt][r] = sc < kMinScale ? kMinScale : sc;
      }
    }
    float alpha[C::kMTiles][2];
    if (online_softmax<C::kMTiles, C::kNTiles, C::kSlack>(s, scale, st, alpha)) {
#pragma unroll
      for (int mt = 0; mt < C::kMTiles; ++mt)
#pragma unroll
        for (int n = 0; n < C::kDTiles; ++n) {
          o[mt][n][0] *= alpha[mt][0]; o[mt][n][1] *= alpha[mt][0];
          o[mt][n][2] *= alpha[mt][1]; o[mt][n][3] *= alpha[mt][1];
        }
    }
    pv_block(stage, s, o);
  };

  // One key block: wait for it, prefetch block j + kStages - 1 into stage `next`, then S, softmax and P.V.
  auto step = [&](int j, int buf, int next) {
    if constexpr (!C::kFused) {  // (the short family's key blocks are all resident: block j is buffer j)
      if (j > 0) {
        cp_async_wait<C::kStages - 2>();
        __syncthreads();  // block j landed for every thread, and everyone is done with block j-1's stage
      }
#ifndef SAGEGEN_PROBE_NO_LOAD  // ablation probe: later blocks reuse the first stages (no L2 -> shared traffic)
      if (j + C::kStages - 1 < nb) load_kv(j + C::kStages - 1, next);
#endif
      cp_async_commit();
    }
    float s[C::kMTiles][C::kNTiles][4];
    qk_block(buf, s);
    softmax_pv_block(j, buf, s);
  };
  if constexpr (C::kUnroll == 1) {
    for (int j = 0; j < nb; ++j) step(j, C::kFused ? j : j % C::kStages, (j + C::kStages - 1) % C::kStages);
  } else {  // unrolled over the stages: every stage's shared-memory offsets are constants
    for (int j0 = 0; j0 < nb; j0 += C::kUnroll)
#pragma unroll
      for (int u = 0; u < C::kUnroll; ++u)
        if (j0 + u < nb) step(j0 + u, u, (u + C::kStages - 1) % C::kStages);
  }

  // Epilogue: normalize, write O (the caller's d columns, rows < nq) and the LSE.
  const float kLn2 = 0.6931471805599453f;
#pragma unroll
  for (int mt = 0; mt < C::kMTiles; ++mt)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = m0 + warp * C::kWarpM + mt * 16 + g + 8 * r;
      const float l = quad_sum(st[mt].sum[r]);
      const float inv = l > 0.f ? 1.f / l : 0.f;  // a row that sees no key gets 0 (and lse = -inf)
      if (row < p.nq) {
        typename C::Out* orow = static_cast<typename C::Out*>(p.o) + b * p.o_sb + h * p.o_sh + row * p.o_sn;
#pragma unroll
        for (int n = 0; n < C::kDTiles; ++n) {
          const int col = n * 8 + 2 * tq;
          if (col < p.d) {
            float u0 = inv, u1 = inv;
            if constexpr (C::kFused && !cuda::std::is_same_v<typename C::In, __half>) {  // bf16 V's 2^k
              u0 *= fused.v_unscale[col];
              u1 *= fused.v_unscale[col + 1];
            }
            *reinterpret_cast<uint32_t*>(orow + col) = pack_out<typename C::Out>(o[mt][n][2 * r] * u0,
                                                                                 o[mt][n][2 * r + 1] * u1);
          }
        }
        if (p.lse != nullptr && tq == 0) {
          // The short family puts smoothing's shift back itself (sm_scale * q . mean(k)); the pass's path adds
          // its qk_bias buffer on the host side.
          float shift = 0.f;
          if constexpr (C::kFused) shift = fused.q_bias[row - m0] * (p.sm_scale_log2 * kLn2);
          p.lse[bh * p.nq + row] = l > 0.f ? (st[mt].max[r] + __log2f(l)) * kLn2 + shift : kNegInf;
        }
      }
    }
}

}  // namespace sagegen::attn
