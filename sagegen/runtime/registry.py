"""Which variant runs for a shape: a documented heuristic, or the autotuner's measurements persisted as JSON.

Key (``Key``): arch, input dtype, output dtype, padded head dim, causal, and power-of-two buckets of the query
length, the key length, batch*heads (how many CTAs the grid has) and the GQA ratio, plus the precision class.

Precision classes (``PRECISIONS``), each a set of families:
  * "fast": INT8 Q.K^T + FP8 P.V (SageAttention2) where the arch has such a family (sm90a: attn_wgmma pv=e4m3),
    else the "accurate" family: an arch without FP8 attention runs the more accurate kernel, never a less accurate
    one;
  * "balanced": INT8 Q.K^T + INT8 P.V (u8 P scaled per block row, INT8 V per channel, exact int32 block sums;
    rel-L1 ~0.015-0.025 on N(0,1)) where the arch has it (sm90a: attn_wgmma pv=i8), else the "accurate" family;
  * "accurate": INT8 Q.K^T + FP16 P.V with fp32 accumulation: attn_wgmma pv=f16 where the arch has it (sm90a;
    attn_mma variants stay candidates for the autotuner), attn_mma on every other arch (its fp16-accumulator
    variants run only when named through ``attention(variant=...)``).

Short keys (``nk`` <= 128, ``nq`` <= SHORT_MAX_QUERIES, output dtype = input dtype): the attn_short variants come
first among the kernels in every precision (the SDPA rule below still takes the calls SDPA can compute). They
quantize inside the kernel (one launch, no quantization buffers) and run FP16 P.V, at least as accurate as any
precision promises. H100 (scripts/short_bench.py, BENCHMARKS.md): host time per
call 40% lower than the two-launch path, GPU time 10-30% lower up to 2k queries.

Heuristic (``heuristic``), used whenever nothing was measured for the key:
  * candidates are the precision's variants for (arch, d, causal, out dtype), after attn_short's for short keys;
  * attn_wgmma (sm90a) before attn_mma; per-thread scales first (as below), then the (stages, overlap, ping-pong,
    row sum) order measured on the H100/H200 per (P.V format, d, causal) (``WGMMA_PREFERRED``, BENCHMARKS.md);
    FP8 P.V: at d=128 and d=64 three consumer warpgroups (m=192) one block at a time with the row sum on the
    MMA, two stages (d=64 non-causal: the loop in two halves, no mask branch before the first masked block); at
    d=256 (either P.V format) two consumer warpgroups one block at a time, two stages: the only schedules whose
    registers fit;
    FP16 P.V at d=128: three consumer warpgroups one block at a time, three stages, the row sum on the MMA;
  * scale granularity per-thread Q and K first (H100, N(0,1), d=128: rel-L1 0.010-0.011 against 0.011-0.012 for
    per-warp Q / per-block K and 0.012-0.013 for per-block, at the same speed), then warp/block, then block/block;
  * tiles in the order of the H100 measurements (d=128, bf16, N=8k-16k): (m=128, n=32, w=4) with 4, then 2
    stages (398-405 and 381-388 TOPS; 2026-11-26, seventh session), (64, 64, 4, 2) ~362, (128, 64, 8, 2) ~358;
    anything else after them (larger tiles first). The 4-stage tile goes last where two of its CTAs would not
    fit the SM's shared memory (d=128 on sm86 / sm89 / sm120a): the registers allow two per SM;
  * when the grid of 128-row tiles would not fill the GPU once (B*Hq*ceil(Nq/128) < SM count), the 64-row tile
    goes first: twice the CTAs beats the larger tile's reuse on a half-empty GPU. The warpgroup family likewise
    puts its two-warpgroup (128-row) schedules before the 192-row ones there (a rule, not measured).
  * torch SDPA (cuDNN) where it was measured faster than every sagegen kernel and computes the same thing
    (``SDPA_FASTER``: (arch, precision) -> (d, causal, largest key-length bucket); H100, B*H = 128,
    BENCHMARKS.md 2026-11-26, after the quantization pass reached ~80% of copy bandwidth: "fast" ties or loses up
    to 2k keys at d=128 (4k causal) and 4k at d=64 (8k causal); "accurate" up to 4k (8k at d=64 causal); at
    d=256 "fast" up to 2k (4k causal), "accurate" up to 4k (8k causal)); with GQA (``SDPA_FASTER_GQA``, measured
    with 4 query heads per KV head, which quantize a quarter of the K and V) up to 2k keys, 4k causal (fast at
    d=128: 2k; balanced at d=64 causal: 8k), unless SDPA is not allowed (SAGEGEN_FORCE_KERNEL=1,
    ``sdpa_fallback=False``) or cannot compute the call (bottom-right causal with 1 < Nq != Nk; another output
    dtype is a cast of SDPA's). The limits apply to min(Nq, Nk): short queries over long keys go to cuDNN too.
    The result is then exact attention: never slower than cuDNN where it was measured, and more accurate.

Autotuner (``autotune``, or ``SAGEGEN_AUTOTUNE=1`` which makes ``attention()`` tune each new key once): times
every candidate end to end (quantization + kernel) with CUDA events (median of ``reps`` runs after ``warmup``), and
torch SDPA's flash and cuDNN backends where they can compute the same thing (causal only with SDPA's top-left
mask or none: api.sdpa_eligible). Results go to ``<cache root>/autotune.json`` (``$SAGEGEN_CACHE_DIR`` or
``~/.cache/sagegen``), per environment (GPU name, sagegen / torch / NVRTC versions, kernel fingerprint) and key,
one timing per candidate: adding a candidate times only that one (``$SAGEGEN_AUTOTUNE_FILE`` names another file).
Writes are atomic (temp file + rename) under a file lock and merge with what other processes wrote. A corrupt file
is ignored with a warning (and replaced by the next write). Tuning never happens during CUDA-graph capture or
torch.compile tracing: those use what is stored, else the heuristic. A candidate that fails to build or run, or an
SDPA backend whose output disagrees with the kernel's, is stored as an error and not retried (``retune=True``
times everything again).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..variants import attn_mma, attn_short, attn_wgmma
from ..variants.attn_mma import AttnMmaSpec
from ..variants.attn_short import AttnShortSpec
from ..variants.attn_wgmma import AttnWgmmaSpec

PRECISIONS = ("fast", "balanced", "accurate")
DEFAULT_PRECISION = "fast"
SDPA_BACKENDS = ("flash", "cudnn")
SDPA_PREFIX = "sdpa:"
TABLE_FORMAT = 1
GQA_BUCKET_MAX = 16

# (m, n, w, s) in the order measured best on the H100 (see the module docstring); b = 1 preferred among equals.
PREFERRED_TILES = ((128, 32, 4, 4), (128, 32, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2))
SMALL_GRID_TILES = ((64, 64, 4, 2), (128, 32, 4, 4), (128, 32, 4, 2), (128, 64, 8, 2))
# CTAs per SM the registers leave the listed 4-warp tiles (~255 registers x 128 threads): more stages are preferred
# only where the SM's shared memory still holds that many CTAs (sm86/sm89/sm120a at d=128 keep two stages).
MMA_CTAS_PER_SM = 2
GRANULARITY_ORDER = (("thread", "thread"), ("warp", "block"), ("block", "block"))
# attn_short (m, n, w), best first: the 8-warp tile ran as fast or faster than the 4-warp ones on every shape
# measured, small grids included (H100, scripts/short_bench.py --tiles, BENCHMARKS.md): the prologue quantizing
# 128 keys is latency-bound, and twice the warps share it.
SHORT_TILES = ((128, 64, 8), (64, 64, 4), (64, 128, 4))
# attn_short serves query lengths up to this bucket: every CTA quantizes all keys again, so with many query tiles
# the two-launch path catches up (H100, nk=77, B=2, H=16, GPU us: d=128 nq=2048 51 vs 55, nq=4096 103 vs 90;
# d=64 nq=4096 57 vs 57).
SHORT_MAX_QUERIES = 2048
# Where torch SDPA's cuDNN backend beat the registry's kernel end to end (NVIDIA H100, B=4, H=32, bf16; e2e vs
# cuDNN in BENCHMARKS.md): (arch, precision) -> (d, causal) -> the largest key-length bucket where cuDNN won.
EVERY_LENGTH = math.inf
SDPA_FASTER = {
    # cuDNN where the kernel's mean end-to-end ratio over two same-call-pair H100 runs per precision (2026-11-26,
    # after the quantization pass reached ~80% of copy bandwidth) was below 1.04 (a tie goes to cuDNN: it is
    # exact). fast: up to 2k keys at d=128 (4k causal), 4k at d=64 (8k causal); accurate (FP16 P.V): up to 4k,
    # 8k at d=64 causal.
    # d=256 (eighth session): fast (FP8 P.V in channel halves) up to 2k keys (4k causal), accurate (FP16 P.V) up to
    # 4k (8k causal): where the quantization pass is a large share of the call.
    ("sm90a", "fast"): {(128, False): 2048, (128, True): 4096, (64, False): 4096, (64, True): 8192,
                        (256, False): 2048, (256, True): 4096},
    ("sm90a", "accurate"): {(128, False): 4096, (128, True): 4096, (64, False): 4096, (64, True): 8192,
                            (256, False): 4096, (256, True): 8192},
    # balanced (INT8 P.V, eleventh session, two same-call runs, H100, BENCHMARKS.md; the same rule): cuDNN up to
    # 4k keys at d=128 causal (e2e / cuDNN 0.86, 0.81) and at d=64 (0.95, 0.96), up to 8k at d=64 causal (0.89,
    # 1.00); the kernel from 4k at d=128 (1.05, 1.03: mean 1.04), 8k at d=128 causal and d=64, 16k at d=64 causal.
    # d=256 runs the accurate kernels (no INT8 P.V there), so the accurate limits.
    ("sm90a", "balanced"): {(128, False): 2048, (128, True): 4096, (64, False): 4096, (64, True): 8192,
                            (256, False): 4096, (256, True): 8192},
}
# The same rule for GQA calls (Hkv < Hq), from two same-call-pair runs with Hq = 32, Hkv = 8 (twelfth session,
# H100, BENCHMARKS.md): the kernel quantizes a quarter of the K and V there, so it overtakes cuDNN at shorter keys
# than with Hq = Hkv. Used for every group size: one fast run each with 2 and 8 query heads per KV head put every
# limit at the same length (the only cell between: d=128 causal 4k with 2, a 1.03 tie that runs the kernel).
SDPA_FASTER_GQA = {
    ("sm90a", "fast"): {(128, False): 2048, (128, True): 2048, (64, False): 2048, (64, True): 4096,
                        (256, False): 2048, (256, True): 4096},
    ("sm90a", "accurate"): {(128, False): 2048, (128, True): 4096, (64, False): 2048, (64, True): 4096,
                            (256, False): 2048, (256, True): 4096},
    ("sm90a", "balanced"): {(128, False): 2048, (128, True): 4096, (64, False): 2048, (64, True): 8192,
                            (256, False): 2048, (256, True): 4096},
}

# (m, s, overlap, pingpong, rowsum) per (P.V format, head dim, causal), best first (NVIDIA H100 / H200, B=4, H=32,
# N=8k-32k; BENCHMARKS.md ablation). e4m3 d=128: three consumer warpgroups one block at a time (m=192, two stages,
# MMA row sum; the overlapped schedule does not fit their registers) beat every two-warpgroup schedule at 4k-32k,
# causal or not (H100, fifth session: 855-960 kernel TOPS non-causal against 824-914, 715-908 causal against
# 704-862): the third warpgroup's MMAs fill the tensor cores while the other two run their softmax. Then the MMA
# row sum ties the FADD sums, ping-pong helps causal. d=64: the MMA row sum wins (+4-10%); three warpgroups do not
# fit the overlapped schedule there and one block at a time ties at best. f16 (H100, scripts/wgmma_check.py --time):
# ping-pong wins everywhere (d=128: 709-717 kernel TOPS with 3 stages against 641-663 without); at d=64 three consumer
# warpgroups with ping-pong (m=192) beat two by 13-17% (536-574 against 473-492 non-causal, 8k-32k).
_SEQ_MMA_192 = (192, 2, False, False, "mma")
_SEQ3_MMA_192 = (192, 3, False, False, "mma")
_SEQ_FMA_2 = (128, 2, False, False, "fma")
_SEQ_FMA_3 = (128, 3, False, False, "fma")
_FREE_MMA = (128, 3, True, False, "mma")
_FREE_FMA = (128, 3, True, False, "fma")
_PP_MMA = (128, 3, True, True, "mma")
_PP_FMA = (128, 3, True, True, "fma")
_PP4_FMA = (128, 4, True, True, "fma")
_PP3_FMA_192 = (192, 3, True, True, "fma")
_PP4_FMA_192 = (192, 4, True, True, "fma")
_SEQ_DP4A_192 = (192, 2, False, False, "dp4a")
_SEQ3_DP4A_192 = (192, 3, False, False, "dp4a")
_SEQ_DP4A_2 = (128, 2, False, False, "dp4a")
_SEQ_DP4A_3 = (128, 3, False, False, "dp4a")
WGMMA_PREFERRED = {
    ("e4m3", 128, False): (_SEQ_MMA_192, _FREE_MMA, _PP_FMA, _FREE_FMA, _PP_MMA, _PP4_FMA),
    ("e4m3", 128, True): (_SEQ_MMA_192, _PP_FMA, _FREE_MMA, _PP_MMA, _PP4_FMA, _FREE_FMA),
    # e4m3 d=64 (ninth session, after the integer row max): three warpgroups one block at a time with the MMA row
    # sum, the loop in two halves non-causal: 583-675 kernel TOPS at 4k-32k against 544-620 for the overlapped
    # pair; causal (no split) 552-624 against 527-591 at 8k-32k (H100, medians of three same-call runs).
    ("e4m3", 64, False): (_SEQ_MMA_192, _SEQ3_MMA_192, _FREE_MMA, _FREE_FMA, _PP_MMA, _PP_FMA),
    ("e4m3", 64, True): (_SEQ_MMA_192, _SEQ3_MMA_192, _FREE_MMA, _FREE_FMA, _PP_MMA, _PP_FMA),
    # f16 d=128 (ninth session): the MMA row sum (a 16 KB slab of ones after V) frees the softmax of its FADDs, and
    # three warpgroups one block at a time then beat two overlapped ones from 8k keys: 780-797 kernel TOPS against
    # 749-765, causal 672-766 against 651-705 (H100, median of three same-call runs; 4k: within 2%).
    ("f16", 128, False): (_SEQ3_MMA_192, _SEQ_MMA_192, _PP_FMA, _PP4_FMA, (128, 4, True, False, "fma"), _FREE_FMA),
    ("f16", 128, True): (_SEQ3_MMA_192, _SEQ_MMA_192, _PP_FMA, _FREE_FMA, _PP4_FMA),
    ("f16", 64, False): (_PP3_FMA_192, _PP4_FMA_192, _PP4_FMA, _PP_FMA),
    ("f16", 64, True): (_PP3_FMA_192, _PP4_FMA_192, _PP_FMA, _PP4_FMA),
    # d=256: one block at a time (O is 128 registers per thread). e4m3 (P.V in two channel halves): two stages beat
    # three by 2-4% non-causal and tie causal (H100, eighth session); f16: the one schedule that fits (96 KB stages)
    ("e4m3", 256, False): (_SEQ_FMA_2, _SEQ_FMA_3),
    ("e4m3", 256, True): (_SEQ_FMA_2, _SEQ_FMA_3),
    ("f16", 256, False): (_SEQ_FMA_2,),
    ("f16", 256, True): (_SEQ_FMA_2,),
    # i8 (INT8 P.V, eleventh session, H100, probes in one call): one block at a time only (its registers); three
    # consumer warpgroups with two stages first: d=128 906 / 929 kernel TOPS at 8k / 16k against 898 / 895 with
    # three stages and 751 / 768 with two warpgroups; d=64 531 / 543 against 521 / 535 (three stages, m=192) and
    # 445 / 453 (m=128, three stages)
    ("i8", 128, False): (_SEQ_DP4A_192, _SEQ3_DP4A_192, _SEQ_DP4A_2, _SEQ_DP4A_3),
    ("i8", 128, True): (_SEQ_DP4A_192, _SEQ3_DP4A_192, _SEQ_DP4A_2, _SEQ_DP4A_3),
    ("i8", 64, False): (_SEQ_DP4A_192, _SEQ3_DP4A_192, _SEQ_DP4A_2, _SEQ_DP4A_3),
    ("i8", 64, True): (_SEQ_DP4A_192, _SEQ3_DP4A_192, _SEQ_DP4A_2, _SEQ_DP4A_3),
}

def bucket(n: int) -> int:
    """The power of two >= n (1 for n <= 1)."""
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class Key:
    arch: str  # canonical arch name, e.g. sm90a
    dtype: str  # input dtype tag: f16 / bf16
    out: str  # output dtype tag: f16 / bf16
    d: int  # padded head dim (64 or 128)
    causal: bool
    nq: int  # bucket(query length)
    nk: int  # bucket(key length)
    bh: int  # bucket(batch * query heads)
    gqa: int  # bucket(Hq // Hkv), capped at GQA_BUCKET_MAX
    precision: str = DEFAULT_PRECISION

    @property
    def tag(self) -> str:
        return (f"{self.arch}|x={self.dtype}|o={self.out}|d{self.d}|{'causal' if self.causal else 'full'}"
                f"|nq{self.nq}|nk{self.nk}|bh{self.bh}|g{self.gqa}|{self.precision}")


def make_key(*, arch: str, dtype: str, out: str, d: int, causal: bool, nq: int, nk: int, batch_heads: int,
             gqa: int = 1, precision: str = DEFAULT_PRECISION) -> Key:
    """A Key from exact sizes (they are bucketed here). ``d`` is the padded head dim."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return Key(arch, dtype, out, int(d), bool(causal), bucket(nq), bucket(nk), bucket(batch_heads),
               min(bucket(gqa), GQA_BUCKET_MAX), precision)


