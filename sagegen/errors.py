"""Exceptions sagegen raises. Each says what went wrong and names the thing it is about."""
from __future__ import annotations


class SagegenError(RuntimeError):
    """Base class of sagegen's own run-time errors (bad input raises plain ValueError/TypeError)."""


class InvalidVariant(ValueError):
    """A spec whose parameters cannot make a kernel (divisibility, resource fit, missing arch feature)."""


class CompileError(SagegenError):
    """NVRTC rejected a generated source. Carries the variant name, the file and the full NVRTC log."""

    def __init__(self, variant: str, source_path: str, log: str):
        self.variant, self.source_path, self.log = variant, source_path, log
        super().__init__(f"NVRTC failed to compile variant {variant} (generated file {source_path}):\n{log}")


class CacheError(SagegenError):
    """The kernel cache directory cannot be used."""
