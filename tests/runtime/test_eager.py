"""runtime/eager.py on the fake GPU: the direct path launches what the ops launch (same variants, grids and
scalars; its buffers carved from one workspace, each aligned and where the next kernel reads it), and hands every
call it must not take (dispatch modes, the profiler, misaligned or foreign inputs) to the ops."""
from __future__ import annotations

import pytest
import torch

import sagegen
from sagegen.runtime import api, eager, quant
from sagegen.runtime.workspace import ALIGN

from .test_api_plans import BF16, F16, OpRecorder, inputs
from .test_launch import DECLARED


def params_of(spec):
    return DECLARED[(spec.family, getattr(spec, "op", None))]


def named(entry) -> dict:
    """A recorded qkv launch's buffer addresses by name (quant.BUFFERS order, after the 25 input arguments)."""
    return dict(zip(quant.BUFFERS, entry[4][25:]))


def check_buffers(launches, q, k, v, out, lse, v_in_place: bool):
    """The addresses a call's launches pass: inputs as given, every buffer 16-byte aligned, the attention kernel
    reading what the qkv pass wrote, the output and LSE where attention() returns them. Two launches: the qkv pass
    took its statistics locally (quant.QuantPlan.local_stats), no partials."""
    qkv, attn = launches[-2:]
    assert qkv[4][0] == q.data_ptr() and qkv[4][4] == k.data_ptr() and qkv[4][8] == v.data_ptr()
    buf = named(qkv)
    if len(launches) == 3:
        stats = launches[0]
        assert stats[4][0] == k.data_ptr() and stats[4][4] == v.data_ptr()
        assert stats[4][-2:] == (buf["ksum"], buf["vamax"])
    else:
        assert buf["ksum"] == buf["vamax"] == 0
    assert all(a % 16 == 0 for a in buf.values())
    a = attn[4]
    assert a[:4] == (buf["q8"], buf["q_scale"], buf["k8"], buf["k_scale"])
    if attn[0].family == "attn_wgmma":
        assert a[4:6] == (buf["v"], buf["v_scale"]) and a[6] == out.data_ptr()
    else:
        assert a[4] == (v.data_ptr() if v_in_place else buf["v"]) and a[8] == out.data_ptr()
    lse_at = params_of(attn[0]).codes.rindex("p")  # the last pointer parameter
    assert a[lse_at] == (lse.data_ptr() if lse is not None else 0)


# (fixture, layout, B, Hq, Hkv, nq, nk, d, dtype, causal, return_lse, precision)
CASES = [("fake_gpu_direct", "HND", 2, 4, 2, 100, 130, 128, BF16, False, False, "fast"),
         ("fake_gpu_direct", "NHD", 1, 3, 1, 1, 517, 64, F16, True, True, "accurate"),  # V read in place
         ("fake_gpu_direct", "HND", 1, 2, 2, 257, 300, 72, F16, True, False, "accurate"),  # padded d: V copied
         ("fake_hopper_direct", "HND", 2, 4, 2, 100, 130, 128, BF16, True, True, "fast"),  # wgmma
         ("fake_hopper_direct", "NHD", 1, 8, 8, 128, 128, 64, F16, False, False, "fast"),
         ("fake_hopper_direct", "HND", 1, 2, 1, 1000, 17, 128, F16, False, True, "accurate"),  # FP16-P.V wgmma
         ("fake_hopper_direct", "HND", 1, 2, 1, 300, 17, 128, BF16, False, False, "fast")]  # local statistics


@pytest.mark.parametrize("fixture,layout,B,Hq,Hkv,nq,nk,d,dtype,causal,lse,precision", CASES)
def test_direct_path_launches_what_the_ops_launch(request, fixture, layout, B, Hq, Hkv, nq, nk, d, dtype, causal,
                                                  lse, precision):
    launches = request.getfixturevalue(fixture)
    q, k, v = inputs(B=B, Hq=Hq, Hkv=Hkv, nq=nq, nk=nk, d=d, dtype=dtype, layout=layout)
    # Short keys with the output in the inputs' dtype run attn_short (one launch; test_short_direct_path below):
    # the other output dtype keeps these cases on the two-launch path (the qkv pass's local statistics).
    out_dtype = (F16 if dtype == BF16 else BF16) if nk <= 128 else None
    kw = dict(tensor_layout=layout, is_causal=causal, return_lse=lse, precision=precision, sdpa_fallback=False,
              out_dtype=out_dtype)
    result = sagegen.attention(q, k, v, **kw)
    (plan,) = api._plans.values()
    assert plan.run == plan._run_direct
    direct = list(launches)
    launches.clear()
    reference = plan._run_kernel(q, k, v, plan.scale)  # the ops
    ops = list(launches)
    out, lse_t = result if lse else (result, None)
    ref_out, ref_lse = reference if lse else (reference, None)
    assert out.shape == ref_out.shape == q.shape and out.dtype == ref_out.dtype
    assert (lse_t is None and ref_lse is None) or lse_t.shape == ref_lse.shape == (B, Hq, nq)
    local = nk <= 128 and not lse  # one chunk of keys, no LSE: the qkv pass alone (quant.QuantPlan.local_stats)
    assert [e[0] for e in direct] == [e[0] for e in ops] and len(direct) == (2 if local else 3)
    for d_entry, o_entry in zip(direct, ops):
        spec, grid, block, smem, d_args = d_entry
        assert (grid, block, smem) == o_entry[1:4]
        for code, a, b in zip(params_of(spec).codes, d_args, o_entry[4]):
            assert (a == 0) == (b == 0) if code == "p" else (a == b and type(a) is type(b)), spec.name
    v_in_place = not named(direct[-2])["v"]
    check_buffers(direct, q, k, v, out, lse_t, v_in_place)
    check_buffers(ops, q, k, v, ref_out, ref_lse, v_in_place)
    # one workspace: the buffers sit at the plan's offsets from the first one
    offsets = plan.direct.quant.offsets
    buf = named(direct[-2])
    first = min(offsets, key=offsets.get)
    assert {n: buf[n] - buf[first] + offsets[first] for n in offsets} == offsets
    assert all(o % ALIGN == 0 for o in offsets.values())