@dataclass(frozen=True)
class Choice:
    """What to run: a sagegen kernel (``spec``) or torch SDPA (``backend`` flash / cudnn)."""

    kind: str  # "kernel" or "sdpa"
    spec: AttnMmaSpec | AttnWgmmaSpec | AttnShortSpec | None = None
    backend: str | None = None
    source: str = "heuristic"  # heuristic, tuned, forced

    @property
    def name(self) -> str:
        return self.spec.name if self.kind == "kernel" else SDPA_PREFIX + self.backend


# --- candidates and the heuristic -------------------------------------------------------------------------------
@functools.cache
def _variants(arch: str) -> tuple:
    return tuple(attn_mma.enumerate_variants(arch)) + tuple(attn_wgmma.enumerate_variants(arch))


@functools.cache
def _short_variants(arch: str) -> tuple:
    return tuple(attn_short.enumerate_variants(arch))


@functools.cache
def _candidates(arch: str, d: int, causal: bool, out: str, precision: str, dtype: str = "",
                short: bool = False) -> tuple:
    """The precision's variants for (arch, d, causal, out); with ``short`` (every key fits attn_short) the
    attn_short variants reading ``dtype`` come first (FP16 P.V: at least as accurate as either precision asks)."""
    shorts = tuple(s for s in _short_variants(arch) if s.d == d and s.causal == causal and s.o == out
                   and s.x == dtype) if short else ()
    fits = [s for s in _variants(arch) if s.d == d and s.causal == causal and s.o == out]
    own = {"fast": "e4m3", "balanced": "i8"}.get(precision)
    mine = [s for s in fits if isinstance(s, AttnWgmmaSpec) and s.pv == own]
    if mine:  # else the accurate family: never a less accurate kernel than the precision promises
        return shorts + tuple(mine)
    return shorts + tuple(s for s in fits if (isinstance(s, AttnWgmmaSpec) and s.pv == "f16")
                          or (isinstance(s, AttnMmaSpec) and s.acc == "f32"))


