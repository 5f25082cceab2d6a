"""The quantization contract shared by the quantization kernels, the attention kernels and the torch emulations.

Everything here is plain arithmetic on Python ints / torch tensors, so the CUDA side (templates/quant/quant.cuh
and the kernels reading its buffers) and the emulation (sagegen.reference) implement the same maps. Change one,
change all three, and the tests that compare kernel against emulation will tell.

Buffers written by the quantization pass (per batch b and head h, always head-major "HND", contiguous):
  Q/K int8   [B, H, N_pad, D]   x ~= x_i8 * scale[group(row)]     (K first smoothed: k - mean_over_tokens(k))
  Q/K scale  [B, H, G]          fp32, scale = amax(group) / 127 (0 for an all-zero group; then x_i8 = 0)
  V fp16     [B, H, N_pad, D]   V cast to fp16 (bf16 inputs, or d != D)
  V e4m3     [B, H, D, N_pad]   V transposed, per-channel scale [B, H, D] = amax over tokens / 448
Rows past N and channels past d are zero. int8 rounding is round-half-to-even, clamped to [-127, 127].

Operand images: the same values, stored in the swizzled shared-memory layout Hopper's wgmma reads, so that an
attention kernel can copy whole tiles with 1-D bulk copies (cp.async.bulk). Scales are unchanged.
  Q/K int8 image  [B, H, N_pad, D]            D = 64, 128 or 256 (qk_image_offset). D = 64: row r's 16-byte chunk c
                                              (channels 16c..16c+15) is stored at chunk c ^ (r >> 1) % 4 of the
                                              row (the 64-byte swizzle). D >= 128: 128-byte swizzle atoms of 8 rows
                                              x 128 channels (1024 bytes, chunk c of row r at c ^ r % 8); the
                                              D / 128 atoms of an 8-row group lie side by side, so D = 128 is row
                                              r at byte 128 r and D = 256's two channel halves are 1024 bytes
                                              apart. Bytes inside a chunk keep their order.
  V e4m3 image    [B, H, N_pad/128, D, 128]   v mode e4m3w: for 128-key block j, channel row c holds the block's
                                              keys for channel c. Key k sits at byte v_key_position(k) (which puts
                                              the keys of the FP8 P fragment a thread takes from the wgmma
                                              accumulator where the P.V wgmma expects them, without shuffles), then
                                              16-byte chunk s of the row is stored at s ^ (c % 8) (128-byte swizzle).
                                              Values and per-channel scales are those of V e4m3.
  V int8 image    [B, H, N_pad/128, D, 128]   v mode i8w: the byte layout of the V e4m3 image, holding u8 = 128 +
                                              V_c = round_half_even(v * (127 / amax_c)) clamped to [-127, 127],
                                              with per-channel scale [B, H, D] = amax_c / 127 (0 and values 0 for
                                              an all-zero channel): sagegen.reference.quantize_v_int8's values + 128
                                              (u8; the u8 x u8 P.V wgmma then sums non-negative products),
                                              transposed to [D, N_pad] and passed through v_to_image.
  V fp16 image    [B, H, N_pad/128, D/64,     v mode f16w: the values of V fp16, cut into 128-key blocks and 64-channel
                   128, 64]                   slabs; in a slab, key row r's 16-byte chunk c (channels 8c..8c+7) is
                                              stored at chunk c ^ (r % 8) (128-byte swizzle). The FP16 P.V wgmma reads
                                              a block as its MN-major (channel-contiguous) B operand: no transpose, and
                                              the fp16 P fragment comes straight from the Q.K^T accumulator.
qk_to_image / v_to_image / v_f16_to_image below build these from the plain buffers; *_from_image invert them
(v_to_image / v_from_image move bytes: e4m3 and int8 alike).
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


# --- operand images (see the module docstring); torch is imported lazily: the variant code needs none ---------
QK_IMAGE_DIMS = (64, 128, 256)
V_IMAGE_KEYS = N_ALIGN  # keys per block of the V image


def qk_image_offset(row, col, D: int):
    """Byte offset of element (row, col) of a plain Q/K buffer [N_pad, D] in its image (ints or tensors).

    wgmma reads a K-major 8-bit operand as 8-row groups of 128-byte (or, D = 64, 64-byte) swizzled rows; a k-step
    of 32 channels never leaves one atom, so D = 256 keeps its two 128-channel halves in separate atoms."""
    chunk, byte = col >> 4, col & 15
    if D == 64:
        return row * 64 + ((chunk ^ ((row >> 1) & 3)) << 4 | byte)
    return (row >> 3) * (8 * D) + (col >> 7) * 1024 + (row & 7) * 128 + (((chunk & 7) ^ (row & 7)) << 4 | byte)


def v_key_position(k):
    """Byte of key k (within its 128-key block) in a V image channel row, before the chunk swizzle.

    k = 32g + 16h + 8a + 2t + e  ->  32g + 16h + 4t + 2a + e: the a and t bits swap. A thread's FP8 P fragment
    from the wgmma accumulator holds keys 2t + e and 8 + 2t + e of each 16; they become 4 consecutive bytes.
    An int or an integer tensor; bits above the block's 7 pass through.
    """
    return (k & ~0xE) | ((k & 6) << 1) | ((k >> 2) & 2)


def _bytes(x):
    # Gather/scatter are not implemented for float8 on every device: move 1-byte floats as uint8.
    import torch

    return x.view(torch.uint8) if x.is_floating_point() and x.element_size() == 1 else x


def _qk_offsets(N: int, D: int, device):
    """[N * D]: the image offset of every plain element, row-major."""
    import torch

    if D not in QK_IMAGE_DIMS:
        raise ValueError(f"the Q/K image needs a head dim in {QK_IMAGE_DIMS}, got last dim {D}")
    if N % 8:
        raise ValueError(f"the Q/K image needs whole 8-row groups, got {N} rows")
    r = torch.arange(N, device=device)[:, None]
    col = torch.arange(D, device=device)
    return qk_image_offset(r, col, D).flatten()


def qk_to_image(x8):
    """Plain Q/K buffer [..., N_pad, D] -> its image (same shape)."""
    N, D = x8.shape[-2:]
    b = _bytes(x8).flatten(-2)
    dst = _qk_offsets(N, D, x8.device).expand(b.shape)
    return b.new_empty(b.shape).scatter_(-1, dst, b).view(x8.dtype).unflatten(-1, (N, D))


def qk_from_image(img):
    """Q/K image [..., N_pad, D] -> the plain buffer."""
    import torch

    N, D = img.shape[-2:]
    b = _bytes(img).flatten(-2)
    src = _qk_offsets(N, D, img.device).expand(b.shape)
    return torch.gather(b, -1, src).view(img.dtype).unflatten(-1, (N, D))


def _v_dest(D: int, device):
    """[D, 128] int64: where key k of channel c lands in its image row (key position, then chunk swizzle)."""
    import torch

    pos = v_key_position(torch.arange(V_IMAGE_KEYS, device=device))
    c = torch.arange(D, device=device)[:, None]
    return ((pos >> 4) ^ (c % 8)) << 4 | (pos & 15)


def v_to_image(vt):
    """Plain V 8-bit buffer (e4m3 or int8) [..., D, N_pad] (transposed) -> image [..., N_pad/128, D, 128]."""
    import torch

    D, n_pad = vt.shape[-2:]
    if n_pad % V_IMAGE_KEYS:
        raise ValueError(f"the V image needs N_pad a multiple of {V_IMAGE_KEYS}, got {n_pad}")
    b = _bytes(vt).unflatten(-1, (n_pad // V_IMAGE_KEYS, V_IMAGE_KEYS)).transpose(-3, -2)  # [..., J, D, 128]
    dest = _v_dest(D, vt.device).expand(b.shape)
    return torch.empty_like(b).scatter_(-1, dest, b).view(vt.dtype)


def v_from_image(img):
    """V image [..., N_pad/128, D, 128] -> the plain buffer [..., D, N_pad]."""
    import torch

    J, D, keys = img.shape[-3:]
    if keys != V_IMAGE_KEYS:
        raise ValueError(f"the V image's last dim must be {V_IMAGE_KEYS}, got {keys}")
    b = _bytes(img)
    plain = torch.gather(b, -1, _v_dest(D, img.device).expand(b.shape))  # [..., J, D, 128]
    return plain.transpose(-3, -2).flatten(-2).view(img.dtype)


V_SLAB = 64  # channels per slab of the V fp16 image: one 128-byte swizzle row of fp16


def v_f16_to_image(v16):
    """Plain V fp16 buffer [..., N_pad, D] -> image [..., N_pad/128, D/64, 128, 64]."""
    import torch

    n_pad, D = v16.shape[-2:]
    if n_pad % V_IMAGE_KEYS or D % V_SLAB:
        raise ValueError(f"the V fp16 image needs N_pad a multiple of {V_IMAGE_KEYS} and D of {V_SLAB}, got "
                         f"{n_pad} x {D}")
    x = v16.unflatten(-2, (n_pad // V_IMAGE_KEYS, V_IMAGE_KEYS)).unflatten(-1, (D // V_SLAB, V_SLAB))
    x = x.transpose(-3, -2)  # [..., J, S, 128, 64]
    return torch.gather(x, -1, _v_f16_src(x.device).expand(x.shape)).contiguous()


def v_f16_from_image(img):
    """V fp16 image [..., N_pad/128, D/64, 128, 64] -> the plain buffer [..., N_pad, D]."""
    J, S, keys, ch = img.shape[-4:]
    if (keys, ch) != (V_IMAGE_KEYS, V_SLAB):
        raise ValueError(f"the V fp16 image's last dims must be ({V_IMAGE_KEYS}, {V_SLAB}), got ({keys}, {ch})")
    import torch

    plain = torch.gather(img, -1, _v_f16_src(img.device).expand(img.shape))  # the swizzle is its own inverse
    return plain.transpose(-3, -2).flatten(-2).flatten(-3, -2)


def _v_f16_src(device):
    """[128, 64]: the element of a plain slab row stored at each image position (8-element chunks XOR row % 8)."""
    import torch

    r = torch.arange(V_IMAGE_KEYS, device=device)[:, None]
    col = torch.arange(V_SLAB, device=device)
    return ((col >> 3) ^ (r % 8)) << 3 | (col & 7)
