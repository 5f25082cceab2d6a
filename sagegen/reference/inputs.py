"""Input distributions of the accuracy table. Deterministic: generated on the CPU from one seed, then moved.

  normal    q, k, v ~ N(0, 1).
  outliers  N(0, 1) plus per-channel offsets shared by all tokens in K and V (what real models' K and V show:
            a few channels far from zero in every token). Offsets ~ N(0, 2^2), and 4 channels get +-20 more.
  heavy     Student-t with 3 degrees of freedom (heavy tails: rare very large elements blow up amax-based scales).
  peaked    N(0, 1) with q doubled: scores spread twice as wide, so each row's mass sits on fewer keys and most of
            its probabilities are small (what separates float from integer formats for P).
  zeros     N(0, 1) with all-zero rows (every 7th token of q, k and v), an all-zero block of q, of k and of v
            (tokens 128..255 when n >= 512, a quarter of the sequence when shorter), and an all-zero v channel:
            exercises zero scale groups and zero-amax channels.
"""
from __future__ import annotations

DISTRIBUTIONS = {
    "normal": "q, k, v ~ N(0, 1)",
    "outliers": "N(0, 1) + per-channel offsets shared by all tokens in K and V (4 channels +-20)",
    "heavy": "Student-t, 3 degrees of freedom",
    "peaked": "N(0, 1) with q doubled (sharper attention rows)",
    "zeros": "N(0, 1) with all-zero rows, 128-token blocks and a V channel",
}


def make_inputs(dist: str, *, batch: int = 1, heads: int = 2, heads_kv: int | None = None, n: int = 1024,
                n_kv: int | None = None, d: int = 128, seed: int = 0, device="cpu", dtype=None):
    """(q, k, v) HND tensors of ``dtype`` (default torch.float16, what kernels take) for a named distribution."""
    import torch

    if dist not in DISTRIBUTIONS:
        raise ValueError(f"dist must be one of {tuple(DISTRIBUTIONS)}, got {dist!r}")
    heads_kv = heads if heads_kv is None else heads_kv
    n_kv = n if n_kv is None else n_kv
    dtype = torch.float16 if dtype is None else dtype
    for name, val in (("batch", batch), ("heads", heads), ("heads_kv", heads_kv), ("n", n), ("n_kv", n_kv), ("d", d)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if heads % heads_kv:
        raise ValueError(f"heads ({heads}) must be a multiple of heads_kv ({heads_kv})")
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    shapes = ((batch, heads, n, d), (batch, heads_kv, n_kv, d), (batch, heads_kv, n_kv, d))
    if dist == "heavy":
        nu = 3  # t = z / sqrt(chi2_nu / nu), chi2 as a sum of nu squared normals: no unseeded sampler needed
        q, k, v = (randn(*s) / (randn(nu, *s).square().sum(0) / nu).sqrt() for s in shapes)
    else:
        q, k, v = (randn(*s) for s in shapes)
    if dist == "outliers":
        for x in (k, v):
            off = 2.0 * randn(batch, heads_kv, 1, d)
            chans = torch.randperm(d, generator=g)[: min(4, d)]
            off[..., chans] += 20.0 * torch.sign(randn(len(chans)))
            x += off
    if dist == "peaked":
        q *= 2.0
    if dist == "zeros":
        for x in (q, k, v):
            x[:, :, ::7] = 0
            n_x = x.shape[2]
            blk = min(128, n_x // 4)  # a whole 128-token scale group once n >= 512; never the whole sequence
            start = min(128, n_x - blk)
            x[:, :, start:start + blk] = 0
        v[..., d // 2] = 0
    return tuple(t.to(device=device, dtype=dtype) for t in (q, k, v))
