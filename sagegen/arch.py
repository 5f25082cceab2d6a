"""The GPU architectures sagegen generates for, and what each one offers.

One table, one parser. Everything that differs between targets (which MMA instructions exist, how much shared
memory a block may use, the NVRTC target string) is read from here, never spelled elsewhere.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# Feature names. A kernel family lists the ones it needs; a variant exists only for arches that have them all.
MMA_I8 = "mma_i8"  # mma.sync m16n8k32 s8.s8 -> s32
MMA_F16 = "mma_f16"  # mma.sync m16n8k16 f16/bf16 -> f32 or f16
MMA_E4M3 = "mma_e4m3"  # mma.sync m16n8k32 e4m3 -> f32
MMA_E4M3_F16ACC = "mma_e4m3_f16acc"  # mma.sync m16n8k32 e4m3 -> f16 (SageAttention2++)
CP_ASYNC = "cp_async"  # cp.async (Ampere) and ldmatrix
WGMMA = "wgmma"  # warpgroup MMA + setmaxnreg (sm90a only)
TMA = "tma"  # cp.async.bulk.tensor
TCGEN05 = "tcgen05"  # tcgen05.mma + tensor memory (sm100a)
MMA_NVFP4 = "mma_nvfp4"  # mma.sync kind::mxf4nvf4 block_scale m16n8k64 (sm120a)

_AMPERE = frozenset({MMA_I8, MMA_F16, CP_ASYNC})
_ADA = _AMPERE | {MMA_E4M3, MMA_E4M3_F16ACC}


@dataclass(frozen=True)
class Arch:
    """One compile target. `name` is the canonical spelling used in variant names (e.g. ``sm90a``)."""

    name: str
    major: int
    minor: int
    nvrtc_arch: str  # what NVRTC's -arch takes, e.g. "sm_90a"
    smem_per_block: int  # bytes of shared memory one block may opt in to
    smem_per_sm: int  # bytes of shared memory per SM (bounds how many CTAs share one)
    features: frozenset

    @property
    def compute_capability(self) -> tuple[int, int]:
        return (self.major, self.minor)

    def has(self, *features: str) -> bool:
        return all(f in self.features for f in features)


# Shared memory per block (opt-in maximum) from the CUDA programming guide's per-compute-capability table.
ARCHES: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch("sm80", 8, 0, "sm_80", 163 * 1024, 164 * 1024, _AMPERE),
        Arch("sm86", 8, 6, "sm_86", 99 * 1024, 100 * 1024, _AMPERE),
        Arch("sm89", 8, 9, "sm_89", 99 * 1024, 100 * 1024, _ADA),
        Arch("sm90a", 9, 0, "sm_90a", 227 * 1024, 228 * 1024, _ADA | {WGMMA, TMA}),
        Arch("sm100a", 10, 0, "sm_100a", 227 * 1024, 228 * 1024, _ADA | {TMA, TCGEN05}),
        Arch("sm120a", 12, 0, "sm_120a", 99 * 1024, 100 * 1024, _ADA | {TMA, MMA_NVFP4}),
        Arch("sm121a", 12, 1, "sm_121a", 99 * 1024, 100 * 1024, _ADA | {TMA, MMA_NVFP4}),
    )
}

# The targets `sagegen build` covers when asked for all of them (sm121a shares sm120a's instruction set).
DEFAULT_ARCHES = ("sm80", "sm86", "sm89", "sm90a", "sm100a", "sm120a")

_BY_CC = {(a.major, a.minor): a for a in ARCHES.values()}


def parse_arch(text: str | Arch) -> Arch:
    """Accept ``sm120``, ``sm_120a``, ``SM120A``, ``120``, ``12.0`` or ``compute_120a`` and return the Arch.

    Hopper and Blackwell always resolve to their ``a`` targets: the instructions that make them worth generating
    for (wgmma, tcgen05, block-scaled FP4) exist only there.
    """
    if isinstance(text, Arch):
        return text
    if not isinstance(text, str):
        raise TypeError(f"arch must be a string such as 'sm90a', got {type(text).__name__}")
    s = text.strip().lower()
    m = re.fullmatch(r"(\d+)\.(\d)", s)
    if m:
        cc = (int(m.group(1)), int(m.group(2)))
    else:
        m = re.fullmatch(r"(?:sm|compute)?_?(\d{2,3})([af]?)", s)
        if not m:
            raise ValueError(f"unknown arch {text!r}; known: {', '.join(ARCHES)}")
        digits = m.group(1)
        cc = (int(digits[:-1]), int(digits[-1]))
    arch = _BY_CC.get(cc)
    if arch is None:
        raise ValueError(f"unknown arch {text!r}; known: {', '.join(ARCHES)}")
    return arch


def arch_of_device(major: int, minor: int) -> Arch:
    """The target to build for a device of compute capability ``major.minor``."""
    try:
        return _BY_CC[(major, minor)]
    except KeyError:
        raise ValueError(
            f"no sagegen target for compute capability {major}.{minor}; known: {', '.join(ARCHES)}"
        ) from None
