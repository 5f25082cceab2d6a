"""The short-sequence family: attn_mma's kernel for nk <= 128 keys, quantizing Q, K and V itself: one launch.

For short key sequences the quantization pass costs as much as the attention, and its launch (plus its output
buffers) is half of attention()'s host time. Here every CTA reads the caller's fp16/bf16 tensors, smooths and
quantizes K (all nk <= 128 keys, resident in shared memory) and its own Q rows into the same INT8 scale groups the
pass would write, casts V to fp16, and runs attn_mma's main loop over the resident key blocks
(templates/attn_mma/fused_quant.cuh). Same scheme and emulation as the attn_mma variant with the same tile; any
query length. Every arch that runs attn_mma runs it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..arch import CP_ASYNC, MMA_F16, MMA_I8
from ..errors import InvalidVariant
from ..quant_layout import N_ALIGN
from .attn_mma import OUT_TYPES, AttnMmaSpec
from .spec import KernelSpec, build_valid, flag, prefix, word

MAX_KEYS = N_ALIGN  # keys the kernel holds in shared memory (fused_quant.cuh kShortKeys)
IN_TYPES = OUT_TYPES  # fp16 / bf16 inputs, read as they are
# (m, n, w, b) per head dim. The prologue keeps all of K's 128 rows in registers, 16 vectors per thread with
# 4 warps at d=128: that tile used 255 registers and spilled 12-52 bytes on sm_90a / sm_120a (ptxas -v), so d=128
# runs 8-warp tiles only.
TILES = {64: ((64, 64, 4, 1), (64, 128, 4, 1), (128, 64, 8, 1)), 128: ((128, 64, 8, 1), (128, 32, 8, 1))}
GRANULARITY_PAIRS = (("thread", "thread"), ("warp", "block"), ("block", "block"))


@dataclass(frozen=True)
class AttnShortSpec(KernelSpec):
    qk: str = word("qk")  # i8
    pv: str = word("pv")  # f16
    acc: str = word("acc")  # P.V accumulator: f32, or f16 added into f32 once per key block
    x: str = word("x")  # input dtype (q, k, v as the caller passes them)
    o: str = word("o")  # output dtype
    d: int = prefix("d")
    m: int = prefix("m")  # query rows per CTA
    n: int = prefix("n")  # keys per main-loop step (all MAX_KEYS stay resident)
    w: int = prefix("w")
    b: int = prefix("b")  # CTAs per SM the register allocation must allow
    qg: str = word("qg")
    kg: str = word("kg")
    causal: bool = flag("causal", "full")

    family = "attn_short"
    template = "attn_mma/attn_short.cu.j2"
    requires = (MMA_I8, MMA_F16, CP_ASYNC)

    @property
    def base(self) -> AttnMmaSpec:
        """The attn_mma variant whose main loop, scale groups and emulation this one shares (two stages: the
        pass-fed kernel's checks of tile shape and registers apply unchanged)."""
        return AttnMmaSpec(arch=self.arch, qk=self.qk, pv=self.pv, acc=self.acc, o=self.o, d=self.d, m=self.m,
                           n=self.n, w=self.w, s=2, b=self.b, qg=self.qg, kg=self.kg, causal=self.causal)

    @property
    def warp_m(self) -> int:
        return self.m // self.w

    @property
    def threads(self) -> int:
        return 32 * self.w

    def smem_bytes(self) -> int:
        """Dynamic shared memory: the Q tile and every resident key block (int8 K + fp16 V)."""
        return self.m * self.d + MAX_KEYS * self.d * 3

    def static_smem_bytes(self) -> int:
        """fused_quant.cuh's FusedScratch: channel partials, K's means, V's channel scales, five per-group / per-row
        arrays."""
        rows = self.threads // (self.d // 8)
        return 4 * (rows * self.d + 2 * self.d + 5 * MAX_KEYS)

    def check(self):
        if self.x not in IN_TYPES:
            raise InvalidVariant(f"x must be one of {sorted(IN_TYPES)}, got {self.x!r}")
        self.base  # noqa: B018  (tile, formats, granularities, registers: attn_mma's checks)
        rows = self.threads // (self.d // 8)
        if MAX_KEYS % rows or self.m % rows or rows > 32:
            raise InvalidVariant(f"{self.threads} threads over d={self.d} give {rows} rows per pass, which must "
                                 f"divide {MAX_KEYS} and m={self.m}")
        total = self.smem_bytes() + self.static_smem_bytes()
        if total > self.target.smem_per_block or self.b * total > self.target.smem_per_sm:
            raise InvalidVariant(f"needs {total} B of shared memory ({self.b} per SM); {self.arch} has "
                                 f"{self.target.smem_per_block} per block, {self.target.smem_per_sm} per SM")

    @property
    def q_groups(self):
        return self.base.q_groups

    @property
    def k_groups(self):
        return self.base.k_groups

    def emulation(self) -> dict:
        return self.base.emulation()

    def context(self):
        qg, kg = self.q_groups, self.k_groups
        return {
            "o_type": OUT_TYPES[self.o],
            "x_type": IN_TYPES[self.x],
            "threads": self.threads,
            "smem": self.smem_bytes(),
            "static_smem": self.static_smem_bytes(),
            "q_tile": qg.tile, "q_sub": qg.sub, "k_tile": kg.tile, "k_sub": kg.sub,
        }


def enumerate_variants(arch: str) -> list[AttnShortSpec]:
    """FP32 P.V accumulation and output dtype = input dtype only (what attention() asks of this family); other
    combinations are valid specs that attention(variant=...) can build."""
    out = []
    for d in (64, 128):
        for m, n, w, b in TILES[d]:
            for qg, kg in GRANULARITY_PAIRS:
                for x in ("f16", "bf16"):
                    for causal in (False, True):
                        spec = build_valid(AttnShortSpec, arch=arch, qk="i8", pv="f16", acc="f32", x=x, o=x, d=d,
                                           m=m, n=n, w=w, b=b, qg=qg, kg=kg, causal=causal)
                        if spec is not None:
                            out.append(spec)
    return out
