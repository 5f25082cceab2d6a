"""NVRTC compilation of one rendered source: cubin through cuda.core, PTX through the raw bindings.

Both run on a machine with no GPU and no driver: the target arch is always passed explicitly. (cuda.core's own
PTX path probes the driver first, so PTX, used only to inspect instructions, goes through cuda.bindings.nvrtc.)
"""
from __future__ import annotations

from .arch import Arch, parse_arch
from .errors import CompileError
from .toolchain import include_dirs

CXX_STD = "c++17"


def option_list(arch: Arch) -> tuple[str, ...]:
    """The NVRTC command-line options, as strings (this tuple is part of the cache key)."""
    opts = [
        f"-arch={arch.nvrtc_arch}",
        f"-std={CXX_STD}",
        "--device-as-default-execution-space",  # CUTLASS's unannotated constexpr functions need it under NVRTC
        "-lineinfo",  # source lines for ncu and compute-sanitizer; no effect on the code
    ]
    opts += [f"-I{d}" for d in include_dirs()]
    return tuple(opts)


def compile_cubin(name: str, source: str, arch, source_path: str = "<memory>") -> bytes:
    """Compile to a cubin for ``arch``. Raises CompileError naming the variant, the file and the NVRTC log."""
    from cuda.core import Program, ProgramOptions

    arch = parse_arch(arch)
    options = ProgramOptions(
        name=str(source_path),
        arch=arch.nvrtc_arch,
        std=CXX_STD,
        device_as_default_execution_space=True,
        lineinfo=True,
        include_path=list(include_dirs()),
    )
    try:
        obj = Program(source, "c++", options).compile("cubin")
    except Exception as e:  # cuda.core raises NVRTCError with the log in its message
        raise CompileError(name, str(source_path), str(e).rstrip("\x00")) from None
    return bytes(obj.code)


def compile_ptx(name: str, source: str, arch, source_path: str = "<memory>") -> str:
    """PTX for ``arch`` (compute_XX target), for inspecting which instructions a variant emits."""
    from cuda.bindings import nvrtc

    arch = parse_arch(arch)
    opts = [o.replace("-arch=sm_", "-arch=compute_") for o in option_list(arch)]
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), str(source_path).encode(), 0, [], [])
    _check(err, name, source_path, "")
    try:
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(name, str(source_path), _log(prog))
        err, size = nvrtc.nvrtcGetPTXSize(prog)
        _check(err, name, source_path, "")
        buf = b" " * size
        (err,) = nvrtc.nvrtcGetPTX(prog, buf)
        _check(err, name, source_path, "")
        return buf.rstrip(b"\x00").decode()
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _log(prog) -> str:
    from cuda.bindings import nvrtc

    err, size = nvrtc.nvrtcGetProgramLogSize(prog)
    buf = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, buf)
    return buf.rstrip(b"\x00").decode(errors="replace")


def _check(err, name, source_path, log):
    from cuda.bindings import nvrtc

    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CompileError(name, str(source_path), f"{err}: {log}")
