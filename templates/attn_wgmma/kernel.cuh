// The sm90a attention kernel: warp-specialized, fed by bulk copies, INT8 Q.K^T and FP8 (or FP16) P.V on wgmma
// (see sagegen/variants/attn_wgmma.py for the parameters).
//
// One CTA = one producer warpgroup + kConsumers consumer warpgroups of 64 query rows each. One producer thread
// issues every copy: Q once, then K and V^T tiles of kBlockN keys through kStages shared-memory stages, each
// guarded by two mbarriers (full: the bytes landed; empty: every consumer warp has finished reading it).
// The quantization pass wrote all operands in the swizzled shared-memory image wgmma reads
// (sagegen/quant_layout.py), so each tile is one contiguous bulk copy: no tensor map to encode on the host, no
// address arithmetic in the consumers.
//
// Per key block, each consumer warpgroup: S = Q.K^T (s32 in registers) -> dequantized with one FFMA per score,
// masked, online softmax in base 2 -> P = e4m3(448 p) packed straight from the accumulator registers (the V image
// permutes keys so the accumulator and A-operand fragments line up) -> O_blk = P.V^T into a fresh fp32 tile ->
// O = O * alpha + O_blk (two-level accumulation: the FP8 MMA's reduced-precision accumulator sums one block only).
// With FP16 P.V (kPvF16, the "accurate" precision): P = fp16(p) straight from the accumulator (the fragments of
// m64nNk16 line up with it as they are), V fp16 read MN-major from its image, the MMA accumulating into O itself
// in fp32; O is rescaled only when some row's max grows by more than 2^kSlack.
// With INT8 P.V (kPvI8): P = u8(255 p / p_b), each block row scaled to its own largest probability
// (attn_wgmma/softmax_u8.cuh); V INT8 per channel, stored offset by 128 (u8) in the e4m3 image's byte layout. The
// u8 . u8 MMA sums a block exactly into a fresh int32 tile, whose non-negative sums read as denormal floats enter O
// with one FFMA each (o = o * gamma + tile); the offset comes out once at the end (128 times the row sum of P).
#pragma once
#include "common/numeric.cuh"
#include "common/attn_common.cuh"
#include "common/sm90_async.cuh"
#include "attn_wgmma/mma_sm90.cuh"
#include "attn_mma/mask.cuh"
#include "attn_mma/softmax.cuh"
#include "attn_wgmma/softmax_u8.cuh"

