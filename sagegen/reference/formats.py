"""Element formats of the SageAttention family, as rounding functions on fp32 tensors plus bit encoders.

Every ``round_*`` function maps an fp32 tensor to the fp32 values that the format represents (so the emulations
can keep computing in fp32 while carrying exactly the values a kernel would hold). The ``encode_*`` / ``pack_*``
functions produce the bit patterns the CUDA kernels write, for bit-exact comparisons with their buffers.

Rounding is round-to-nearest, ties-to-even, and saturating ("satfinite"): a value beyond the largest finite
magnitude becomes that magnitude, +-inf included; NaN stays NaN. That is what ``cvt.rn.satfinite`` does for
e4m3 and e2m1, and what the quantizers clamp to before converting.
"""
from __future__ import annotations

import torch

from ..quant_layout import E4M3_MAX, INT8_MAX

E2M1_MAX = 6.0
# The eight magnitudes of FP4 e2m1, indexed by the 3 low bits of the code (bit 3 is the sign).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# INT4 is used symmetrically, [-7, 7], like INT8's [-127, 127]: -8 has no positive twin, and using it would make
# the scale depend on the sign of the largest element.
INT4_MAX = 7.0
FP16_MAX = 65504.0


def _as_float(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    return x.float()


def int_max(bits: int) -> float:
    """Largest magnitude of a symmetric signed integer grid of ``bits`` bits (127 for 8, 7 for 4)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an int in [2, 16], got {bits!r}")
    return float(2 ** (bits - 1) - 1)


def fdiv(a, b) -> torch.Tensor:
    """IEEE fp32 ``a / b`` (one rounding), what CUDA C's ``/`` computes in the kernels. Either side may be a
    Python number. Needed because torch rounds twice in two cases: ``number / tensor`` is
    ``reciprocal(tensor) * number``, and on CUDA ``tensor / number`` is ``tensor * (1 / number)``; each differs
    from a true division in the last bit for about a quarter of inputs. tensor / tensor is a true division."""
    ref = a if isinstance(a, torch.Tensor) else b
    if not isinstance(ref, torch.Tensor):
        raise TypeError(f"fdiv needs a tensor operand, got {type(a).__name__} and {type(b).__name__}")
    if not isinstance(a, torch.Tensor):
        a = torch.tensor(float(a), dtype=torch.float32, device=ref.device)
    if not isinstance(b, torch.Tensor):
        b = torch.tensor(float(b), dtype=torch.float32, device=ref.device)
    return torch.div(a, b)


def round_int(x: torch.Tensor, qmax: float) -> torch.Tensor:
    """Round half to even onto the integers, clamp to [-qmax, qmax] (values stay fp32)."""
    return torch.round(_as_float(x)).clamp_(-qmax, qmax)


def _round_float(x: torch.Tensor, mant_bits: int, min_exp: int, max_val: float) -> torch.Tensor:
    """Round onto a binary float grid: ``mant_bits`` stored mantissa bits, smallest normal exponent ``min_exp``
    (below it, subnormals share that binade's spacing), saturating at +-max_val.

    In the binade [2^e, 2^(e+1)) the grid spacing is 2^(e - mant_bits) and both binade ends are on the grid, so
    rounding x / spacing to the nearest integer (torch.round is ties-to-even) is exactly RNE of the format; the
    even integer is the even mantissa.
    """
    x = _as_float(x)
    a = x.abs()
    _, e = torch.frexp(a)  # a = f * 2^e with f in [0.5, 1): the binade exponent is e - 1
    e = (e - 1).clamp_(min=min_exp)
    step = torch.ldexp(torch.ones_like(a), e - mant_bits)
    r = torch.round(a / step) * step
    return torch.copysign(r.clamp_(max=max_val), x)


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """FP8 e4m3fn (OCP): 3 mantissa bits, smallest normal 2^-6, subnormal step 2^-9, max 448, no infinities."""
    return _round_float(x, 3, -6, E4M3_MAX)


def round_e2m1(x: torch.Tensor) -> torch.Tensor:
    """FP4 e2m1: 1 mantissa bit, smallest normal 1.0, subnormal 0.5, max 6 -> {0, .5, 1, 1.5, 2, 3, 4, 6}."""
    return _round_float(x, 1, 0, E2M1_MAX)


def round_fp16(x: torch.Tensor) -> torch.Tensor:
    """fp16 RNE. Not saturating: an fp16 accumulator that overflows holds inf, and so does the emulation."""
    return _as_float(x).half().float()


def round_mantissa(x: torch.Tensor, bits: int, mode: str = "nearest") -> torch.Tensor:
    """Keep ``bits`` of fp32's 23 mantissa bits (exponent range unchanged), by ``mode`` "nearest" (ties to even)
    or "truncate" (toward zero). Models reduced-precision accumulators such as the FP22 (1-8-13) accumulator that
    the SageAttention2 paper reports for FP8 mma on Ada/Hopper."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 0 <= bits <= 23:
        raise ValueError(f"bits must be an int in [0, 23], got {bits!r}")
    if mode not in ("nearest", "truncate"):
        raise ValueError(f"mode must be 'nearest' or 'truncate', got {mode!r}")
    x = _as_float(x).contiguous()
    drop = 23 - bits
    if drop == 0:
        return x.clone()
    i = x.view(torch.int32)
    if mode == "nearest":
        # Sign-magnitude: adding to the bit pattern rounds the magnitude; a carry into the exponent is correct.
        i = i + ((1 << (drop - 1)) - 1) + ((i >> drop) & 1)
    return (i & ~((1 << drop) - 1)).view(torch.float32)


# --- bit encoders ---------------------------------------------------------------------------------------------
def encode_e4m3(x: torch.Tensor) -> torch.Tensor:
    """float8_e4m3fn tensor of x, RNE and saturating (clamped first so no torch version can produce NaN)."""
    return _as_float(x).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def encode_e2m1(x: torch.Tensor) -> torch.Tensor:
    """uint8 codes 0..15 of FP4 e2m1 (bit 3 sign, bits 0-2 index into E2M1_VALUES), RNE and saturating."""
    r = round_e2m1(x)
    a = r.abs()
    mag = torch.where(a < 2, a * 2, torch.where(a < 4, a + 2, a / 2 + 4))
    return (mag.to(torch.uint8) | (torch.signbit(r).to(torch.uint8) << 3)).to(torch.uint8)


def decode_e2m1(codes: torch.Tensor) -> torch.Tensor:
    """fp32 values of uint8 e2m1 codes (only the low 4 bits are read)."""
    if codes.dtype != torch.uint8:
        raise TypeError(f"codes must be uint8, got {codes.dtype}")
    table = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), dtype=torch.float32, device=codes.device)
    return table[(codes & 0xF).long()]