def _key_candidates(key: Key) -> tuple:
    short = key.nk <= attn_short.MAX_KEYS and key.nq <= SHORT_MAX_QUERIES
    return _candidates(key.arch, key.d, key.causal, key.out, key.precision, key.dtype, short)


def candidates(key: Key, *, include_sdpa: bool = False) -> list[str]:
    """Names of the variants the autotuner times for ``key`` (plus ``sdpa:flash`` / ``sdpa:cudnn`` if asked)."""
    names = [s.name for s in _key_candidates(key)]
    return names + ([SDPA_PREFIX + b for b in SDPA_BACKENDS] if include_sdpa else [])


def candidate_specs(key: Key) -> list:
    return list(_key_candidates(key))


def _rank(spec, tiles, small_grid: bool) -> tuple:
    g = GRANULARITY_ORDER.index((spec.qg, spec.kg)) if (spec.qg, spec.kg) in GRANULARITY_ORDER else 99
    if isinstance(spec, AttnShortSpec):  # one launch instead of two wherever every key fits it
        tile = (spec.m, spec.n, spec.w)
        return (-1, g, SHORT_TILES.index(tile) if tile in SHORT_TILES else len(SHORT_TILES), spec.name)
    if isinstance(spec, AttnWgmmaSpec):  # the warpgroup family first wherever it is a candidate
        order = WGMMA_PREFERRED.get((spec.pv, spec.d, spec.causal), ())
        if small_grid:  # a grid that does not fill the GPU wants more, smaller CTAs: two warpgroups first
            order = sorted(order, key=lambda c: c[0] != 128)  # stable: the measured order within each
        cfg = (spec.m, spec.s, spec.overlap, spec.pingpong, spec.rowsum)
        return (0, g, order.index(cfg) if cfg in order else len(order), spec.name)
    tile = (spec.m, spec.n, spec.w, spec.s)
    t = tiles.index(tile) if tile in tiles else len(tiles)
    if spec.s > 2 and MMA_CTAS_PER_SM * spec.smem_bytes() > spec.target.smem_per_sm:
        t = len(tiles)  # its extra stages would cost a CTA per SM
    # unlisted tiles: larger tiles first (more reuse), then fewer stages and warps; name last for determinism
    return (1, t, g, spec.b, -spec.m * spec.n, spec.s, spec.w, spec.name)


