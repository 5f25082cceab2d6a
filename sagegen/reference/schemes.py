"""Named emulation presets: the rows of `sagegen accuracy`. Importing this module does not import torch."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    module: str  # under sagegen.reference
    function: str
    options: dict = field(default_factory=dict)

    def run(self, q, k, v, **kw):
        fn = getattr(importlib.import_module(f"{__package__}.{self.module}"), self.function)
        return fn(q, k, v, **self.options, **kw)


SCHEMES = {
    s.name: s
    for s in (
        Scheme("sage1", "INT8 per-block Q/K (128/64), smoothed K; FP16 P.V, fp32 accumulation", "sage1",
               "sage1_attention"),
        Scheme("sage1-f16acc", "as sage1, fp16 P.V accumulator per 16-key k-step, flushed per block", "sage1",
               "sage1_attention", {"pv_accum": "fp16"}),
        Scheme("sage1-nosmooth", "as sage1 without K smoothing (shows what smoothing buys on channel outliers)",
               "sage1", "sage1_attention", {"smooth_k": False}),
        Scheme("sage2-i8-warp", "INT8 per-warp Q/K; FP8 P.V, FP22 inner + fp32 outer accumulation", "sage2",
               "sage2_attention", {"granularity": "warp"}),
        Scheme("sage2-i8-thread", "INT8 per-thread Q/K; FP8 P.V, FP22 inner + fp32 outer accumulation", "sage2",
               "sage2_attention", {"granularity": "thread"}),
        Scheme("sage2-i4-thread", "INT4 per-thread Q/K, smoothed Q; FP8 P.V, two-level accumulation", "sage2",
               "sage2_attention", {"qk_format": "int4", "granularity": "thread", "smooth_q": True}),
        Scheme("sage2-i8pv", "INT8 per-thread Q/K; INT8 P.V (P = round(255 p / p_b) per block row, V per "
               "channel), exact accumulation (attn_wgmma pv=i8, precision='balanced')", "sage2", "sage2_attention",
               {"granularity": "thread", "pv": "int8", "row_sum": "pv"}),
        Scheme("sage2pp-i8", "INT8 per-thread Q/K; FP8 P.V with fp16 accumulation, V scaled to +-2.25", "sage2pp",
               "sage2pp_attention"),
        Scheme("sage3-fp4", "NVFP4 Q/K/V/P (1x16 blocks, e4m3 scales), two-level P scaling", "sage3",
               "sage3_attention"),
    )
}
