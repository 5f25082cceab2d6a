"""The sm90a warpgroup family: INT8 Q.K^T and FP8 e4m3 P.V ("fast", SageAttention2 on Hopper), FP16 P.V
("accurate", SageAttention1's formats at wgmma speed) or INT8 P.V ("balanced": u8 P scaled per block row, s8 V per
channel, exact int32 sums) on wgmma, fed by bulk copies.

A CTA is one producer warpgroup plus ``m / 64`` consumer warpgroups (64 query rows each); K and V^T tiles of ``n``
keys stream through ``s`` shared-memory stages. Operands come from the quantization pass in the swizzled
shared-memory image (sagegen/quant_layout.py: Q/K image, V "e4m3w", "i8w" or "f16w"), so every tile is one bulk
copy.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..arch import TMA, WGMMA
from ..errors import InvalidVariant
from ..quant_layout import GRANULARITIES, N_ALIGN, QK_IMAGE_DIMS, k_groups, q_groups
from .spec import KernelSpec, build_valid, flag, prefix, word

OUT_TYPES = {"f16": "__half", "bf16": "__nv_bfloat16"}
# d = 256 fits the register budget one block at a time only (O alone is 128 registers per thread; see reg_estimate):
# FP16 P.V with two stages of 128 keys (96 KB each), e4m3 P.V with its two-level tile in two channel halves.
HEAD_DIMS = QK_IMAGE_DIMS
WARPGROUP_ROWS = 64  # rows of one m64nNk32 wgmma: what one consumer warpgroup owns
# (m, n, s): CTA rows, keys per step, stages. n is the V image's key block (128); m = 128 is two consumer
# warpgroups, m = 192 three (only where the register estimate fits 160 per thread: d=64 with FP16 P.V, or one block
# at a time, "seq").
TILES = ((128, 128, 2), (128, 128, 3), (128, 128, 4), (192, 128, 2), (192, 128, 3), (192, 128, 4))
GRANULARITY_PAIRS = (("block", "block"), ("warp", "block"), ("thread", "thread"))
# (qg, kg) -> the granularity of the SageAttention2 emulation that has the same scale groups (emulation())
EMULATION_GRANULARITY = dict(zip(GRANULARITY_PAIRS, ("block", "warp", "thread")))
WARP_ROWS = 16  # rows of one warp's slice of an m64 wgmma
# fma: FADDs over the fp32 p; mma: 8 columns of ones after V in the P.V MMA; dp4a: INT8 P.V sums its packed u8 P
# with one integer dot product per four values (integer wgmma has no N = d + 8 for the ones columns).
ROW_SUMS = ("fma", "mma", "dp4a")
# P.V operand format -> (V element bytes, the quantization pass's V mode). e4m3: P = e4m3(448 p), V per-channel e4m3
# transposed, two-level accumulation. f16: P and V fp16 (V not scaled), accumulated straight into O in fp32. i8:
# P = u8(255 p / p_b) per block row, V INT8 per channel in e4m3w's byte layout, each block summed exactly in int32.
PV_FORMATS = {"e4m3": (1, "e4m3w"), "f16": (2, "f16w"), "i8": (1, "i8w")}
# the kernel's PvFormat enumerator (templates/attn_wgmma/kernel.cuh) per pv
PV_ENUMS = {"e4m3": "kPvE4m3", "f16": "kPvFp16", "i8": "kPvInt8"}
# (overlap, pingpong, rowsum) schedules enumerated. One block at a time ("seq") leaves the tensor cores idle during a
# warpgroup's softmax unless other warpgroups fill them: with three consumer warpgroups (m = 192) it is the fastest
# FP8 schedule at d=128 from 16k keys, with the MMA row sum (BENCHMARKS.md, fifth session).
SCHEDULES = ((True, True, "fma"), (True, False, "fma"), (False, False, "fma"),
             (True, True, "mma"), (True, False, "mma"), (False, False, "mma"), (False, False, "dp4a"))


@dataclass(frozen=True)
class AttnWgmmaSpec(KernelSpec):
    qk: str = word("qk")  # Q.K^T operands: i8
    pv: str = word("pv")  # P.V operands: e4m3 (P quantized per row block, V per channel), f16, or i8 (u8 P per
    #                       block row, s8 V per channel)
    o: str = word("o")  # output dtype
    d: int = prefix("d")  # head dim compiled (smaller d are zero-padded by the quantization pass)
    m: int = prefix("m")  # query rows per CTA (64 per consumer warpgroup)
    n: int = prefix("n")  # keys per main-loop step
    s: int = prefix("s")  # shared-memory stages of K and V^T
    overlap: bool = flag("ovl", "seq")  # Q.K^T of block j+1 issued with P.V of block j (ovl), or one at a time
    pingpong: bool = flag("pp", "free")  # consumer warpgroups take turns issuing MMAs (pp), or issue freely
    rowsum: str = word("rs")  # softmax denominator: FADDs over the fp32 p (fma), or the P.V MMA with 8 columns of
    #                           ones after V (mma; N = d + 8), or i8's integer dot products over packed P (dp4a)
    qg: str = word("qg")  # Q scale granularity
    kg: str = word("kg")  # K scale granularity
    causal: bool = flag("causal", "full")

    family = "attn_wgmma"
    template = "attn_wgmma/attn_wgmma.cu.j2"
    requires = (WGMMA, TMA)

    @property
    def consumers(self) -> int:
        return self.m // WARPGROUP_ROWS

    @property
    def threads(self) -> int:
        return 128 * (self.consumers + 1)

    @property
    def ones_rows(self) -> int:
        return 8 if self.rowsum == "mma" else 0

    @property
    def pv_halves(self) -> int:
        """e4m3 at d=256 runs each block's P.V in two 128-channel halves through one tile (kernel.cuh kPvHalves)."""
        return 2 if self.pv == "e4m3" and self.d == 256 else 1

    @property
    def v_mode(self) -> str:
        """What the quantization pass writes for V (sagegen.quant_layout)."""
        return PV_FORMATS[self.pv][1]

    @property
    def ones_bytes(self) -> int:
        """Shared memory per stage for the MMA row sum's ones (kernel.cuh kOnesBytes): e4m3, 8 rows of n bytes under
        the K-major V^T; fp16, a whole 64-channel slab of the MN-major V image (n rows of 128 bytes)."""
        if self.rowsum != "mma":
            return 0
        return self.n * 128 if self.pv == "f16" else self.ones_rows * self.n

    def smem_bytes(self) -> int:
        # Q, then per stage K, V (and, rowsum=mma, the ones after V)
        v_bytes = PV_FORMATS[self.pv][0]
        tiles = self.m * self.d + self.s * (self.n * self.d + self.d * self.n * v_bytes + self.ones_bytes)
        return 1024 + tiles + 8 * (2 * self.s + 1)  # alignment slack, mbarriers

    def reg_estimate(self) -> int:
        """Consumer registers: O, the block's P.V tile (e4m3's two-level accumulation only), S, packed P, plus
        addresses and temporaries: ~24 when the overlap keeps all four live at once, ~12 one block at a time (S and
        the P.V tile are never live together). ptxas (sm_90a, 160 registers): e4m3 d=128 m=192 one block at a time
        fits with FADD row sums (0 spills) and, one register short, with the MMA row sum (one 4-byte value reloaded
        per key block); every overlapped m=192 schedule with e4m3's two levels spills 32-92 bytes at d=64."""
        f16 = self.pv == "f16"
        o, s = (self.d + (self.ones_rows if f16 else 0)) // 2, self.n // 2  # fp16: the row sums live in O
        # (i8: its int32 tile is e4m3's fp32 one, with no ones columns: dp4a row sums)
        ob, p = (0, self.n // 4) if f16 else ((self.d // self.pv_halves + self.ones_rows) // 2, self.n // 8)
        return o + ob + s + p + 24 if self.overlap else o + max(s, ob + p) + 12

    def check(self):
        if self.qk != "i8":
            raise InvalidVariant(f"qk must be i8, got {self.qk!r}")
        if self.pv not in PV_FORMATS:
            raise InvalidVariant(f"pv must be one of {sorted(PV_FORMATS)}, got {self.pv!r}")
        if self.o not in OUT_TYPES:
            raise InvalidVariant(f"o must be one of {sorted(OUT_TYPES)}, got {self.o!r}")
        if self.d not in HEAD_DIMS:
            raise InvalidVariant(f"d must be one of {HEAD_DIMS}, got {self.d}")
        if self.m not in (2 * WARPGROUP_ROWS, 3 * WARPGROUP_ROWS):
            raise InvalidVariant(f"m must be 128 or 192 (two or three consumer warpgroups), got {self.m}")
        if self.qg == "block" and N_ALIGN % self.m:
            raise InvalidVariant(f"per-block Q scales need m dividing {N_ALIGN} (the padded length), got m={self.m}")
        if self.n != N_ALIGN:
            raise InvalidVariant(f"n must be {N_ALIGN} (the V image's key block), got {self.n}")
        if self.rowsum not in ROW_SUMS:
            raise InvalidVariant(f"rowsum must be one of {ROW_SUMS}, got {self.rowsum!r}")
        pv_n = self.d // self.pv_halves + self.ones_rows  # the last channel half's P.V MMA carries the ones
        if self.rowsum == "mma" and pv_n > 256:
            raise InvalidVariant(f"rowsum=mma at d={self.d} needs a P.V MMA with N = {pv_n} > 256")
        if (self.pv == "i8") != (self.rowsum == "dp4a"):
            raise InvalidVariant(f"rowsum=dp4a is INT8 P.V's row sum, and the one it has (pv={self.pv}, "
                                 f"rowsum={self.rowsum})")
        if self.pv == "i8" and (self.overlap or self.d > 128):
            raise InvalidVariant("pv=i8 runs one block at a time (seq) at d <= 128")
        if self.pingpong and not self.overlap:
            raise InvalidVariant("pingpong rotates overlapping consumer warpgroups: needs overlap")
        if self.s not in (2, 3, 4):
            raise InvalidVariant(f"s must be 2, 3 or 4, got {self.s}")
        if self.qg not in GRANULARITIES or self.kg not in ("block", "thread"):
            raise InvalidVariant(f"qg in {GRANULARITIES}, kg in (block, thread); got {self.qg}, {self.kg}")
        if self.smem_bytes() > self.target.smem_per_block:
            raise InvalidVariant(f"needs {self.smem_bytes()} B of shared memory; {self.arch} has "
                                 f"{self.target.smem_per_block}")
        consumer_regs = min(240, (65536 // 128 - 24) // self.consumers // 8 * 8)
        if self.reg_estimate() > consumer_regs:
            raise InvalidVariant(f"needs ~{self.reg_estimate()} registers per consumer thread "
                                 f"({consumer_regs} available)")

    @property
    def q_groups(self):
        # Each warp of a consumer warpgroup owns 16 rows: per-warp and per-thread groups are 16-row tiles.
        return q_groups(self.qg, self.m, WARP_ROWS)

    @property
    def k_groups(self):
        return k_groups(self.kg, self.n)

    def emulation(self) -> dict:
        """Keyword arguments of sagegen.reference.sage2_attention that compute exactly what this variant does:
        its scale groups ((qg, kg) -> one granularity, 16-row warps), 128-key blocks, P.V format and accumulation,
        row sum. block_m only shapes per-block Q groups (m=128 there); any m gives the same warp/thread groups."""
        gran = EMULATION_GRANULARITY[(self.qg, self.kg)]
        pv = {"e4m3": "fp8", "f16": "fp16", "i8": "int8"}[self.pv]
        # dp4a sums the quantized P exactly, as the ones column of the emulation's P.V does
        return dict(qk_format="int8", granularity=gran, block_m=self.m if gran == "block" else 2 * WARP_ROWS,
                    warp_m=WARP_ROWS, block_n=self.n, smooth_k=True, pv=pv,
                    pv_accum="fp32", row_sum="p" if self.rowsum == "fma" else "pv")

    def context(self):
        qg, kg = self.q_groups, self.k_groups
        return {
            "o_type": OUT_TYPES[self.o],
            "pv_format": PV_ENUMS[self.pv],
            "threads": self.threads,
            "consumers": self.consumers,
            "smem": self.smem_bytes(),
            "q_tile": qg.tile, "q_sub": qg.sub, "k_tile": kg.tile, "k_sub": kg.sub,
        }


def enumerate_variants(arch: str) -> list[AttnWgmmaSpec]:
    out = []
    for pv in PV_FORMATS:
        for d in HEAD_DIMS:
            for m, n, s in TILES:
                for overlap, pingpong, rowsum in SCHEDULES:
                    for qg, kg in GRANULARITY_PAIRS:
                        for o in OUT_TYPES:
                            for causal in (False, True):
                                spec = build_valid(AttnWgmmaSpec, arch=arch, qk="i8", pv=pv, o=o, d=d, m=m, n=n,
                                                   s=s, overlap=overlap, pingpong=pingpong, rowsum=rowsum, qg=qg,
                                                   kg=kg, causal=causal)
                                if spec is not None:
                                    out.append(spec)
    return out