namespace sagegen::attn_wg {

// P.V operand formats (the spec's pv): e4m3 P and V, fp16 P and V, u8 P with INT8 V (stored + 128 as u8).
enum PvFormat : int { kPvE4m3 = 0, kPvFp16 = 1, kPvInt8 = 2 };

template <int D, int BlockN, int Consumers, int Stages, bool Overlap, bool PingPong, bool MmaRowSum, int PvFmt,
          bool Causal, class OutT, int QTile, int QSub, int KTile, int KSub, class Mma = wg::MmaSm90>
struct Config {
  static constexpr bool PvF16 = PvFmt == kPvFp16, kPvI8 = PvFmt == kPvInt8;
  static constexpr int kD = D, kBlockN = BlockN, kConsumers = Consumers, kStages = Stages;
  static constexpr bool kOverlap = Overlap;  // Q.K^T of block j + 1 issued with P.V of block j (see consume)
  static constexpr bool kPingPong = PingPong;  // consumer warpgroups take turns issuing their MMAs
  // The softmax denominator from the P.V MMA: 8 columns of ones follow V in every stage, so the MMA's N grows by 8
  // and its last 8 columns hold each row's sum of P; no FADDs, no quad reduction. e4m3: 8 rows of ones (1 KB)
  // under the K-major V^T. fp16: a whole 64-channel slab of ones (16 KB) after V's slabs, where the MN-major
  // descriptor's slab stride puts columns D..D+7; there the sums accumulate in O itself, rescaled with it.
  static constexpr bool kMmaRowSum = MmaRowSum;
  // e4m3 at d=256: O (128 registers) and a whole-block P.V tile (128 more) do not fit 240, so each block's P.V runs
  // in two 128-channel halves through one 64-register tile, each merged into its half of O before the next is
  // issued. Every output element still sums the same 128 keys in the FP8 accumulator: the numerics are unchanged.
  static constexpr int kPvHalves = (PvFmt == kPvE4m3 && D == 256) ? 2 : 1, kPvCols = D / kPvHalves;
  // kPvN: the P.V MMA's N for the last channel half, whose V^T rows the ones rows follow (the only half at d <= 128)
  static constexpr int kOnesRows = MmaRowSum ? 8 : 0, kPvN = kPvCols + kOnesRows;
  static constexpr bool kPvF16 = PvF16;
  static constexpr int kVBytes = PvF16 ? 2 : 1, kPvKeyStep = PvF16 ? 16 : 32;  // V element bytes, keys per k-step
  // p's scale: e4m3 P maps p in [0, 1] onto its full range (448 = 2^8.807); fp16 P needs no gain; u8 P 255.
  static constexpr float kLog2PGain = PvF16 ? 0.f : (kPvI8 ? attn::kLog2U8Max : 8.807354922057604f);
  // Lazy O rescale (log2 units): fp16 P and O in fp32 absorb p up to 2^8; e4m3 P must stay within 448 (u8 P has
  // its own, softmax_u8.cuh).
  static constexpr int kSlack = PvF16 ? 8 : 0;
  static constexpr int kBlockM = 64 * Consumers, kThreads = 128 * (Consumers + 1);
  static constexpr bool kCausal = Causal;
  // The blocks that need masking (the key tail, the diagonal) come last, so the main loop can run in two halves:
  // the first with no mask branch at all. That branch splits the basic block ptxas schedules in. Measured (NVIDIA
  // H100, B=4, H=32, 8k-32k, same calls, BENCHMARKS.md "fourth session"): +6-8% kernel TOPS for FP8 P.V at d=64
  // non-causal with the MMA row sum, +0-5% for FP16 P.V at d=128 non-causal (ping-pong, 3 stages); a tie or -1-2%
  // for FP8 P.V at d=128, -5% for d=64 FADD row sums with ping-pong, -2% to -15% causal (the duplicated loop
  // spills 8-32 bytes at d=128 causal and doubles the code the diagonal tiles run through). So only where it wins.
#ifndef SAGEGEN_PROBE_SPLIT_LOOP  // ablation probe (scripts/probe_wgmma.py): the two halves everywhere
  // One block at a time (ninth session, same calls): +5-15% for FP8 P.V at d=64 non-causal with the MMA row sum
  // (three warpgroups, 4k-32k); a tie for FP16 P.V at d=128 (ptxas then spills 32 bytes) and -3% to 0 for FP8 at
  // d=128.
  // INT8 P.V non-causal (eleventh session, SPLIT_LOOP probe, same calls): +4-5% at d=64 (531-543 -> 552-565),
  // +3-7% at d=128 (891-925 -> 918-971, 8k-32k, twice; ptxas: 8 bytes of spill instead of 4).
  static constexpr bool kSplitMaskLoop =
      !Causal && ((D == 64 && MmaRowSum && !PvF16) || kPvI8 || (Overlap && PvF16 && D == 128));
#else
  static constexpr bool kSplitMaskLoop = true;
#endif
  // Each block's K scale from a pointer stepped by whole blocks, or its index recomputed from the lane: the same
  // load, but ptxas schedules and allocates the loops differently. Thirteenth session (NVIDIA H100, one call,
  // three alternations, kernel TOPS at 8k/16k/32k): stepped wins in the two-halves loops of FP8 P.V at d=64
  // (605/626/645 -> 655/676/688) and INT8 P.V (897/910/921 -> 934/934/948); recomputed wins by 1-3% for FP8 P.V
  // at d=128, causal or not, and FP16 P.V at d=128 (e.g. 793 -> 820 at 32k).
  static constexpr bool kKScaleStepped = kSplitMaskLoop && !PvF16;
  static constexpr int kQTile = QTile, kQSub = QSub, kKTile = KTile, kKSub = KSub;
  // The Q/K image (quant_layout.qk_image_offset): 8-row groups of 8 * D bytes, made of 64-byte (D = 64) or 128-byte
  // swizzled rows; D = 256 puts its two 128-channel halves in side-by-side 1024-byte atoms. A k-step (32 channels)
  // never leaves one atom, so its descriptor is the tile's plus this byte offset.
  static constexpr int kQkRowBytes = D == 64 ? 64 : 128;
  static constexpr int qk_step_bytes(int kk) { return (kk * 32) / kQkRowBytes * 1024 + (kk * 32) % kQkRowBytes; }
  static constexpr int kTileQ = kBlockM * D, kTileK = BlockN * D, kTileV = D * BlockN * kVBytes;  // bytes
  static constexpr int kOnesBytes = MmaRowSum ? (PvF16 ? BlockN * 128 : kOnesRows * BlockN) : 0;
  static constexpr int kStageV = kTileV + kOnesBytes;  // V (+ the ones) per stage
  static constexpr int kOCols = PvF16 ? kPvN : D;  // O's accumulator columns (fp16: + the row-sum columns)
  static constexpr int kSmemBytes = 1024 /* alignment slack */ + kTileQ + Stages * (kTileK + kStageV) +
                                    8 * (2 * Stages + 1) /* mbarriers */;
  // Registers per thread after setmaxnreg: the producer keeps the minimum, the consumers take the rest of the
  // 64K register file (multiples of 8).
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = ((65536 / 128 - kProducerRegs) / Consumers) / 8 * 8 > 240
                                           ? 240 : ((65536 / 128 - kProducerRegs) / Consumers) / 8 * 8;
  static constexpr int kEmptyArrivals = 4 * Consumers;  // one per consumer warp
  using Out = OutT;
  using MmaOps = Mma;
  static_assert(BlockN == 128, "the V image is blocked by 128 keys");
  static_assert(D == 64 || D == 128 || D == 256, "head dim");
  static_assert(kPvHalves == 1 || !Overlap, "P.V in halves: one block at a time");
  static_assert(QTile % 16 == 0, "a thread's two rows (g, g + 8) must share one Q scale group");
  static_assert(KTile == BlockN, "K scales are per key block (or per thread within it)");
  static_assert(!PingPong || (Consumers >= 2 && Overlap), "ping-pong rotates overlapping warpgroups");
  static_assert(kPvN <= 256, "the P.V MMA's N (d + 8 with the MMA row sum) must fit one wgmma");
  // INT8 P.V: one block at a time; its row sum comes from the packed P (integer wgmma has no N = d + 8)
  static_assert(!kPvI8 || (!Overlap && !MmaRowSum && D <= 128), "INT8 P.V: seq schedule, dp4a row sum, d <= 128");
};

struct Params {
  const int8_t* q8; const float* q_scale;    // Q image [B, Hq, nq_pad, D], scales [B, Hq, groups]
  const int8_t* k8; const float* k_scale;    // K image [B, Hkv, nk_pad, D] (smoothed)
  const uint8_t* v8; const float* v_scale;   // V image e4m3 [B, Hkv, nk_pad/128, D, 128], scales [B, Hkv, D];
                                             // or fp16 [B, Hkv, nk_pad/128, D/64, 128, 64], no scales
  void* o; long long o_sb, o_sh, o_sn;       // output [.., d] in the caller's layout
  float* lse;                                // optional [B, Hq, nq], natural log
  int Hq, Hkv, nq, nk, nq_pad, nk_pad, d;
  float sm_scale_log2;
  int causal_offset;
};

// Integer scores become floats without a conversion instruction: the s32 accumulator starts at the bit pattern
// of 1.5 * 2^23, so after the MMAs each register, read as a float, is exactly 1.5 * 2^23 + s (|s| <= 256 * 127^2
// < 2^22 for d <= 256); online_softmax folds the bias, the dequantization scale and the max subtraction into one
// FFMA per score. Measured (NVIDIA H200, d=128, N=8k, overlapped kernel): 825 TOPS against 720 with I2F, which
// issues on the exp unit's pipe. Cost: the folded constant -1.5 * 2^23 * scale is rounded to fp32, which moves
// every score of a thread's row by the same amount, at most 0.375 of one integer unit of the score (half an ulp
// of 1.5 * 2^23 * scale): ~1000x below the INT8 rounding of Q and K themselves (each int8 value is rounded by up
// to 0.5, a d=128 score by hundreds of units). It only shows where Q and K scales are huge (Student-t tails: LSE
// within ~0.03 of the emulation instead of ~0.001).
// The biased scores lie in [2^23, 2^24] and masked ones are -inf, so their bit patterns order like int32: the row
// max runs on the integer pipe's three-input max (online_softmax's kOrderedBits), two scores per VIMNMX3. Same
// call, H100, bit-identical output: +2% (d=64), +5% (d=64 causal), +6-9% (FP16 P.V d=128), within the noise for
// FP8 at d=128 (BENCHMARKS.md, ninth session).
constexpr uint32_t kScoreBiasBits = 0x4B400000u;  // 1.5 * 2^23 as float bits
constexpr float kScoreBias = 12582912.f;

struct Smem {
  uint8_t* q; uint8_t* k; uint8_t* v;
  uint64_t* full; uint64_t* empty; uint64_t* q_full;
};

template <class C>
__device__ __forceinline__ Smem carve_smem(uint8_t* raw) {
  // The swizzled tiles must start on 1024-byte boundaries (the hardware swizzles shared-memory address bits).
  uint8_t* base = raw + ((1024 - (sm90::smem_u32(raw) & 1023)) & 1023);
  Smem s;
  s.q = base;
  s.k = s.q + C::kTileQ;
  s.v = s.k + C::kStages * C::kTileK;
  s.full = reinterpret_cast<uint64_t*>(s.v + C::kStages * C::kStageV);
  s.empty = s.full + C::kStages;
  s.q_full = s.empty + C::kStages;
  return s;
}

// The producer thread: Q once, then every key block this CTA visits, kStages ahead of the slowest consumer.
template <class C>
__device__ __forceinline__ void produce(const Params& p, const Smem& sm, long long bh, long long bhk, int m0, int nb) {
  const uint8_t* gQ = reinterpret_cast<const uint8_t*>(p.q8) + (bh * p.nq_pad + m0) * C::kD;
  const uint8_t* gK = reinterpret_cast<const uint8_t*>(p.k8) + bhk * p.nk_pad * C::kD;
  const uint8_t* gV = p.v8 + bhk * p.nk_pad * C::kD * C::kVBytes;  // blocked by 128 keys, kTileV bytes each
  // The last CTA of a 192-row tiling may reach past nq_pad (a multiple of 128, so whole 64-row slices): copy only
  // the rows that exist; the warpgroups past the end compute rows nobody stores.
  const int q_bytes = min(C::kBlockM, p.nq_pad - m0) * C::kD;
  sm90::mbar_arrive_expect_tx(sm.q_full, q_bytes);
  sm90::bulk_load(sm.q, gQ, q_bytes, sm.q_full);
  for (int j = 0; j < nb; ++j) {
    const int s = j % C::kStages;
    if (j >= C::kStages) sm90::mbar_wait(&sm.empty[s], (j / C::kStages - 1) & 1);
#ifdef SAGEGEN_PROBE_NO_LOAD  // ablation probe (scripts/probe_wgmma.py): later blocks reuse the first tiles
    if (j >= C::kStages) {
      sm90::mbar_arrive(&sm.full[s]);
      continue;
    }
#endif
    sm90::mbar_arrive_expect_tx(&sm.full[s], C::kTileK + C::kTileV);
    sm90::bulk_load(sm.k + s * C::kTileK, gK + (long long)j * C::kTileK, C::kTileK, &sm.full[s]);
    sm90::bulk_load(sm.v + s * C::kStageV, gV + (long long)j * C::kTileV, C::kTileV, &sm.full[s]);
  }
}

// Four e4m3 bytes, the lowest from a.
__device__ __forceinline__ uint32_t pack_e4m3x4(float a, float b, float c, float d) {
#ifdef SAGEGEN_PROBE_U8_PACK  // the P packing of an INT8 P.V (perf-notes, tenth session): round to an integer by
  // adding kScoreBias = 1.5 * 2^23 (the low byte of the float's pattern), then three PRMT; wrong values for e4m3 V
  const uint32_t ua = __float_as_uint(a + kScoreBias), ub = __float_as_uint(b + kScoreBias);
  const uint32_t uc = __float_as_uint(c + kScoreBias), ud = __float_as_uint(d + kScoreBias);
  return __byte_perm(__byte_perm(ua, ub, 0x0040), __byte_perm(uc, ud, 0x0040), 0x5410);
#endif
#ifdef SAGEGEN_PROBE_U8_PACK_F16  // the same through f16x2, as the INT8 P.V kernel packs P (softmax_u8.cuh)
  return attn::pack_u8x4(a, b, c, d);
#endif
#ifdef SAGEGEN_PROBE_CHORD_EXP  // the softmax left each code in bits 8..15 (attn_mma/softmax.cuh): three PRMT
  const uint32_t lo = __byte_perm(__float_as_uint(a), __float_as_uint(b), 0x0051);
  const uint32_t hi = __byte_perm(__float_as_uint(c), __float_as_uint(d), 0x0051);
  return __byte_perm(lo, hi, 0x5410);
#endif
  return uint32_t(pack_e4m3x2(a, b)) | (uint32_t(pack_e4m3x2(c, d)) << 16);
}

// One consumer warpgroup: 64 query rows; warp w holds rows 16w + g and 16w + g + 8 (g = lane / 4), columns
// 8c + 2t and 8c + 2t + 1 of every 8-column chunk c (t = lane % 4): one m-tile of attn_mma's softmax fragment.
//
// kOverlap: Q.K^T of block j + 1 and P.V of block j are issued as one batch, and the softmax of block j + 1 may
// start once Q.K^T retired (wait<1>; wgmma groups retire in order). One score tile suffices: the scores of block j
// were packed into P before Q.K^T of block j + 1 overwrites them. In the SASS, ptxas places the P.V wait at the
// top of the softmax's basic block (docs/perf-notes.md, fourth session), so the softmax runs under the other
// warpgroup's MMAs, not under its own P.V; forcing it under its own P.V measured slower (d=64) or spilled (d=128).
template <class C>
__device__ __forceinline__ void consume(const Params& p, const Smem& sm, int cw, long long bh, long long bhk, int b,
                                        int h, int m0, int nb) {
  using Mma = typename C::MmaOps;
  constexpr int kNChunks = C::kBlockN / 8, kDChunks = C::kD / 8, kPSteps = C::kBlockN / C::kPvKeyStep;
  constexpr int kPvChunks = C::kPvN / 8;
  using MaskCheck = cuda::std::true_type;   // softmax tests at run time whether the block needs masking
  using MaskNever = cuda::std::false_type;  // the caller knows it does not (kSplitMaskLoop's first half)
  const int tid = threadIdx.x % 128, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
  const int wg_m0 = m0 + cw * 64, row0 = wg_m0 + warp * 16 + g;
  const int q_groups = p.nq_pad / C::kQTile * C::kQSub, k_groups = p.nk_pad / C::kKTile * C::kKSub;
  const float q_scale =  // rows past nq_pad (see produce) have no scale: 0 keeps their garbage finite
      row0 < p.nq_pad ? p.q_scale[bh * q_groups + attn::scale_group(row0, C::kQTile, C::kQSub)] * p.sm_scale_log2
                      : 0.f;
  // Shared-memory descriptors, built once: a tile of stage s and a k-step are byte offsets from these, and the
  // descriptor's start-address field is the address / 16 in its low bits (shared memory < 256 KB never carries
  // out of it), so each MMA's descriptor is one integer add instead of a rebuild per k-step.
  const uint64_t q_desc = wg::kmajor_desc<C::kQkRowBytes, 8 * C::kD>(sm90::smem_u32(sm.q + cw * 64 * C::kD));
  const uint64_t k_desc0 = wg::kmajor_desc<C::kQkRowBytes, 8 * C::kD>(sm90::smem_u32(sm.k));
  const uint64_t v_desc0 = C::kPvF16 ? wg::mnmajor_desc<C::kBlockN * 128>(sm90::smem_u32(sm.v))
                                     : wg::kmajor_desc<128>(sm90::smem_u32(sm.v));
  auto desc_plus = [](uint64_t desc, int bytes) { return desc + uint64_t(bytes >> 4); };

  float o[C::kOCols / 2];
#pragma unroll
  for (int i = 0; i < C::kOCols / 2; ++i) o[i] = 0.f;
  attn::RowState rows[1];          // one 16-row m-tile of attn_mma's softmax fragment per warp
  attn::RowState& st = rows[0];
  float sc[kNChunks][4];           // scores of one block: biased int32 from the MMA, then probabilities
  auto& s_acc = reinterpret_cast<uint32_t(&)[kNChunks * 4]>(sc);
  uint32_t pa[kPSteps][4];         // P (e4m3, fp16 or u8) as the A operand of the P.V k-steps
  float ob[C::kPvF16 ? 1 : kPvChunks * 4];  // e4m3: one block's P.V (the two-level accumulation's inner level),
                                            // or one half of its channels (kPvHalves); int8: as int32
  auto& ob_i = reinterpret_cast<uint32_t(&)[C::kPvF16 ? 1 : kPvChunks * 4]>(ob);
  // INT8 P.V: the per-row state of softmax_u8.cuh, and p_sum[r]: this thread's sum of the block's u8 P (dp4a over
  // the packed bytes: exact, no FADD per score).
  attn::BlockScaledRows u8rows;
  uint32_t p_sum[2] = {0u, 0u};
  float alpha[1][2], alpha_next[1][2];

  auto stage_of = [](int j) { return j % C::kStages; };
  // Block j's K scale (this thread's group), loaded when its Q.K^T is issued: the global load's latency (an L2
  // hit, hundreds of cycles) then hides under the MMA instead of stalling the softmax that needs it.
  float k_scale = 0.f;
  // Its address (Config::kKScaleStepped): a pointer stepped by whole blocks (K's scale groups tile the key
  // blocks), or the group index recomputed from the lane.
  static_assert(C::kBlockN % C::kKTile == 0, "K scale groups must tile the key blocks");
  constexpr int kKScaleStep = C::kBlockN / C::kKTile * C::kKSub;
  const float* const k_scale0 = p.k_scale + bhk * k_groups + attn::scale_group(2 * tq, C::kKTile, C::kKSub);
#ifdef SAGEGEN_PROBE_TRACE  // ablation probe: clock64 at 8 points of each overlapped iteration, lane 0 of each
  // warpgroup's first warp, head 0 of batch 0, into the LSE buffer (u64 [CTA][warpgroup][block][8]; no LSE then)
  unsigned long long* trace = (b == 0 && h == 0 && tid == 0 && p.lse != nullptr)
      ? reinterpret_cast<unsigned long long*>(p.lse) + ((long long)(m0 / C::kBlockM) * C::kConsumers + cw) * nb * 8
      : nullptr;
#define SAGEGEN_TRACE(j, e) \
  do { if (trace != nullptr) trace[(j) * 8 + (e)] = clock64(); } while (0)
#else
#define SAGEGEN_TRACE(j, e) do {} while (0)
#endif
  auto issue_qk = [&](int j) {  // S = bias + Q.K^T (s32) for block j, once its stage has landed
    if constexpr (C::kKScaleStepped)
      k_scale = k_scale0[j * kKScaleStep];
    else
      k_scale = p.k_scale[bhk * k_groups + attn::scale_group(j * C::kBlockN + 2 * tq, C::kKTile, C::kKSub)];
    const int s = stage_of(j);
    sm90::mbar_wait(&sm.full[s], (j / C::kStages) & 1);
    if (j >= 1) SAGEGEN_TRACE(j - 1, 2);
    const uint64_t k_desc = desc_plus(k_desc0, s * C::kTileK);
#pragma unroll
    for (int i = 0; i < kNChunks * 4; ++i) {
#if defined(SAGEGEN_PROBE_NO_BIAS) || defined(SAGEGEN_PROBE_I2F_SCORES)  // probes: no seeding MOV (an empty asm
                                                                        // defines the register)
      asm volatile("" : "=r"(s_acc[i]));
#else
      s_acc[i] = kScoreBiasBits;  // floats without I2F (kScoreBias)
#endif
    }
    wg::fence_operands(s_acc);
    Mma::begin();
#ifndef SAGEGEN_PROBE_NO_MMA  // ablation probe: no MMA issued; the pipeline and the softmax run on constants
#pragma unroll
    for (int kk = 0; kk < C::kD / 32; ++kk)
      Mma::template qk<C::kBlockN>(desc_plus(q_desc, C::qk_step_bytes(kk)), desc_plus(k_desc, C::qk_step_bytes(kk)),
#if defined(SAGEGEN_PROBE_NO_BIAS) || defined(SAGEGEN_PROBE_I2F_SCORES)  // the first k-step zeroes the accumulator
                                   s_acc, kk > 0);
#else
                                   s_acc, true);
#endif
#endif
    Mma::commit();
  };
  // Block j's scores (landed) -> p * 2^kLog2PGain in sc, row rescale in a; whether any row of the warp moved.
  auto softmax = [&](int j, float (&a)[1][2], auto check_mask) {  // MaskCheck or MaskNever
    wg::fence_operands(s_acc);
#ifdef SAGEGEN_PROBE_NO_SOFTMAX  // ablation probe: the scores go into P as they are
    a[0][0] = a[0][1] = 1.f;
    return false;
#endif
    const int col0 = j * C::kBlockN + 2 * tq;
    if (decltype(check_mask)::value &&
        attn::block_needs_mask<C::kCausal, C::kBlockN>(j, wg_m0, p.nk, p.causal_offset))
      attn::apply_mask<C::kCausal, kNChunks>(sc, row0, col0, p.nk, p.causal_offset);
    // A NaN scale (NaN inputs) must survive the floor: the comparison is false for NaN.
    const float qk = q_scale * k_scale, scale = qk < attn::kMinScale ? attn::kMinScale : qk;
    if constexpr (C::kPvI8) {  // a: each row's gamma, applied in finish_pv's merge (no rescale of O here)
      attn::block_scaled_softmax<kNChunks>(sc, scale, u8rows, a[0], kScoreBias);
      return false;
    }
    const float scales[1][2] = {{scale, scale}};
    // e4m3: slack 0, the reference max moves on every increase, so 448 p stays within e4m3's range.
    return attn::online_softmax<1, kNChunks, C::kSlack, !C::kMmaRowSum, /*kOrderedBits=*/true>(
#ifdef SAGEGEN_PROBE_I2F_SCORES  // ablation probe: raw int32 scores, converted by I2FP in the softmax
        reinterpret_cast<float(&)[1][kNChunks][4]>(sc), scales, rows, a, 0.f, C::kLog2PGain);
#else
        reinterpret_cast<float(&)[1][kNChunks][4]>(sc), scales, rows, a, kScoreBias, C::kLog2PGain);
#endif
  };
  auto pack_p = [&]() {
#pragma unroll
    for (int kk = 0; kk < kPSteps; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        if constexpr (C::kPvF16) {
          // A fragment of m64nNk16 = accumulator layout: register r is row half r & 1 of chunk 2kk + (r >> 1).
          const int c = 2 * kk + (r >> 1), e = 2 * (r & 1);
          pa[kk][r] = pack_half2(sc[c][e], sc[c][e + 1]);
        } else {
          // A fragment of m64nNk32: register r holds row half r & 1, chunks 4kk + 2(r >> 1) + {0, 1}.
          const int c = 4 * kk + 2 * (r >> 1), e = 2 * (r & 1);
          if constexpr (C::kPvI8) {
            pa[kk][r] = attn::pack_u8x4(sc[c][e], sc[c][e + 1], sc[c + 1][e], sc[c + 1][e + 1]);
            p_sum[r & 1] = __dp4a(pa[kk][r], 0x01010101u, kk == 0 && r < 2 ? 0u : p_sum[r & 1]);
          } else {
            pa[kk][r] = pack_e4m3x4(sc[c][e], sc[c][e + 1], sc[c + 1][e], sc[c + 1][e + 1]);
          }
        }
      }
  };
  auto issue_pv = [&](int j, int half = 0) {  // half: the channel half (kPvHalves), 128 rows of 128 bytes of V^T
    const uint64_t v_desc = desc_plus(v_desc0, stage_of(j) * C::kStageV + half * C::kPvCols * C::kBlockN);
    if constexpr (C::kPvF16) {  // O += P.V; a k-step is 16 keys = two 8-key row groups of the image (2 KB)
      wg::fence_operands(o);
      Mma::begin();
#ifndef SAGEGEN_PROBE_NO_MMA
#pragma unroll
      for (int kk = 0; kk < kPSteps; ++kk)
        Mma::template pv_f16<C::kPvN>(pa[kk], desc_plus(v_desc, kk * 16 * 128), o);
#endif
      Mma::commit();
    } else if constexpr (C::kPvI8) {  // a fresh int32 tile (merge_pv)
      wg::fence_operands(ob_i);
      Mma::begin();
#ifndef SAGEGEN_PROBE_NO_MMA
#pragma unroll
      for (int kk = 0; kk < kPSteps; ++kk)
        Mma::template pv_u8<C::kPvN>(pa[kk], desc_plus(v_desc, kk * 32), ob_i, kk > 0);
#endif
      Mma::commit();
    } else {
      wg::fence_operands(ob);
      Mma::begin();
#ifndef SAGEGEN_PROBE_NO_MMA
#pragma unroll
      for (int kk = 0; kk < kPSteps; ++kk) {
        if (half == C::kPvHalves - 1)  // the last half reads the ones rows after it too (kMmaRowSum)
          Mma::template pv<C::kPvN>(pa[kk], desc_plus(v_desc, kk * 32), ob, kk > 0);
        else  // an earlier half: its own 128 channels only
          Mma::template pv<C::kPvCols>(pa[kk], desc_plus(v_desc, kk * 32),
                                       reinterpret_cast<float(&)[C::kPvCols / 2]>(ob), kk > 0);
      }
#endif
      Mma::commit();
    }
  };
  // e4m3: O's channel half `half` = O * alpha_j + the block's P.V for it (in ob, retired).
  // int8: O = O * gamma + tile. The tile's sums x lie in [0, 128 * 255 * 255] < 2^23, so read as floats they are
  // the denormals x * 2^-149, exactly: no conversion instruction (FFMA handles denormal operands in hardware;
  // fma_keep_denormals keeps them whatever the compile flags).
  auto merge_pv = [&](const float (&a)[1][2], int half) {
#ifdef SAGEGEN_PROBE_NO_MERGE  // ablation probe: the two-level merge's FFMA per O element freed (O never updated)
    return;
#endif
#pragma unroll
    for (int i = 0; i < C::kPvCols / 2; ++i) {
      float& out = o[half * (C::kPvCols / 2) + i];
      if constexpr (C::kPvI8) out = attn::fma_keep_denormals(out, a[0][(i >> 1) & 1], ob[i]);
      else out = fmaf(out, a[0][(i >> 1) & 1], ob[i]);
    }
  };
  // After block j's P.V retired: free its stage; e4m3: merge (the last half, kPvHalves).
  auto finish_pv = [&](int j, const float (&a)[1][2]) {
    if constexpr (C::kPvF16) wg::fence_operands(o);
    else wg::fence_operands(ob);
    __syncwarp();
    if (lane == 0) sm90::mbar_arrive(&sm.empty[stage_of(j)]);  // this warp is done with the stage
    if constexpr (!C::kPvF16) merge_pv(a, C::kPvHalves - 1);
    if constexpr (C::kPvI8) {  // the row sums under the same gammas
#pragma unroll
      for (int r = 0; r < 2; ++r) u8rows.sum[r] = fmaf(u8rows.sum[r], a[0][r], float(p_sum[r]));
    }
    if constexpr (C::kMmaRowSum && !C::kPvF16) {  // the tile's column kPvCols (element 0 of each row half) = the
      constexpr int kSum = 4 * (C::kPvCols / 8);      // row's sum of P (fp16: O's own column D, read at the end)
      st.sum[0] = fmaf(st.sum[0], a[0][0], ob[kSum]);
      st.sum[1] = fmaf(st.sum[1], a[0][1], ob[kSum + 2]);
    }
  };
  // fp16 P.V accumulates into O itself: rescale O before the next block's P.V, only when a row's max moved.
  auto rescale_o = [&](bool moved, const float (&a)[1][2]) {
    if constexpr (C::kPvF16) {
      if (moved) {
#pragma unroll
        for (int i = 0; i < C::kOCols / 2; ++i) o[i] *= a[0][(i >> 1) & 1];  // with the row-sum columns
      }
    }
  };

  // Ping-pong: the consumer warpgroups take turns issuing their MMA batches in a ring (named barrier 1 + cw: "my
  // turn"), so one warpgroup's softmax runs while another's MMAs own the tensor cores. The last warpgroup hands
  // the first turn to warpgroup 0; every batch passes the turn on; warpgroup 0 absorbs the last hand-back.
  auto my_turn = [&]() {
    if constexpr (C::kPingPong) sm90::named_sync(1 + cw, 256);
  };
  auto pass_turn = [&]() {
    if constexpr (C::kPingPong) sm90::named_arrive(1 + (cw + 1) % C::kConsumers, 256);
  };
  if constexpr (C::kPingPong) {
    if (cw == C::kConsumers - 1) sm90::named_arrive(1, 256);
  }

  sm90::mbar_wait(sm.q_full, 0);
  if constexpr (C::kOverlap) {
    // Straight-line steady state (no conditional wgmma issue inside the loop): ptxas must see that wait<1>
    // retires Q.K^T of block j + 1, or it serializes every wgmma.
    if (nb > 0) {
      my_turn();
      issue_qk(0);
      pass_turn();
      Mma::template wait<0>();
      softmax(0, alpha, MaskCheck{});
      pack_p();
    }
    // One iteration: block j's P.V and block j + 1's softmax (kSplitMaskLoop: see Config).
    auto step = [&](int j, auto check_mask) {
      SAGEGEN_TRACE(j, 0);
      my_turn();
      SAGEGEN_TRACE(j, 1);
      issue_qk(j + 1);  // (event 2 inside: the stage landed)
      issue_pv(j);
      pass_turn();
      SAGEGEN_TRACE(j, 3);
      Mma::template wait<1>();  // Q.K^T of block j + 1 retired; P.V of block j may still run
      SAGEGEN_TRACE(j, 4);
      const bool moved = softmax(j + 1, alpha_next, check_mask);
      SAGEGEN_TRACE(j, 5);
      Mma::template wait<0>();
      SAGEGEN_TRACE(j, 6);
      finish_pv(j, alpha);
      rescale_o(moved, alpha_next);  // fp16: O (block j in) * alpha_{j+1}, before block j + 1's P.V
      pack_p();  // only now: P.V of block j read the previous P until it retired
      SAGEGEN_TRACE(j, 7);
      alpha[0][0] = alpha_next[0][0];
      alpha[0][1] = alpha_next[0][1];
    };
    if constexpr (C::kSplitMaskLoop) {
      const int plain_end = min(nb, attn::first_masked_block<C::kCausal, C::kBlockN>(wg_m0, p.nk, p.causal_offset));
      int j = 0;
      for (; j + 1 < plain_end; ++j) step(j, MaskNever{});
      for (; j + 1 < nb; ++j) step(j, MaskCheck{});
    } else {
      for (int j = 0; j + 1 < nb; ++j) step(j, MaskCheck{});
    }
    if (nb > 0) {
      my_turn();
      issue_pv(nb - 1);
      pass_turn();
      Mma::template wait<0>();
      finish_pv(nb - 1, alpha);
    }
    if constexpr (C::kPingPong) {
      if (cw == 0) sm90::named_sync(1, 256);  // the last warpgroup's last hand-back
    }
  } else {
    auto step = [&](int j, auto check_mask) {
      issue_qk(j);
      Mma::template wait<0>();
      rescale_o(softmax(j, alpha, check_mask), alpha);
      pack_p();
      if constexpr (C::kPvHalves == 2) {  // the first channel half through the P.V tile, then the second
        issue_pv(j, 0);
        Mma::template wait<0>();
        wg::fence_operands(ob);
        merge_pv(alpha, 0);
        issue_pv(j, 1);
      } else {
        issue_pv(j);
      }
      Mma::template wait<0>();
      finish_pv(j, alpha);
    };
    int j = 0;
    if constexpr (C::kSplitMaskLoop) {
      const int plain_end = min(nb, attn::first_masked_block<C::kCausal, C::kBlockN>(wg_m0, p.nk, p.causal_offset));
      for (; j < plain_end; ++j) step(j, MaskNever{});
    }
    for (; j < nb; ++j) step(j, MaskCheck{});
  }

  // Epilogue: O / l (l carries the same gain as P), times V's per-channel scales (e4m3); rows < nq, columns < d.
  const float kLn2 = 0.6931471805599453f;
  // V's per-channel scales (D of them, in bounds for every chunk), all loaded before the first store: the
  // compiler may not move a load above a store to O (they could alias), and one load next to each use cost two
  // dependent L2 round trips per chunk (ncu: ~6% of the stall samples at N = 4k).
  const float* v_scale = p.v_scale + bhk * C::kD;
  if constexpr (C::kMmaRowSum && C::kPvF16) {  // the row sums accumulated in O's column D, rescaled with O
    st.sum[0] = o[4 * kDChunks];
    st.sum[1] = o[4 * kDChunks + 2];
  }
  if constexpr (C::kPvI8) {  // l and the LSE's reference: the last block's m_q
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      st.sum[r] = u8rows.sum[r];
      st.max[r] = u8rows.ref[r];
    }
  }
  float2 vs[kDChunks];
