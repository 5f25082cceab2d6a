"""The quantizers of the contract in sagegen.quant_layout, producing the exact buffers the CUDA quantization
kernels write (the kernel tests compare against these), plus NVFP4 block quantization.

Conventions (all in fp32, the way the kernels compute them; every division is an IEEE division, formats.fdiv):
  * smoothing: ``x - mean`` of the input cast to fp32; the mean is over the valid tokens only (all of them for K,
    or those of one block of query rows for SageAttention2's Q smoothing). Padded rows stay zero.
  * integer grids: per scale group, amax over the group's rows and all channels; ``inv = qmax / amax`` (fp32
    division), ``x_q = round_half_even(x * inv)`` clamped to [-qmax, qmax], scale ``amax / qmax``. qmax is 127
    for INT8 and 7 for INT4 (symmetric; see formats.INT4_MAX). An all-zero group has scale 0 and x_q = 0.
  * V fp8: per channel ``inv = fp8_max / amax_c``, ``v_e4m3 = e4m3(v * inv)``, scale ``amax_c / fp8_max``.
  * NVFP4: blocks of 16 along the reduction dim, scale ``e4m3(amax / 6)``, values ``e2m1(x / scale)``.
  * operand images (the Hopper wgmma layouts, quant_layout.qk_to_image / v_to_image): IntQuant.image() and
    Fp8VQuant.image() rearrange ``data``; values and scales are the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant_layout import E4M3_MAX, N_ALIGN, ScaleGroups, padded_dim, padded_len, qk_to_image, v_to_image
from ._common import LAYOUTS, to_hnd
from .formats import E2M1_MAX, encode_e4m3, fdiv, int_max, round_e2m1, round_e4m3, round_int

NVFP4_BLOCK = 16


@dataclass(frozen=True)
class IntQuant:
    """An INT8 (or INT4, unpacked in int8) Q or K buffer of the contract.

    data [B, H, N_pad, D] int8; scale [B, H, G] fp32; mean [B, H, M, D] fp32 or None (M = 1 for token-wide
    smoothing, N_pad / block for per-block smoothing; channels past d are zero). n: valid rows.
    """

    data: torch.Tensor
    scale: torch.Tensor
    mean: torch.Tensor | None
    groups: ScaleGroups
    n: int
    qmax: float

    def row_scale(self) -> torch.Tensor:
        """[B, H, N_pad] fp32: the scale of every row."""
        idx = self.groups.index(torch.arange(self.data.shape[-2], device=self.data.device))
        return self.scale[..., idx]

    def dequantize(self) -> torch.Tensor:
        """[B, H, N_pad, D] fp32 approximation of the (smoothed) input: data * scale[group(row)]."""
        return self.data.float() * self.row_scale()[..., None]

    def image(self) -> torch.Tensor:
        """data in the Q/K operand image (the qkv pass with qk_image; D 64 or 128); scale is unchanged."""
        return qk_to_image(self.data)


@dataclass(frozen=True)
class Fp8VQuant:
    """V in FP8 e4m3, per-channel scale. data [B, H, D, N_pad] float8_e4m3fn (transposed); scale [B, H, D]."""

    data: torch.Tensor
    scale: torch.Tensor
    n: int
    fp8_max: float

    def values(self) -> torch.Tensor:
        """[B, H, N_pad, D] fp32 e4m3 values (not scaled back), in token-major order."""
        return self.data.float().transpose(-1, -2)

    def dequantize(self) -> torch.Tensor:
        """[B, H, N_pad, D] fp32 approximation of V."""
        return self.values() * self.scale[..., None, :]

    def image(self) -> torch.Tensor:
        """data in the V operand image [B, H, N_pad/128, D, 128] (the qkv pass with v=e4m3w); scale is unchanged."""
        return v_to_image(self.data)


@dataclass(frozen=True)
class Nvfp4Quant:
    """NVFP4 blocks along ``dim``: values (fp32 on the e2m1 grid) and scale (fp32 on the e4m3 grid), where
    scale has the shape of values with ``dim`` divided by 16."""

    values: torch.Tensor
    scale: torch.Tensor
    dim: int

    def dequantize(self) -> torch.Tensor:
        return self.values * self.scale.repeat_interleave(NVFP4_BLOCK, dim=self.dim)


def _check_tensor(x, name: str, layout: str) -> torch.Tensor:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"{name} must be a 4-D floating tensor, got shape {tuple(x.shape)} dtype {x.dtype}")
    if 0 in x.shape:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    return to_hnd(x, layout)


def pad_fp32(x: torch.Tensor, n_pad: int, d_pad: int) -> torch.Tensor:
    """[B, H, N, d] -> zero-padded fp32 [B, H, n_pad, d_pad]."""
    B, H, N, d = x.shape
    out = torch.zeros(B, H, n_pad, d_pad, dtype=torch.float32, device=x.device)
    out[:, :, :N, :d] = x
    return out


def smooth_pad(x: torch.Tensor, smooth: bool | int = False, *, layout: str = "HND"):
    """Smooth and pad: returns (x_s [B, H, N_pad, D] fp32, mean [B, H, M, D] fp32 or None).

    smooth=True subtracts the per-channel mean over all tokens (K smoothing: softmax is invariant to it); an int b
    subtracts the mean over each block of b rows (Q smoothing; b divides N_ALIGN; its contribution mean . k must
    be added back to the scores, see q_smoothing_bias). Padded rows and channels stay zero.
    """
    x = _check_tensor(x, "x", layout)
    B, H, N, d = x.shape
    n_pad, d_pad = padded_len(N), padded_dim(d)
    xf = x.float()
    if smooth is False or smooth is None:
        return pad_fp32(xf, n_pad, d_pad), None
    if smooth is True:
        mean = xf.mean(dim=-2, keepdim=True)
        return pad_fp32(xf - mean, n_pad, d_pad), pad_fp32(mean, 1, d_pad)
    if not isinstance(smooth, int) or smooth <= 0 or N_ALIGN % smooth:
        raise ValueError(f"smooth must be a bool or a block size dividing {N_ALIGN}, got {smooth!r}")
    b = smooth
    xp = pad_fp32(xf, n_pad, d_pad).view(B, H, n_pad // b, b, d_pad)
    counts = (N - torch.arange(0, n_pad, b, device=x.device)).clamp(0, b).to(torch.float32)
    mean = xp.sum(dim=-2) / counts.clamp(min=1)[:, None]  # [B, H, M, D]; a block of padding only has mean 0
    valid = (torch.arange(n_pad, device=x.device) < N).view(n_pad // b, b, 1)
    xs = torch.where(valid, xp - mean[..., None, :], xp)
    return xs.view(B, H, n_pad, d_pad), mean


def _group_amax(x: torch.Tensor, groups: ScaleGroups, n: int) -> torch.Tensor:
    """[B, H, G] amax of |x| over each scale group's rows, the rows assigned by the contract's own map."""
    B, H, n_pad, _ = x.shape
    rows = torch.arange(n_pad, device=x.device)
    idx = groups.index(rows).expand(B, H, n_pad)
    out = torch.zeros(B, H, groups.count(n), dtype=torch.float32, device=x.device)
    return out.scatter_reduce_(-1, idx, x.abs().amax(dim=-1), reduce="amax", include_self=True)


def quantize_padded(x_s: torch.Tensor, groups: ScaleGroups, n: int, qmax: float):
    """Quantize an already smoothed and padded fp32 [B, H, N_pad, D] tensor: (x_q fp32 integers, scale [B, H, G])."""
    amax = _group_amax(x_s, groups, n)
    inv = torch.where(amax > 0, fdiv(qmax, amax), torch.zeros_like(amax))  # all-zero group: x_q = 0, not 0 * inf
    idx = groups.index(torch.arange(x_s.shape[-2], device=x_s.device))
    x_q = round_int(x_s * inv[..., idx, None], qmax)
    return x_q, fdiv(amax, qmax)


def quantize_int(
    x: torch.Tensor, groups: ScaleGroups, *, bits: int = 8, smooth: bool | int = False, layout: str = "HND"
) -> IntQuant:
    """Symmetric integer quantization with the contract's scale groups (see the module docstring).

    bits 8 and 4 are what the kernels use; other widths up to 16 exist for convergence studies (int16/int32 data).
    """
    if not isinstance(groups, ScaleGroups):
        raise TypeError(f"groups must be a ScaleGroups (see quant_layout.q_groups/k_groups), "
                        f"got {type(groups).__name__}")
    qmax = int_max(bits)
    x_hnd = _check_tensor(x, "x", layout)
    x_s, mean = smooth_pad(x_hnd, smooth)
    x_q, scale = quantize_padded(x_s, groups, x_hnd.shape[2], qmax)
    dtype = torch.int8 if bits <= 8 else torch.int16
    return IntQuant(x_q.to(dtype), scale, mean, groups, x_hnd.shape[2], qmax)


def quantize_int8(x: torch.Tensor, groups: ScaleGroups, *, smooth: bool | int = False, layout: str = "HND") -> IntQuant:
    """The contract's INT8 Q/K buffer: data [B, H, N_pad, D] int8, scale [B, H, G] = amax / 127."""
    return quantize_int(x, groups, bits=8, smooth=smooth, layout=layout)


