"""The quantization family: the passes every attention family runs before its kernel (see sagegen.quant_layout).

  op=stats  one read of K (and of V when V goes to 8 bits): per-split partial channel sums of K (for
            smoothing) and partial channel amax of V (for its per-channel FP8 / INT8 scales).
  op=qkv    one read of Q, K and V: INT8 Q and K (K smoothed) with scales at run-time granularity, and V cast
            to fp16 (f16, or its wgmma operand image f16w), quantized to FP8 e4m3 transposed (e4m3t, or its
            wgmma operand image e4m3w), or quantized to INT8 in the e4m3w image's byte layout (i8w). Q and K
            go to their operand image when the run-time flag qk_image is set.
Group sizes (tile rows, scales per tile) are run-time arguments, so one compiled variant serves every attention
tile shape; the head dim and dtypes are compile-time (they set vector widths and register use).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..arch import DEFAULT_ARCHES, MMA_I8
from ..errors import InvalidVariant
from ..quant_layout import HEAD_DIMS
from .spec import KernelSpec, build_valid, word, prefix

CUDA_TYPES = {"f16": "__half", "bf16": "__nv_bfloat16"}
# e4m3w / f16w: the wgmma operand images of e4m3t / f16 (sagegen.quant_layout); i8w: INT8 V (per-channel scale
# amax / 127, reference.quantize_v_int8) in e4m3w's byte layout, each value stored + 128 as u8 (what the u8 x u8
# P.V wgmma reads)
V_MODES = ("none", "f16", "e4m3t", "e4m3w", "f16w", "i8w")
# V modes with per-channel scales from V's amax over all tokens: the stats pass for them is the v=e4m3t one
SCALED_V_MODES = ("e4m3t", "e4m3w", "i8w")


@dataclass(frozen=True)
class QuantSpec(KernelSpec):
    op: str = word("op")
    x: str = word("x")  # input dtype of q, k, v
    v: str = word("v")  # what happens to V
    d: int = prefix("d")  # padded head dim

    family = "quant"
    template = "quant/quant.cu.j2"
    requires = (MMA_I8,)  # every target has it; keeps the family honest if one ever doesn't

    THREADS = 256

    def check(self):
        if self.op not in ("stats", "qkv"):
            raise InvalidVariant(f"op must be stats or qkv, got {self.op!r}")
        if self.x not in CUDA_TYPES:
            raise InvalidVariant(f"x must be one of {sorted(CUDA_TYPES)}, got {self.x!r}")
        if self.v not in V_MODES:
            raise InvalidVariant(f"v must be one of {V_MODES}, got {self.v!r}")
        if self.op == "stats" and self.v in ("f16", "f16w"):
            raise InvalidVariant("stats needs no V unless V goes to 8 bits (use v=none)")
        if self.op == "stats" and self.v in ("e4m3w", "i8w"):
            raise InvalidVariant(f"stats for v={self.v} is the v=e4m3t one (same V amax; use v=e4m3t)")
        if self.d not in HEAD_DIMS:
            raise InvalidVariant(f"d must be one of {HEAD_DIMS}, got {self.d}")

    def context(self):
        return {"x_type": CUDA_TYPES[self.x], "threads": self.THREADS, "min_blocks": self.min_blocks}

    @property
    def min_blocks(self) -> int:
        """CTAs per SM the qkv pass's register allocation must allow (``__launch_bounds__``). The pass is
        latency-bound: left alone the compiler gave d=128 102-168 registers (1-2 CTAs per SM) and ncu showed 21% of
        DRAM bandwidth. Measured on the H100 (scripts/quant_bench.py, N=8k, e4m3w): d=128 with 3 CTAs 1418 -> 837
        us (80 registers, 12 bytes of spill; 32 after the 2026-11-26 rewrite, which measured faster), d=64 with 4
        CTAs 469 -> 434 us. d=256 with 2 CTAs (128 registers, 176 bytes of spill; the compiler chose 205, one CTA):
        2154 -> 1722 us at 8k, 50 -> 62-66% of copy bandwidth (3 CTAs: 43%, 4: 34%)."""
        if self.op != "qkv":
            return 1
        return {64: 4, 128: 3, 256: 2}.get(self.d, 1)


def enumerate_variants(arch: str) -> list[QuantSpec]:
    out = []
    for op in ("stats", "qkv"):
        for x in CUDA_TYPES:
            for v in V_MODES:
                for d in HEAD_DIMS:
                    spec = build_valid(QuantSpec, arch=arch, op=op, x=x, v=v, d=d)
                    if spec is not None:
                        out.append(spec)
    return out


__all__ = ["QuantSpec", "enumerate_variants", "DEFAULT_ARCHES"]
