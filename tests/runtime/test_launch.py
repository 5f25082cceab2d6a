"""runtime/launch.py on the CPU: the declared parameter lists against every rendered kernel, the packing the driver
reads (sizes, values, one buffer per thread), and launch() with cuLaunchKernel stubbed (arguments as the driver
sees them, errors naming the variant)."""
from __future__ import annotations

import ctypes
import re
import struct
import threading

import pytest

from sagegen.arch import ARCHES
from sagegen.render import render
from sagegen.runtime import attn_mma, attn_short, attn_wgmma, launch, quant
from sagegen.variants import select

# The launch sites' declarations, by (family, op) of the variants they launch.
DECLARED = {("quant", "stats"): quant.STATS_PARAMS, ("quant", "qkv"): quant.QKV_PARAMS,
            ("attn_mma", None): attn_mma.PARAMS, ("attn_wgmma", None): attn_wgmma.PARAMS,
            ("attn_short", None): attn_short.PARAMS}
READ_BACK = {"p": ctypes.c_uint64, "q": ctypes.c_int64, "i": ctypes.c_int32, "f": ctypes.c_float}


def c_parameter_types(spec) -> list[str]:
    signature = re.search(rf"{spec.name}\((.*?)\)\s*{{", render(spec), re.S).group(1)
    return [re.fullmatch(r"(.*?)\s*\b\w+", p.strip()).group(1) for p in signature.split(",")]


def code_of(ctype: str) -> str:
    if "*" in ctype:
        return "p"
    return {v: k for k, v in launch.C_TYPES.items()}[ctype]


def test_every_rendered_kernel_matches_its_declared_parameters():
    """Every variant of every arch: the parameter count and C types equal the Params its launch site packs with
    (a mismatch would make the driver read past the argument array, or read ints as pointers)."""
    specs = select(list(ARCHES), "*")
    assert {(s.family, getattr(s, "op", None)) for s in specs} == set(DECLARED)
    for spec in specs:
        params = DECLARED[(spec.family, getattr(spec, "op", None))]
        codes = "".join(code_of(t) for t in c_parameter_types(spec))
        assert codes == params.codes, spec.name


def sample_args(params: launch.Params) -> list:
    values = {"p": lambda i: 0x7F00_0000_0000 + 256 * i, "q": lambda i: -(1 << 40) + i, "i": lambda i: -7 * i,
              "f": lambda i: 0.25 * i + 0.5}
    return [values[c](i) for i, c in enumerate(params.codes)]


def read_back(params: launch.Params, argv: int) -> list:
    """What the driver reads: parameter i from the address in slot i of the void* array, sized by its type."""
    pointers = (ctypes.c_void_p * len(params.codes)).from_address(argv)
    return [READ_BACK[c].from_address(pointers[i]).value for i, c in enumerate(params.codes)]


@pytest.mark.parametrize("params", list(DECLARED.values()), ids=[f"{f}-{o}" for f, o in DECLARED])
def test_packing_of_each_declared_signature(params):
    args = sample_args(params)
    argv = params.pack(args)
    assert read_back(params, argv) == args  # the float samples are exact in fp32
    pointers = list((ctypes.c_void_p * len(args)).from_address(argv))
    assert all(b - a == launch.SLOT for a, b in zip(pointers, pointers[1:]))  # one aligned 8-byte slot each
    assert all(p % 8 == 0 for p in pointers)
    assert params.packer.size == launch.SLOT * len(args)
    assert sum(launch.SIZES[c] for c in params.codes) <= params.packer.size


def test_packing_rounds_floats_to_fp32_and_accepts_numpy_scalars():
    params = launch.Params("f i q")
    argv = params.pack([0.1, launch.i32(-3), 5])
    assert read_back(params, argv) == [ctypes.c_float(0.1).value, -3, 5]
    argv = params.pack([launch.f32(2.5), 2**31 - 1, -(2**63)])
    assert read_back(params, argv) == [2.5, 2**31 - 1, -(2**63)]


@pytest.mark.parametrize("spelled", ["", "pqx", "P"])
def test_params_reject_unknown_codes(spelled):
    with pytest.raises(ValueError, match="codes"):
        launch.Params(spelled)


@pytest.mark.parametrize("args", [[1, 2], [1, 2, 3, 4], [1, 2**31, 0.5], [-1, 2, 0.5], [1, 2.5, 0.5], [1, 2, "x"]])
def test_packing_rejects_wrong_counts_ranges_and_types(args):
    with pytest.raises(struct.error):
        launch.Params("p i f").pack(args)


def test_each_thread_packs_into_its_own_buffer():
    params = launch.Params("p q i f")
    seen = {}
    alive = threading.Barrier(5)  # every thread holds its buffer until all have one (freed ones get reused)

    def worker(n):
        seen[n] = params.buffers()[1]
        alive.wait()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    seen["main"] = params.buffers()[1]
    alive.wait()
    for t in threads:
        t.join()
    assert len(set(seen.values())) == 5
    assert params.buffers() is params.buffers()  # and one per thread, reused


# --- launch() with the driver stubbed ---------------------------------------------------------------------------
class Spec:
    """The two fields launch() reads from a spec."""

    def __init__(self, name):
        self.name = name


@pytest.fixture
def driver(monkeypatch):
    """cuLaunchKernel stubbed: records (function, grid, block, smem, stream, parameters as read back)."""
    calls = []
    state = {"result": 0, "params": None}

    def cu_launch(f, gx, gy, gz, bx, by, bz, smem, stream, argv, extra):
        assert extra == 0 and isinstance(argv, int)
        calls.append((f, (gx, gy, gz), (bx, by, bz), smem, stream, read_back(state["params"], argv)))
        return (state["result"],)

    monkeypatch.setattr(launch, "_cu_launch", cu_launch)
    monkeypatch.setattr(launch, "_functions", {"k_small": 0x1000})
    monkeypatch.setattr(launch, "function_for", lambda spec: pytest.fail(f"loaded {spec.name}"))
    state["calls"] = calls
    return state