#pragma unroll
  for (int c = 0; c < kDChunks; ++c)
    vs[c] = C::kPvF16 ? make_float2(1.f, 1.f) : *reinterpret_cast<const float2*>(v_scale + c * 8 + 2 * tq);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    const float l = C::kMmaRowSum ? st.sum[r] : attn::quad_sum(st.sum[r]);  // the MMA already summed the quad
    const float inv = l > 0.f ? 1.f / l : 0.f;  // a row that sees no key gets 0 (and lse = -inf)
    // int8: O in units of 2^-149 (two exact steps of 2^100 and 2^49: O < 2^-56), less V's offset of 128, which
    // added 128 * (the row's sum of P) to every channel
    auto value = [&](int i) { return C::kPvI8 ? fmaf(o[i] * 0x1p100f, 0x1p49f, -128.f * l) : o[i]; };
    if (row >= p.nq) continue;
    typename C::Out* orow = static_cast<typename C::Out*>(p.o) + b * p.o_sb + h * p.o_sh + row * p.o_sn;
#pragma unroll
    for (int c = 0; c < kDChunks; ++c) {
      const int col = c * 8 + 2 * tq;
      if (col < p.d)
        *reinterpret_cast<uint32_t*>(orow + col) = attn::pack_out<typename C::Out>(
            value(4 * c + 2 * r) * inv * vs[c].x, value(4 * c + 2 * r + 1) * inv * vs[c].y);
    }