def quantize_int4(x: torch.Tensor, groups: ScaleGroups, *, smooth: bool | int = False, layout: str = "HND") -> IntQuant:
    """INT4 analogue: values in [-7, 7] held unpacked in int8 (formats.pack_nibbles packs them), scale = amax / 7."""
    return quantize_int(x, groups, bits=4, smooth=smooth, layout=layout)


def quantize_v_fp8(v: torch.Tensor, *, fp8_max: float = E4M3_MAX, layout: str = "HND") -> Fp8VQuant:
    """The contract's V e4m3 buffer [B, H, D, N_pad] with per-channel scale amax_over_tokens / fp8_max.

    fp8_max = 448 uses e4m3's full range (the contract). SageAttention2++ passes a smaller value so its fp16 P.V
    accumulator cannot overflow (see sage2pp.fp16_accum_v_max); it should be on the e4m3 grid so the largest
    element lands on it exactly.
    """
    if not 0 < float(fp8_max) <= E4M3_MAX:
        raise ValueError(f"fp8_max must be in (0, {E4M3_MAX}], got {fp8_max}")
    v = _check_tensor(v, "v", layout)
    B, H, N, d = v.shape
    vp = pad_fp32(v.float(), padded_len(N), padded_dim(d))
    amax = vp.abs().amax(dim=-2)  # [B, H, D]
    inv = torch.where(amax > 0, fdiv(float(fp8_max), amax), torch.zeros_like(amax))
    data = encode_e4m3(vp * inv[..., None, :]).transpose(-1, -2).contiguous()
    return Fp8VQuant(data, fdiv(amax, float(fp8_max)), N, float(fp8_max))