def test_launch_passes_grid_block_stream_and_packed_arguments(driver):
    params = driver["params"] = launch.Params("p q i f")
    launch.launch(Spec("k_small"), params, (3, 2, 1), 256, 1024, 0, 0xABC, 0x7000, -5, 9, 0.5)
    assert driver["calls"] == [(0x1000, (3, 2, 1), (256, 1, 1), 1024, 0xABC, [0x7000, -5, 9, 0.5])]


def test_launch_errors_name_the_variant(driver):
    params = driver["params"] = launch.Params("p i")
    with pytest.raises(TypeError, match="k_small.*'p i'"):
        launch.launch(Spec("k_small"), params, (1, 1, 1), 32, 0, 0, 0, 0x7000)  # one argument short
    with pytest.raises(TypeError, match="k_small"):
        launch.launch(Spec("k_small"), params, (1, 1, 1), 32, 0, 0, 0, 0x7000, 2**31)  # int out of range
    assert driver["calls"] == []
    from cuda.bindings import driver as cu

    driver["result"] = cu.CUresult.CUDA_ERROR_INVALID_VALUE
    with pytest.raises(RuntimeError, match="cuLaunchKernel failed for k_small.*CUDA_ERROR_INVALID_VALUE"):
        launch.launch(Spec("k_small"), params, (1, 1, 1), 32, 0, 0, 0, 0x7000, 1)


def test_bound_launches_what_launch_launches(driver, monkeypatch):
    """launch.Bound (a plan's hot path): its first call goes through launch() (kernel load, shared-memory opt-in),
    the next ones straight to the driver with the same grid, block, stream and packed arguments; a bad argument
    or a failed launch is reported as launch() reports it."""
    params = driver["params"] = launch.Params("p q i f")
    via_launch = []
    real = launch.launch
    monkeypatch.setattr(launch, "launch", lambda *a: via_launch.append(a[6:]) or real(*a))
    bound = launch.Bound(Spec("k_small"), params, (3, 2, 1), 256, 1024, 0)
    bound(0xABC, 0x7000, -5, 9, 0.5)
    bound(0xDEF, 0x7100, -6, 10, 1.5)
    assert via_launch == [(0xABC, 0x7000, -5, 9, 0.5)] and bound.func == 0x1000
    assert driver["calls"] == [(0x1000, (3, 2, 1), (256, 1, 1), 1024, 0xABC, [0x7000, -5, 9, 0.5]),
                               (0x1000, (3, 2, 1), (256, 1, 1), 1024, 0xDEF, [0x7100, -6, 10, 1.5])]
    with pytest.raises(TypeError, match="k_small.*'p q i f'"):
        bound(0, 0x7000, 1, 2)  # one argument short
    from cuda.bindings import driver as cu

    driver["result"] = cu.CUresult.CUDA_ERROR_INVALID_VALUE
    with pytest.raises(RuntimeError, match="cuLaunchKernel failed for k_small.*CUDA_ERROR_INVALID_VALUE"):
        bound(0, 0x7000, 1, 2, 3.0)


def test_a_thread_without_a_context_gets_the_primary_one_and_one_retry(driver, monkeypatch):
    from cuda.bindings import driver as cu

    params = driver["params"] = launch.Params("p")
    bound = []
    driver["result"] = cu.CUresult.CUDA_ERROR_INVALID_CONTEXT
    monkeypatch.setattr(launch, "_bound_primary_context", lambda err, device: bound.append((err, device)) or True)
    with pytest.raises(RuntimeError, match="CUDA_ERROR_INVALID_CONTEXT"):  # the stub keeps failing
        launch.launch(Spec("k_small"), params, (1, 1, 1), 32, 0, 3, 0, 1)
    assert bound == [(cu.CUresult.CUDA_ERROR_INVALID_CONTEXT, 3)] and len(driver["calls"]) == 2
    monkeypatch.undo()
    assert launch._bound_primary_context(cu.CUresult.CUDA_ERROR_INVALID_VALUE, 0) is False  # other errors: no retry


def test_large_shared_memory_is_opted_in_before_the_launch(driver, monkeypatch):
    params = driver["params"] = launch.Params("p")
    opted = []
    monkeypatch.setattr(launch, "_raise_smem_limit", lambda spec, device, smem: opted.append((spec.name, device,
                                                                                              smem)))
    launch.launch(Spec("k_small"), params, (1, 1, 1), 32, 48 * 1024, 0, 0, 1)
    launch.launch(Spec("k_small"), params, (1, 1, 1), 32, 100 * 1024, 1, 0, 1)
    assert opted == [("k_small", 1, 100 * 1024)] and len(driver["calls"]) == 2


def test_concurrent_launches_see_their_own_arguments(driver, monkeypatch):
    """The driver reads the buffer during the call (with the GIL released in the real binding): threads packing
    at the same time must not see each other's values."""
    import sys

    params = driver["params"] = launch.Params("p q i f")
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, also between packing and the launch
    errors = []

    def worker(n):
        try:
            for i in range(2000):
                args = [0x1000 * (n + 1) + i, -n - i, n * 1000 + i, float(n)]
                launch.launch(Spec("k_small"), params, (1, 1, 1), 32, 0, 0, n, *args)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors
    for _, _, _, _, stream, values in driver["calls"]:
        n = stream
        i = values[0] - 0x1000 * (n + 1)
        assert values == [0x1000 * (n + 1) + i, -n - i, n * 1000 + i, float(n)]
    assert len(driver["calls"]) == 8000