#ifndef SAGEGEN_PROBE_TRACE  // (the trace owns the LSE buffer)
    if (p.lse != nullptr && tq == 0)
#else
    if (false)
#endif
      p.lse[bh * p.nq + row] = l > 0.f ? (st.max[r] + __log2f(l) - C::kLog2PGain) * kLn2 : attn::kNegInf;
  }
}

template <class C>
__device__ __forceinline__ void attn_fwd(const Params& p) {
  extern __shared__ uint8_t smem_raw[];
  const Smem sm = carve_smem<C>(smem_raw);
  // Causal: the last query tiles see the most keys; launch them first so they do not trail at the end.
  const int mb = C::kCausal ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, hk = h / (p.Hq / p.Hkv);
  const int m0 = mb * C::kBlockM;
  const long long bh = (long long)b * p.Hq + h, bhk = (long long)b * p.Hkv + hk;
  const int nb = attn::key_blocks<C::kCausal, C::kBlockM, C::kBlockN>(m0, p.nk, p.causal_offset);

  if (threadIdx.x == 0) {
#pragma unroll
    for (int s = 0; s < C::kStages; ++s) {
      sm90::mbar_init(&sm.full[s], 1);
      sm90::mbar_init(&sm.empty[s], C::kEmptyArrivals);
    }
    sm90::mbar_init(sm.q_full, 1);
    sm90::mbar_init_fence();
  }
  if constexpr (C::kMmaRowSum) {  // the ones after every stage's V (bulk copies never write them)
    constexpr uint32_t kOnes = C::kPvF16 ? 0x3C003C00u : 0x38383838u;  // fp16 1.0 x 2, e4m3 1.0 x 4
    for (int i = threadIdx.x; i < C::kStages * C::kOnesBytes / 4; i += C::kThreads) {
      const int stage = i / (C::kOnesBytes / 4), word = i % (C::kOnesBytes / 4);
      reinterpret_cast<uint32_t*>(sm.v + stage * C::kStageV + C::kTileV)[word] = kOnes;
    }
    sm90::fence_async_shared();  // generic-proxy writes, read by wgmma through the async proxy
  }
  __syncthreads();  // the last CTA-wide barrier: the producer warpgroup leaves early

  // Warp-uniform by construction; through a shuffle from lane 0 the compiler knows it, so the per-warpgroup Q
  // descriptor lives in uniform registers and each k-step's descriptor is one uniform add.
  const int wg = __shfl_sync(0xffffffffu, threadIdx.x / 128, 0);
  if (wg == 0) {
    sm90::regs_release<C::kProducerRegs>();
    if (threadIdx.x == 0) produce<C>(p, sm, bh, bhk, m0, nb);
  } else {
    sm90::regs_claim<C::kConsumerRegs>();
    consume<C>(p, sm, wg - 1, bh, bhk, b, h, m0, nb);
  }
}

}  // namespace sagegen::attn_wg
