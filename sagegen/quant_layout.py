"""The quantization contract shared by the quantization kernels, the attention kernels and the torch emulations.

Everything here is plain arithmetic on Python ints / torch tensors, so the CUDA side (templates/common/layout.cuh)
and the emulation (sagegen.reference) implement the same maps. Change one, change all three, and the tests that
compare kernel against emulation will tell.

Buffers written by the quantization pass (per batch b and head h, always head-major "HND", contiguous):
  Q/K int8   [B, H, N_pad, D]   x ~= x_i8 * scale[group(row)]     (K first smoothed: k - mean_over_tokens(k))
  Q/K scale  [B, H, G]          fp32, scale = amax(group) / 127 (0 for an all-zero group; then x_i8 = 0)
  V fp16     [B, H, N_pad, D]   V cast to fp16 (bf16 inputs, or d != D)
  V e4m3     [B, H, D, N_pad]   V transposed, per-channel scale [B, H, D] = amax over tokens / 448
Rows past N and channels past d are zero. int8 rounding is round-half-to-even, clamped to [-127, 127].
"""
from __future__ import annotations

from dataclasses import dataclass

GRANULARITIES = ("block", "warp", "thread")

# Sequence padding of every quantized buffer: a multiple of the largest tile any kernel loads, so kernels load
# whole tiles without bounds checks and only mask scores past N.
N_ALIGN = 128
HEAD_DIMS = (64, 128, 256)  # compiled head dims; other d <= 256 are zero-padded up to the next one

INT8_MAX = 127.0
E4M3_MAX = 448.0


def padded_len(n: int) -> int:
    return -(-n // N_ALIGN) * N_ALIGN


def padded_dim(d: int) -> int:
    for D in HEAD_DIMS:
        if d <= D:
            return D
    raise ValueError(f"head dim {d} is larger than the largest supported ({HEAD_DIMS[-1]})")


@dataclass(frozen=True)
class ScaleGroups:
    """Which scale a token row uses: ``(row // tile) * sub + (row % 8) // (8 // sub)``.

    ``tile`` rows share a set of ``sub`` scales. sub = 1 is one scale per tile (per-block, per-warp); sub = 8 and
    sub = 4 follow the accumulator fragment of mma.sync m16n8k32 (and of wgmma, whose per-warp slices have the
    same shape): thread t of a warp holds accumulator rows t//4 and t//4 + 8 (so Q rows r with equal r % 8 meet
    in one thread: 8 scales per tile), and columns 2*(t%4) + {0,1} of every 8-column chunk (so K rows r with equal
    (r % 8) // 2 meet in one thread: 4 scales per tile).
    """

    tile: int
    sub: int = 1

    def __post_init__(self):
        if self.sub not in (1, 4, 8):
            raise ValueError(f"sub must be 1, 4 or 8, got {self.sub}")
        if self.tile <= 0 or self.tile % 8 or N_ALIGN % self.tile:
            raise ValueError(f"tile must be a positive multiple of 8 dividing {N_ALIGN}, got {self.tile}")

    def index(self, row):
        """Scale index of ``row`` (an int or an integer tensor)."""
        return (row // self.tile) * self.sub + (row % 8) // (8 // self.sub)

    def count(self, n: int) -> int:
        """Scales per (batch, head) for a sequence of n tokens (padded to N_ALIGN)."""
        return padded_len(n) // self.tile * self.sub


def q_groups(granularity: str, block_m: int, warp_m: int) -> ScaleGroups:
    """Q scale groups of an attention kernel whose CTA owns block_m query rows and each warp warp_m of them."""
    if granularity == "block":
        return ScaleGroups(block_m)
    if granularity == "warp":
        return ScaleGroups(warp_m)
    if granularity == "thread":
        return ScaleGroups(warp_m, 8)
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


def k_groups(granularity: str, block_n: int) -> ScaleGroups:
    """K scale groups of an attention kernel that loads block_n keys per step (every warp sees all of them,
    so per-warp K is per-block K)."""
    if granularity in ("block", "warp"):
        return ScaleGroups(block_n)
    if granularity == "thread":
        return ScaleGroups(block_n, 4)
    raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