@functools.cache
def _heuristic(key: Key, small_grid: bool, family: str | None):
    cands = [s for s in _key_candidates(key) if family is None or s.family == family]
    if not cands:
        raise ValueError(f"no attention variant for {key.tag}" + (f" in family {family}" if family else ""))
    tiles = SMALL_GRID_TILES if small_grid else PREFERRED_TILES
    return min(cands, key=lambda s: _rank(s, tiles, small_grid))


def heuristic(key: Key, *, sm_count: int | None = None, family: str | None = None):
    """The variant the rule in the module docstring picks (``sm_count`` None: assume a full grid); ``family``:
    only among that family's candidates (e.g. attn_mma for "accurate" on sm90a, for tools and tests)."""
    small = bool(sm_count) and key.bh * math.ceil(key.nq / 128) < sm_count
    return _heuristic(key, small, family)


# --- the persisted table ----------------------------------------------------------------------------------------
def table_path() -> Path:
    """``$SAGEGEN_AUTOTUNE_FILE`` if set (e.g. a table shipped with a deployment), else
    ``<cache root>/autotune.json``."""
    env = os.environ.get("SAGEGEN_AUTOTUNE_FILE")
    if env:
        return Path(env).expanduser()
    from ..toolchain import cache_root

    return cache_root() / "autotune.json"