SHORT_CASES = [("fake_gpu_direct", "HND", 2, 4, 2, 100, 128, 128, BF16, False, False, "fast"),
               ("fake_gpu_direct", "NHD", 1, 3, 1, 1, 17, 64, F16, True, True, "accurate"),
               ("fake_hopper_direct", "NHD", 1, 8, 8, 128, 128, 64, F16, False, False, "fast"),
               ("fake_hopper_direct", "HND", 1, 2, 1, 1000, 17, 128, F16, True, True, "accurate"),
               ("fake_hopper_direct", "HND", 1, 2, 1, 300, 100, 72, BF16, False, True, "fast")]


@pytest.mark.parametrize("fixture,layout,B,Hq,Hkv,nq,nk,d,dtype,causal,lse,precision", SHORT_CASES)
def test_short_direct_path(request, fixture, layout, B, Hq, Hkv, nq, nk, d, dtype, causal, lse, precision):
    """nk <= 128: one attn_short launch on either path, reading the caller's tensors where they are, writing the
    output (and the LSE, smoothing's shift included by the kernel) that attention() returns."""
    launches = request.getfixturevalue(fixture)
    q, k, v = inputs(B=B, Hq=Hq, Hkv=Hkv, nq=nq, nk=nk, d=d, dtype=dtype, layout=layout)
    kw = dict(tensor_layout=layout, is_causal=causal, return_lse=lse, precision=precision, sdpa_fallback=False)
    result = sagegen.attention(q, k, v, **kw)
    (plan,) = api._plans.values()
    assert plan.choice.spec.family == "attn_short" and plan.run == plan._run_short_direct
    direct = list(launches)
    launches.clear()
    reference = plan._run_short(q, k, v, plan.scale)  # the op
    ops = list(launches)
    out, lse_t = result if lse else (result, None)
    ref_out, ref_lse = reference if lse else (reference, None)
    assert out.shape == ref_out.shape == q.shape and out.dtype == ref_out.dtype == dtype
    assert (lse_t is None and ref_lse is None) or lse_t.shape == ref_lse.shape == (B, Hq, nq)
    assert len(direct) == len(ops) == 1
    (spec, grid, block, smem, args), (o_spec, *o_rest) = direct[0], ops[0]
    assert spec == o_spec and (grid, block, smem) == tuple(o_rest[:3])
    assert grid == (-(-nq // 128) * 128 // spec.m, Hq, B) and smem == spec.smem_bytes()
    codes = params_of(spec).codes
    for code, a, b in zip(codes, args, o_rest[3]):
        assert (a == 0) == (b == 0) if code == "p" else (a == b and type(a) is type(b))
    assert args[0] == q.data_ptr() and args[4] == k.data_ptr() and args[8] == v.data_ptr()
    assert args[12] == out.data_ptr() and args[16] == (lse_t.data_ptr() if lse else 0)
    assert args[17:22] == (Hq, Hkv, nq, nk, d)


def test_plans_without_a_direct_path(fake_gpu_direct):
    q, k, v = inputs()
    sagegen.attention(q.to("meta"), k.to("meta"), v.to("meta"))
    (plan,) = api._plans.values()
    assert plan.direct is None and plan.run == plan._run_kernel
    shape = api.inspect_inputs(q, k, v)
    spec = api.describe(q, k, v).spec
    assert eager.runner(shape, spec, "f16w") is None  # a V mode eager.py does not know keeps the ops
    assert isinstance(eager.runner(shape, spec, "f16"), eager.Direct)


def test_default_devices_take_the_ops(fake_gpu):
    """fake_gpu alone (CPU tensors, eager.DEVICE_TYPES = cuda): the plan keeps the ops, as the emulation tests
    (test_gpu_logic_on_cpu.py) rely on."""
    sagegen.attention(*inputs())
    (plan,) = api._plans.values()
    assert plan.direct is None


@pytest.fixture
def via_ops(fake_gpu_direct, monkeypatch):
    """Counts the calls that went to the ops."""
    calls = []
    real = api._kernel_forward
    monkeypatch.setattr(api, "_kernel_forward", lambda *a: calls.append(1) or real(*a))
    return calls


def test_dispatch_modes_see_the_ops(via_ops):
    q, k, v = inputs()
    sagegen.attention(q, k, v)
    assert via_ops == []
    with OpRecorder() as rec:
        sagegen.attention(q, k, v)
    assert [o for o in rec.ops if o.startswith("sagegen.")] == ["sagegen.quantize.default",
                                                                 "sagegen.attn_mma.default"]
    assert via_ops == [1]


def test_the_profiler_sees_the_ops(via_ops):
    q, k, v = inputs()
    sagegen.attention(q, k, v)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        sagegen.attention(q, k, v)
    assert via_ops == [1]
    assert any(e.name == "sagegen::quantize" for e in prof.events())


def misaligned_base(q):
    """q's values at a base address 2 bytes past a 16-byte boundary (row strides unchanged)."""
    flat = torch.empty(q.numel() + 1, dtype=q.dtype)[1:]
    return flat.view(q.shape).copy_(q)


def padded_rows(q):
    """q's values in rows of d + 4 elements (a row stride that is not a multiple of 8)."""
    wide = torch.zeros(*q.shape[:-1], q.shape[-1] + 4, dtype=q.dtype)
    wide[..., :q.shape[-1]] = q
    return wide[..., :q.shape[-1]]


@pytest.mark.parametrize("make", [misaligned_base, padded_rows])
def test_inputs_that_are_not_vector_ready_take_the_ops(via_ops, fake_gpu_direct, make):
    q, k, v = inputs()
    odd = make(q)
    assert odd.data_ptr() % 16 or odd.stride(2) % 8
    sagegen.attention(odd, k, v)
    assert via_ops == [1]
    qkv = [e for e in fake_gpu_direct if e[0].family == "quant" and e[0].op == "qkv"][0]
    assert qkv[4][0] % 16 == 0 and qkv[4][0] != odd.data_ptr()  # the ops' copy, 16-byte ready


def test_another_current_device_takes_the_ops(via_ops, monkeypatch):
    q, k, v = inputs()
    monkeypatch.setattr(eager, "current_device", lambda: 1)
    sagegen.attention(q, k, v)
    assert via_ops == [1]


def test_tensor_subclasses_take_the_ops(via_ops):
    class Marked(torch.Tensor):
        pass

    q, k, v = inputs()
    sagegen.attention(q.as_subclass(Marked), k, v)
    assert via_ops == [1]


def test_lse_is_corrected_by_the_qk_bias(fake_gpu_direct, monkeypatch):
    """The direct path adds scale * (q . mean k) to the kernel's LSE, as attn_mma.run_kernel does."""
    written = {}
    real_empty = torch.empty

    def empty(*shape, **kw):  # the LSE and the qk bias, in this order: fill them so the correction is visible
        t = real_empty(*shape, **kw)
        if kw.get("dtype") == torch.float32 and tuple(t.shape) == (2, 4, 100):
            t.fill_(1.0 if "lse" not in written else 2.0)
            written.setdefault("lse", t)
        return t

    monkeypatch.setattr(torch, "empty", empty)
    o, lse = sagegen.attention(*inputs(), return_lse=True, sm_scale=0.5)
    assert lse is written["lse"] and torch.all(lse == 1.0 + 0.5 * 2.0)


def test_short_op_rejects_inputs_its_variant_cannot_read(fake_gpu):
    """attention() validates before it gets here; a direct op call must not reinterpret another dtype's bits or
    drop head-dim channels silently."""
    from sagegen.variants import select

    bf16_d64 = next(s for s in select(["sm89"], "attn_short_*_x_bf16_*_d64_*"))
    q, k, v = inputs(B=1, Hq=2, Hkv=2, nq=64, nk=64, d=64, dtype=F16)
    with pytest.raises(TypeError, match="reads bf16 inputs"):
        torch.ops.sagegen.attn_short(q, k, v, bf16_d64.name, "HND", 0.125, 0, False)
    q, k, v = inputs(B=1, Hq=2, Hkv=2, nq=64, nk=64, d=128, dtype=BF16)
    with pytest.raises(ValueError, match="head dim <= 64"):
        torch.ops.sagegen.attn_short(q, k, v, bf16_d64.name, "HND", 0.125, 0, False)
    q, k, v = inputs(B=1, Hq=2, Hkv=2, nq=64, nk=200, d=64, dtype=BF16)
    with pytest.raises(ValueError, match="at most 128 keys"):
        torch.ops.sagegen.attn_short(q, k, v, bf16_d64.name, "HND", 0.125, 0, False)
    assert fake_gpu.attn() == []