def quantize_v_int8(v: torch.Tensor, *, layout: str = "HND") -> tuple[torch.Tensor, torch.Tensor]:
    """V as INT8 with per-channel scales amax_over_tokens / 127 (INT8 P.V's V: the quantization pass's v mode i8w):
    (values [B, H, N_pad, D] fp32 integers in [-127, 127], scale [B, H, D]). A zero channel gets scale 0."""
    v = _check_tensor(v, "v", layout)
    B, H, N, d = v.shape
    vp = pad_fp32(v.float(), padded_len(N), padded_dim(d))
    amax = vp.abs().amax(dim=-2)  # [B, H, D]
    inv = torch.where(amax > 0, fdiv(127.0, amax), torch.zeros_like(amax))
    return round_int(vp * inv[..., None, :], 127.0), fdiv(amax, 127.0)


def quantize_nvfp4(x: torch.Tensor, dim: int = -1) -> Nvfp4Quant:
    """NVFP4: blocks of 16 consecutive elements along ``dim`` (whose size must be a multiple of 16), each with an
    e4m3 scale ``e4m3(amax / 6)`` and e2m1 values ``e2m1(x / scale)`` (a zero scale gives zero values).

    Because the scale is rounded, x / scale may exceed 6 by up to one e4m3 ulp; e2m1 saturates it to 6. There is
    no per-tensor fp32 scale: inputs are assumed to keep amax / 6 inside e4m3's range (2^-9 .. 448).
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating torch.Tensor, got {type(x).__name__}")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim {dim} is out of range for a {x.dim()}-D tensor")
    dim = dim % x.dim()
    if x.shape[dim] % NVFP4_BLOCK:
        raise ValueError(f"x.shape[{dim}] = {x.shape[dim]} is not a multiple of {NVFP4_BLOCK}")
    xt = x.float().movedim(dim, -1)
    blocks = xt.reshape(*xt.shape[:-1], -1, NVFP4_BLOCK)
    scale = round_e4m3(fdiv(blocks.abs().amax(dim=-1), E2M1_MAX))
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    vals = torch.where(scale[..., None] > 0, round_e2m1(blocks / safe[..., None]), torch.zeros_like(blocks))
    return Nvfp4Quant(vals.reshape(xt.shape).movedim(-1, dim), scale.movedim(-1, dim), dim)


def q_smoothing_bias(mean_q: torch.Tensor, k_s: torch.Tensor) -> torch.Tensor:
    """The score term removed by Q smoothing, mean_q . k, in fp32: [B, Hkv, G, M, Nk] from mean_q
    [B, Hkv, G, M, D] (per query block) and the smoothed, padded fp32 K [B, Hkv, Nk, D]."""
    return torch.matmul(mean_q, k_s.transpose(-1, -2)[:, :, None])