_tables: dict[str, dict] = {}  # path -> parsed table, loaded once per process and path
_listeners: list = []  # called after the table changes (api.py drops its per-shape plans)


def on_change(fn) -> None:
    if fn not in _listeners:
        _listeners.append(fn)


def _notify() -> None:
    for fn in list(_listeners):
        fn()


def _empty_table() -> dict:
    return {"format": TABLE_FORMAT, "environments": {}}


def _read(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return _empty_table()
    except OSError as e:
        warnings.warn(f"sagegen: cannot read the autotune table {path} ({e}); ignoring it", RuntimeWarning,
                      stacklevel=3)
        return _empty_table()
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT or \
                not isinstance(data.get("environments"), dict):
            raise ValueError(f"not a format-{TABLE_FORMAT} sagegen autotune table")
    except ValueError as e:
        warnings.warn(f"sagegen: ignoring the corrupt autotune table {path} ({e}); it is rewritten by the next "
                      f"autotune run", RuntimeWarning, stacklevel=3)
        return _empty_table()
    return data


def load_table(path: Path | None = None, *, reload: bool = False) -> dict:
    path = Path(path) if path is not None else table_path()
    k = str(path)
    if reload or k not in _tables:
        _tables[k] = _read(path)
    return _tables[k]


def stored(env: str, key: Key, path: Path | None = None) -> dict:
    """``{"us": {name: median_us}, "errors": {name: text}}`` stored for (environment, key); empty dicts if none."""
    entry = load_table(path).get("environments", {}).get(env, {}).get("shapes", {}).get(key.tag, {})
    us = entry.get("us") if isinstance(entry.get("us"), dict) else {}
    errors = entry.get("errors") if isinstance(entry.get("errors"), dict) else {}
    return {"us": us, "errors": errors}


def record(env: str, env_meta: dict, key: Key, us: dict, errors: dict, path: Path | None = None) -> None:
    """Merge timings into the table on disk (re-read under the lock, so other processes' entries survive)."""
    from filelock import FileLock

    path = Path(path) if path is not None else table_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        data = _read(path)
        env_entry = data["environments"].setdefault(env, {})
        env_entry.update({k: v for k, v in env_meta.items()})
        shapes = env_entry.setdefault("shapes", {})
        if not isinstance(shapes, dict):
            shapes = env_entry["shapes"] = {}
        entry = shapes.setdefault(key.tag, {})
        entry.setdefault("us", {})
        entry.setdefault("errors", {})
        for name, t in us.items():
            entry["us"][name] = float(t)
            entry["errors"].pop(name, None)
        for name, text in errors.items():
            entry["errors"][name] = str(text)[:500]
            entry["us"].pop(name, None)
        entry["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        _atomic_write_json(path, data)
    _tables[str(path)] = data
    _notify()


def _atomic_write_json(path: Path, data: dict) -> None:
    from ..cache import atomic_write

    atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode())


@functools.cache
def environment(device_index: int) -> tuple[str, dict]:
    """(id, fields) of what a timing depends on besides the shape: GPU, versions, the kernels' fingerprint."""
    import torch

    from .. import __version__
    from ..toolchain import fingerprint, nvrtc_version
    from .device import device_name

    meta = {"gpu": device_name(device_index), "sagegen": __version__, "torch": torch.__version__,
            "nvrtc": nvrtc_version(), "kernels": fingerprint()[:16]}
    return " | ".join(f"{k}={v}" for k, v in meta.items()), meta


# --- choosing ---------------------------------------------------------------------------------------------------
def choose(key: Key, *, env: str | None = None, sm_count: int | None = None, sdpa_ok: bool = False,
           allow_sdpa: bool = True, path: Path | None = None) -> Choice:
    """The fastest stored candidate for (env, key) that may run here, else the heuristic.

    ``sdpa_ok``: torch SDPA computes what was asked (see autotune); ``allow_sdpa`` False (SAGEGEN_FORCE_KERNEL=1
    or attention(sdpa_fallback=False)) ignores SDPA timings and the SDPA_FASTER rule. ``env`` None: no stored
    timings (heuristic only).
    """
    if env is not None:
        timed = stored(env, key, path)["us"]
        valid = {s.name: s for s in candidate_specs(key)}
        best_name, best_us = None, math.inf
        for name, us in timed.items():
            if not isinstance(us, (int, float)) or not us < best_us:
                continue
            if name.startswith(SDPA_PREFIX):
                if not (sdpa_ok and allow_sdpa and name[len(SDPA_PREFIX):] in SDPA_BACKENDS):
                    continue
            elif name not in valid:
                continue  # a variant that no longer exists (enumeration changed)
            best_name, best_us = name, us
        if best_name is not None:
            if best_name.startswith(SDPA_PREFIX):
                return Choice("sdpa", backend=best_name[len(SDPA_PREFIX):], source="tuned")
            return Choice("kernel", spec=valid[best_name], source="tuned")
    if sdpa_ok and allow_sdpa and sdpa_measured_faster(key):
        return Choice("sdpa", backend="cudnn", source="heuristic")
    return Choice("kernel", spec=heuristic(key, sm_count=sm_count), source="heuristic")


def sdpa_measured_faster(key: Key) -> bool:
    """Whether SDPA_FASTER (SDPA_FASTER_GQA for GQA keys) says cuDNN beat the kernels for this key's arch, precision,
    head dim, causality and length. The limits were measured with Nq = Nk; they apply to the shorter side, because
    the kernel's gain grows with Nq * Nk while its quantization pass grows with Nq and Nk: a grid with Nq != Nk (256
    to 8k queries over 1k to 32k keys, H100, BENCHMARKS.md twelfth session) has the kernel ahead only where both
    sides exceed the limit, and up to 5x behind cuDNN for short queries over long keys."""
    table = SDPA_FASTER_GQA if key.gqa > 1 else SDPA_FASTER
    limit = table.get((key.arch, key.precision), {}).get((key.d, key.causal))
    return limit is not None and min(key.nq, key.nk) <= limit


def autotune_enabled() -> bool:
    return os.environ.get("SAGEGEN_AUTOTUNE", "").strip().lower() in ("1", "true", "yes", "on")


def force_kernel() -> bool:
    return os.environ.get("SAGEGEN_FORCE_KERNEL", "").strip().lower() in ("1", "true", "yes", "on")


# --- the autotuner ----------------------------------------------------------------------------------------------
def time_us(fn, *, warmup: int = 3, reps: int = 10) -> float:
    """Median of ``reps`` CUDA-event timings of ``fn()`` on the current stream, after ``warmup`` calls."""
    import torch

    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    events[-1][1].synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) * 1e3