def encode_int4(x: torch.Tensor) -> torch.Tensor:
    """int8 tensor of x rounded half-to-even and clamped to the symmetric INT4 range [-7, 7]."""
    return round_int(x, INT4_MAX).to(torch.int8)


def encode_int8(x: torch.Tensor) -> torch.Tensor:
    """int8 tensor of x rounded half-to-even and clamped to [-127, 127]."""
    return round_int(x, INT8_MAX).to(torch.int8)


def pack_nibbles(nibbles: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit values (uint8 codes, or int8 in [-8, 7] stored two's complement) two per byte along the last
    dim: element 2i in the low nibble, 2i+1 in the high one (the order of cvt.rn.e2m1x2 and of s4 mma operands)."""
    if nibbles.dtype not in (torch.uint8, torch.int8):
        raise TypeError(f"nibbles must be uint8 or int8, got {nibbles.dtype}")
    if nibbles.shape[-1] % 2:
        raise ValueError(f"nibbles' last dim must be even, got {nibbles.shape[-1]}")
    n = nibbles.to(torch.int16) & 0xF
    return (n[..., 0::2] | (n[..., 1::2] << 4)).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor, signed: bool) -> torch.Tensor:
    """Inverse of pack_nibbles: uint8 codes (signed=False) or sign-extended int8 (signed=True)."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    p = packed.to(torch.int16)
    n = torch.stack((p & 0xF, p >> 4), dim=-1).flatten(-2)
    if signed:
        return torch.where(n >= 8, n - 16, n).to(torch.int8)
    return n.to(torch.uint8)
