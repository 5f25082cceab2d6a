"""The mma.sync attention family: INT8 Q.K^T (m16n8k32) and FP16 P.V (m16n8k16), SageAttention 1/2 on sm80+.

The portable baseline: every target from sm80 to sm120a runs it. One CTA owns ``m`` query rows split over ``w``
warps (16 rows each); it walks the keys ``n`` at a time through ``s`` cp.async stages.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..arch import CP_ASYNC, MMA_F16, MMA_I8
from ..errors import InvalidVariant
from ..quant_layout import GRANULARITIES, HEAD_DIMS, N_ALIGN, k_groups, q_groups
from .spec import KernelSpec, build_valid, flag, prefix, word

OUT_TYPES = {"f16": "__half", "bf16": "__nv_bfloat16"}
# Tile shapes the enumerator tries; check() keeps those that fit. (m, n, w, s, b): b is the CTAs per SM the
# compiler must make room for (__launch_bounds__ min blocks; 1 = no register cap beyond 255).
TILES = ((64, 64, 4, 2, 1), (64, 128, 4, 2, 1), (128, 64, 8, 2, 1), (128, 32, 8, 2, 2), (128, 32, 4, 2, 1),
         (128, 32, 4, 4, 1), (64, 32, 4, 2, 1))
# Measured on the H100 (d=128, N=8k; BENCHMARKS.md, ablation): single-stage tiles, 2-warp CTAs, b=3 register caps
# and a Q.K^T look-ahead over three stages all lost to these. More stages pay only for the 128 x 32 tile with
# 4 warps (its loop is unrolled over them, templates/attn_mma/kernel.cuh): s4 +4% at d=128, +3% at d=64; s3 sat
# between s2 and s4 and fits no SM that s4 does not, so it is not enumerated. (64, 32, 4, 2): the tile whose
# shared memory fits d=256 on the 100 KB SMs (sm86 / sm89 / sm120a: 16 + 2 x 24 KB).
# Q/K scale granularity pairs enumerated (K per-warp is K per-block: every warp sees the whole key tile).
GRANULARITY_PAIRS = (("block", "block"), ("warp", "block"), ("thread", "thread"))
REG_BUDGET = 224  # of 255; calibrated against ptxas -v on sm_90a: estimates above it spilled
D256_MAX_COPIES = 12  # see check()


@dataclass(frozen=True)
class AttnMmaSpec(KernelSpec):
    qk: str = word("qk")  # Q.K^T operands: i8
    pv: str = word("pv")  # P.V operands: f16
    acc: str = word("acc")  # P.V accumulator: f32, or f16 added into f32 once per key block
    o: str = word("o")  # output dtype
    d: int = prefix("d")  # head dim compiled (inputs with smaller d are zero-padded by the quantization pass)
    m: int = prefix("m")  # query rows per CTA
    n: int = prefix("n")  # keys per main-loop step
    w: int = prefix("w")  # warps per CTA
    s: int = prefix("s")  # cp.async stages for K/V
    b: int = prefix("b")  # CTAs per SM the register allocation must allow (1: no cap)
    qg: str = word("qg")  # Q scale granularity
    kg: str = word("kg")  # K scale granularity
    causal: bool = flag("causal", "full")

    family = "attn_mma"
    template = "attn_mma/attn_mma.cu.j2"
    requires = (MMA_I8, MMA_F16, CP_ASYNC)

    @property
    def warp_m(self) -> int:
        return self.m // self.w

    @property
    def threads(self) -> int:
        return 32 * self.w

    def smem_bytes(self) -> int:
        q = self.m * self.d  # int8 Q tile, read once into registers
        kv = self.s * self.n * self.d * (1 + 2)  # int8 K + fp16 V per stage
        return q + kv

    def copies_per_thread(self) -> int:
        """16-byte cp.async copies of one K (int8) + V (fp16) key block each thread issues."""
        return self.n * self.d * 3 // (16 * self.threads)

    def reg_estimate(self) -> int:
        """Registers per thread of the accumulators and fragments, plus ~24 for addresses and temporaries."""
        mt = self.warp_m // 16
        o_acc = mt * (self.d // 8) * 4  # fp32 O
        s_acc = 2 * mt * (self.n // 8) * 4  # int32 S and its fp32 scores are live together
        q_frag = mt * (self.d // 32) * 4
        q_frag = q_frag if q_frag <= 16 else mt * 4  # large Q fragments are re-read from shared memory
        pv16 = mt * (self.d // 8) * 2 if self.acc == "f16" else 0
        return o_acc + s_acc + q_frag + pv16 + 24

    def check(self):
        if self.qk != "i8":
            raise InvalidVariant(f"qk must be i8, got {self.qk!r}")
        if self.pv != "f16":
            raise InvalidVariant(f"pv must be f16, got {self.pv!r}")
        if self.acc not in ("f32", "f16"):
            raise InvalidVariant(f"acc must be f32 or f16, got {self.acc!r}")
        if self.o not in OUT_TYPES:
            raise InvalidVariant(f"o must be one of {sorted(OUT_TYPES)}, got {self.o!r}")
        if self.d not in HEAD_DIMS:
            raise InvalidVariant(f"d must be one of {HEAD_DIMS}, got {self.d}")
        if self.w not in (2, 4, 8) or self.m % self.w or self.warp_m not in (16, 32):
            raise InvalidVariant(f"m={self.m} over w={self.w} warps must give 16 or 32 rows per warp")
        if self.n not in (32, 64, 128) or N_ALIGN % self.m or N_ALIGN % self.n:
            raise InvalidVariant(f"m={self.m}, n={self.n} must divide {N_ALIGN}; n in 32/64/128")
        if self.s not in (2, 3, 4):
            raise InvalidVariant(f"s must be 2, 3 or 4, got {self.s}")
        if self.b < 1 or self.b * self.threads > 2048 or self.b * self.smem_bytes() > self.target.smem_per_sm:
            raise InvalidVariant(f"b={self.b} CTAs of {self.threads} threads and {self.smem_bytes()} B shared "
                                 f"memory do not fit one {self.arch} SM")
        if self.b > 1 and self.reg_estimate() * self.threads * self.b > 65536 * 1.15:
            raise InvalidVariant(f"b={self.b} would cap registers far below the ~{self.reg_estimate()} needed")
        if self.qg not in GRANULARITIES or self.kg not in ("block", "thread"):
            raise InvalidVariant(f"qg in {GRANULARITIES}, kg in (block, thread); got {self.qg}, {self.kg}")
        if self.smem_bytes() > self.target.smem_per_block:
            raise InvalidVariant(f"needs {self.smem_bytes()} B of shared memory; {self.arch} has "
                                 f"{self.target.smem_per_block}")
        if self.reg_estimate() > REG_BUDGET:
            raise InvalidVariant(f"needs ~{self.reg_estimate()} registers per thread (budget {REG_BUDGET})")
        if self.d == 256 and self.copies_per_thread() > D256_MAX_COPIES:
            # d=256's fp32 O leaves ~30 registers: ptxas (sm_80 / sm_90a) spilled 24-44 bytes for 24 copies per
            # thread (m64 n64 w4), 0-8 for 12 (m128 n64 w8: 8 on sm_80 only; m64 n32 w4: none)
            raise InvalidVariant(f"d=256 with {self.copies_per_thread()} 16-byte K/V copies per thread and key block "
                                 f"(more than {D256_MAX_COPIES}) spills registers")

    @property
    def q_groups(self):
        return q_groups(self.qg, self.m, self.warp_m)

    @property
    def k_groups(self):
        return k_groups(self.kg, self.n)

    def emulation(self) -> dict:
        """Keyword arguments of sagegen.reference.sage2_attention that compute exactly what this variant does (its
        scale groups, key blocks, FP16 P.V and accumulator)."""
        return dict(qk_format="int8", granularity=self.qg, block_m=self.m, warp_m=self.warp_m, block_n=self.n,
                    smooth_k=True, pv="fp16", pv_accum="fp32" if self.acc == "f32" else "fp16")

    def context(self):
        qg, kg = self.q_groups, self.k_groups
        return {
            "o_type": OUT_TYPES[self.o],
            "threads": self.threads,
            "smem": self.smem_bytes(),
            "q_tile": qg.tile, "q_sub": qg.sub, "k_tile": kg.tile, "k_sub": kg.sub,
        }


def enumerate_variants(arch: str) -> list[AttnMmaSpec]:
    out = []
    for d in HEAD_DIMS:
        for m, n, w, s, b in TILES:
            for qg, kg in GRANULARITY_PAIRS:
                for acc in ("f32", "f16"):
                    for o in ("f16", "bf16"):
                        for causal in (False, True):
                            spec = build_valid(AttnMmaSpec, arch=arch, qk="i8", pv="f16", acc=acc, o=o, d=d, m=m,
                                               n=n, w=w, s=s, b=b, qg=qg, kg=kg, causal=causal)
                            if spec is not None:
                                out.append(spec)
    return out
