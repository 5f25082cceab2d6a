"""runtime/workspace.py and the quantization pass's workspace layout (quant.QuantPlan): every buffer aligned, inside
the allocation, and disjoint from the others."""
from __future__ import annotations

import itertools

import pytest

from sagegen.quant_layout import ScaleGroups
from sagegen.runtime import quant
from sagegen.runtime.workspace import ALIGN, carve


def assert_disjoint_and_aligned(offsets, sizes, total, align=ALIGN):
    spans = sorted((o, o + s) for o, s in zip(offsets, sizes))
    assert all(o % align == 0 for o in offsets)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))
    assert all(end <= total for _, end in spans) and total % align == 0


@pytest.mark.parametrize("sizes", [[1], [128, 128], [1, 2, 3, 1000, 5], [0, 7, 0], [4096, 12, 129, 127]])
def test_carve(sizes):
    offsets, total = carve(sizes)
    assert len(offsets) == len(sizes) and offsets[0] == 0
    assert_disjoint_and_aligned(offsets, sizes, total)
    assert total < sum(sizes) + ALIGN * len(sizes) + ALIGN  # no more than the padding


def test_carve_other_alignment_and_errors():
    assert carve([3, 3], align=16) == ((0, 16), 32)
    assert carve([]) == ((), 0)
    with pytest.raises(ValueError, match="power of two"):
        carve([1], align=24)
    with pytest.raises(ValueError, match=">= 0"):
        carve([-1])


SHAPES = [(1, 8, 8, 128, 128, 128), (2, 4, 2, 100, 130, 72), (1, 3, 1, 1, 517, 64), (3, 2, 2, 257, 300, 128)]
MODES = [("none", False), ("f16", False), ("e4m3t", False), ("e4m3w", True), ("i8w", True)]


@pytest.mark.parametrize("B,Hq,Hkv,nq,nk,d", SHAPES)
@pytest.mark.parametrize("v_mode,qk_image", MODES)
@pytest.mark.parametrize("with_qk_bias", [False, True])
def test_quant_workspace_layout(B, Hq, Hkv, nq, nk, d, v_mode, qk_image, with_qk_bias):
    p = quant.QuantPlan("sm90a", "bf16", B, Hq, Hkv, nq, nk, d, ScaleGroups(16, 8), ScaleGroups(128, 4), v_mode,
                        with_qk_bias, qk_image)
    inner = [n for n in p.buffers if n != "qk_bias"]
    assert set(p.offsets) == set(inner) and ("qk_bias" in p.buffers) == with_qk_bias
    assert p.local_stats == (nk <= 128 and not with_qk_bias)  # one chunk of keys: no statistics partials
    assert ("ksum" in p.offsets) != p.local_stats
    assert ("v" in p.offsets) == (v_mode != "none")
    assert ("vamax" in p.offsets) == (v_mode in ("e4m3t", "e4m3w", "i8w") and not p.local_stats)
    assert ("v_scale" in p.offsets) == (v_mode in ("e4m3t", "e4m3w", "i8w"))
    sizes = [quant._nbytes(*p.buffers[n]) for n in inner]
    assert_disjoint_and_aligned([p.offsets[n] for n in inner], sizes, p.workspace_bytes)
    assert p.workspace_bytes <= sum(sizes) + ALIGN * len(sizes)
    # the offsets follow quant.BUFFERS, the order QuantPlan.launch takes the addresses in
    ordered = [n for n in quant.BUFFERS if n in p.offsets]
    assert [p.offsets[n] for n in ordered] == sorted(p.offsets.values())


def test_quant_plan_rejects_unknown_v_modes():
    args = ("sm90a", "bf16", 1, 2, 2, 64, 64)
    with pytest.raises(ValueError, match="f8"):
        quant.QuantPlan(*args, 64, ScaleGroups(64), ScaleGroups(64), "f8", False, False)


def test_quant_plan_is_cached_per_shape():
    key = ("sm89", "f16", 1, 2, 2, 64, 64, 64, ScaleGroups(64), ScaleGroups(64), "f16", False, False)
    assert quant.quant_plan(*key) is quant.quant_plan(*key)
    assert all(a is not b for a, b in itertools.combinations(
        [quant.quant_plan(*key), quant.quant_plan(*key[:-2], True, False)], 2))
