"""Every kernel family, its enumerator, and selection of variants by arch and name glob.

A family is a KernelSpec subclass plus one function ``enumerate(arch) -> list[spec]`` that yields only valid
variants (the spec's own checks drop the rest before they exist).
"""
from __future__ import annotations

import fnmatch
from typing import Callable, Iterable

from ..arch import DEFAULT_ARCHES, parse_arch
from .spec import KernelSpec
from . import attn_mma, attn_short, attn_wgmma, quant

# family name -> (spec class, enumerator). Add a family by adding one line.
FAMILIES: dict[str, tuple[type[KernelSpec], Callable]] = {
    quant.QuantSpec.family: (quant.QuantSpec, quant.enumerate_variants),
    attn_mma.AttnMmaSpec.family: (attn_mma.AttnMmaSpec, attn_mma.enumerate_variants),
    attn_wgmma.AttnWgmmaSpec.family: (attn_wgmma.AttnWgmmaSpec, attn_wgmma.enumerate_variants),
    attn_short.AttnShortSpec.family: (attn_short.AttnShortSpec, attn_short.enumerate_variants),
}


def enumerate_all(arches: Iterable[str] | None = None) -> list[KernelSpec]:
    arch_names = [parse_arch(a).name for a in (arches or DEFAULT_ARCHES)]
    specs: list[KernelSpec] = []
    for arch in arch_names:
        for _, enumerate_fn in FAMILIES.values():
            specs.extend(enumerate_fn(arch))
    return specs


def _patterns(filters) -> list[str]:
    if filters is None:
        return []
    if isinstance(filters, str):
        filters = [filters]
    return [p.strip() for f in filters for p in f.split(",") if p.strip()]


def select(arches=None, include=None, exclude=None) -> list[KernelSpec]:
    """Variants for ``arches`` whose names match any ``include`` glob and no ``exclude`` glob (exclude wins)."""
    inc, exc = _patterns(include), _patterns(exclude)
    out = []
    for spec in enumerate_all(arches):
        n = spec.name
        if inc and not any(fnmatch.fnmatchcase(n, p) for p in inc):
            continue
        if any(fnmatch.fnmatchcase(n, p) for p in exc):
            continue
        out.append(spec)
    return out


def family_of(name: str) -> str:
    """The family a variant name belongs to (the longest matching family prefix wins). Plain string work, so
    torch.compile can trace it."""
    for family in sorted(FAMILIES, key=len, reverse=True):
        if name.startswith(family + "_"):
            return family
    raise ValueError(f"{name!r} names no known kernel family ({', '.join(sorted(FAMILIES))})")


def spec_from_name(name: str) -> KernelSpec:
    """Parse any variant name back into its spec."""
    return FAMILIES[family_of(name)][0].from_name(name)