def _is_capturing(device_index: int) -> bool:
    import torch

    with torch.cuda.device(device_index):
        return torch.cuda.is_current_stream_capturing()


def autotune(q, k, v, *, is_causal: bool = False, causal_alignment: str = "bottom_right",
             tensor_layout: str = "HND", out_dtype=None, precision: str = DEFAULT_PRECISION, return_lse: bool = False,
             include_sdpa: bool = True, retune: bool = False, warmup: int = 3, reps: int = 10,
             path: Path | None = None, jobs: int | None = None) -> Choice:
    """Time the candidates for these inputs' key that have no stored timing (all of them with ``retune``), store
    the timings, and return the choice ``attention()`` will now make (SDPA allowed unless SAGEGEN_FORCE_KERNEL).

    During CUDA-graph capture or torch.compile tracing nothing is timed: the stored/heuristic choice is returned.
    """
    import torch

    from . import api

    shape = api.inspect_inputs(q, k, v, is_causal=is_causal, causal_alignment=causal_alignment,
                               tensor_layout=tensor_layout, return_lse=return_lse, precision=precision,
                               out_dtype=out_dtype)
    if shape.device.type == "meta":
        raise ValueError("autotune needs CUDA tensors with data, got meta tensors")
    idx = shape.device.index
    key = shape.key()
    env, meta = environment(idx)
    sm_count = api.sm_count(idx)
    sdpa_ok = api.sdpa_eligible(shape, q, k, v)
    allow = not force_kernel()
    if torch.compiler.is_compiling() or _is_capturing(idx):
        return choose(key, env=env, sm_count=sm_count, sdpa_ok=sdpa_ok, allow_sdpa=allow, path=path)

    have = stored(env, key, path)
    done = set() if retune else set(have["us"]) | set(have["errors"])
    specs = [s for s in candidate_specs(key) if s.name not in done]
    backends = [b for b in SDPA_BACKENDS if include_sdpa and SDPA_PREFIX + b not in done
                and api.sdpa_supported(b, shape, q, k, v)]
    if not specs and not backends:
        return choose(key, env=env, sm_count=sm_count, sdpa_ok=sdpa_ok, allow_sdpa=allow, path=path)

    us, errors = {}, {}
    if specs:
        from ..build import build
        from ..render import default_out_dir

        built = build(specs, out_dir=default_out_dir(), jobs=jobs or min(len(specs), os.cpu_count() or 1),
                      progress=False)
        errors.update(built.failed)
        specs = [s for s in specs if s.name not in built.failed]
    scale = 1.0 / math.sqrt(shape.d)
    reference = None  # a kernel's output: SDPA candidates must agree with it (guards against a wrong backend)
    with (torch.cuda.device(idx) if idx is not None else contextlib.nullcontext()):
        for spec in specs:
            plan = api.Plan(shape, Choice("kernel", spec=spec, source="forced"))
            try:
                out = plan.run(q, k, v, scale)
                if reference is None:
                    reference = out[0] if isinstance(out, tuple) else out
                us[spec.name] = time_us(lambda: plan.run(q, k, v, scale), warmup=warmup, reps=reps)
            except Exception as e:  # one broken candidate must not stop the others
                errors[spec.name] = f"{type(e).__name__}: {e}"
        if backends and reference is None:  # kernels were timed earlier: run the one we would use
            kernel = choose(key, env=env, sm_count=sm_count, sdpa_ok=False, path=path)
            out = api.Plan(shape, kernel).run(q, k, v, scale)
            reference = out[0] if isinstance(out, tuple) else out
        for b in backends:
            name = SDPA_PREFIX + b
            plan = api.Plan(shape, Choice("sdpa", backend=b, source="forced"))
            try:
                out = plan.run(q, k, v, scale)
                out = out[0] if isinstance(out, tuple) else out  # (o, lse)
                if reference is not None:
                    err = ((out.float() - reference.float()).abs().sum() / reference.float().abs().sum()
                           .clamp_min(1e-30)).item()
                    if not err < 0.1:
                        raise RuntimeError(f"SDPA {b} disagrees with the sagegen kernel (rel-L1 {err:.3g})")
                us[name] = time_us(lambda: plan.run(q, k, v, scale), warmup=warmup, reps=reps)
            except Exception as e:
                errors[name] = f"{type(e).__name__}: {e}"
    record(env, meta, key, us, errors, path)
    return choose(key, env=env, sm_count=sm_count, sdpa_ok=sdpa_ok, allow_sdpa=allow, path=path)


def clear_caches() -> None:
    """Forget loaded tables and per-process decisions (tests; after editing the JSON by hand)."""
    _tables.clear()
    _notify()
