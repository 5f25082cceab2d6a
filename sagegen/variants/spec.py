"""The base of every kernel variant: a frozen spec whose name spells each parameter, in field order.

A field's name token is declared with one of three helpers, so that a name maps back to its spec:
  ``word("qk")``   -> two tokens, ``qk_i8``
  ``prefix("d")``  -> one token,  ``d128``
  ``flag("causal", "full")`` -> one token, ``causal`` or ``full``
The first field is always ``arch`` and is spelled bare (``sm90a``). Values never contain ``_``.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, ClassVar

from ..arch import ARCHES, parse_arch
from ..errors import InvalidVariant


def word(tag: str, **kw):
    return dataclasses.field(metadata={"word": tag}, **kw)


def prefix(tag: str, **kw):
    return dataclasses.field(metadata={"prefix": tag}, **kw)


def flag(on: str, off: str, **kw):
    return dataclasses.field(metadata={"flag": (on, off)}, **kw)


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """Subclasses set ``family``, ``template`` and ``requires`` and implement ``check`` and ``context``."""

    arch: str

    family: ClassVar[str] = ""
    template: ClassVar[str] = ""  # path under templates/
    requires: ClassVar[tuple[str, ...]] = ()  # arch features the family needs

    # --- construction and validity ------------------------------------------------------------------------
    def __post_init__(self):
        types = _type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = types[f.name]
            if expected is bool and not isinstance(value, bool):
                raise TypeError(f"{type(self).__name__}.{f.name} must be bool, got {value!r}")
            if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{type(self).__name__}.{f.name} must be int, got {value!r}")
            if expected is str and (not isinstance(value, str) or "_" in value or not value):
                raise TypeError(f"{type(self).__name__}.{f.name} must be a non-empty string without '_', got {value!r}")
        if self.arch not in ARCHES:
            raise InvalidVariant(f"arch {self.arch!r} is not canonical; use one of {', '.join(ARCHES)}")
        missing = [r for r in self.requires if not self.target.has(r)]
        if missing:
            raise InvalidVariant(f"{self.family} needs {', '.join(missing)}, which {self.arch} lacks")
        self.check()

    def check(self) -> None:
        """Raise InvalidVariant when the parameters cannot make a kernel on this arch."""

    @property
    def target(self):
        return ARCHES[self.arch]

    # --- the name -----------------------------------------------------------------------------------------
    @functools.cached_property  # writes the instance __dict__ directly, so it works on a frozen dataclass
    def name(self) -> str:
        tokens = [self.family]
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            md = f.metadata
            if f.name == "arch":
                tokens.append(v)
            elif "word" in md:
                tokens += [md["word"], str(v)]
            elif "prefix" in md:
                tokens.append(f"{md['prefix']}{v}")
            elif "flag" in md:
                tokens.append(md["flag"][0] if v else md["flag"][1])
            else:
                raise TypeError(f"field {f.name} of {type(self).__name__} declares no name token")
        return "_".join(tokens)

    @classmethod
    def from_name(cls, name: str) -> "KernelSpec":
        head = cls.family + "_"
        if not name.startswith(head):
            raise ValueError(f"{name!r} is not a {cls.family} variant name")
        tokens = name[len(head):].split("_")
        types = _type_hints(cls)
        values: dict[str, Any] = {}
        i = 0
        try:
            for f in dataclasses.fields(cls):
                md = f.metadata
                if f.name == "arch":
                    raw = tokens[i]
                    i += 1
                elif "word" in md:
                    if tokens[i] != md["word"]:
                        raise ValueError(f"expected '{md['word']}' at token {i}, found '{tokens[i]}'")
                    raw = tokens[i + 1]
                    i += 2
                elif "prefix" in md:
                    if not tokens[i].startswith(md["prefix"]):
                        raise ValueError(f"expected '{md['prefix']}…' at token {i}, found '{tokens[i]}'")
                    raw = tokens[i][len(md["prefix"]):]
                    i += 1
                else:
                    on, off = md["flag"]
                    if tokens[i] not in (on, off):
                        raise ValueError(f"expected '{on}' or '{off}' at token {i}, found '{tokens[i]}'")
                    values[f.name] = tokens[i] == on
                    i += 1
                    continue
                values[f.name] = int(raw) if types[f.name] is int else raw
        except IndexError:
            raise ValueError(f"variant name {name!r} is too short for {cls.family}") from None
        if i != len(tokens):
            raise ValueError(f"variant name {name!r} has unparsed tokens {tokens[i:]}")
        try:
            spec = cls(**values)
        except TypeError as e:  # e.g. an empty token from "__": a malformed name is a ValueError like the rest
            raise ValueError(f"variant name {name!r} is malformed: {e}") from None
        if spec.name != name:
            raise ValueError(f"variant name {name!r} is not canonical (expected {spec.name!r})")
        return spec

    # --- what the template and the runtime need -----------------------------------------------------------
    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def context(self) -> dict:
        """Values the Jinja template renders, beyond the fields themselves (type names, derived constants)."""
        return {}

    def render_context(self) -> dict:
        return {"spec": self, "name": self.name, **self.to_dict(), **self.context()}


@functools.cache
def _type_hints(cls) -> dict:
    return typing.get_type_hints(cls)


def build_valid(cls, **params) -> KernelSpec | None:
    """Construct a spec, or return None when the parameters make no valid variant. Used by the enumerators."""
    try:
        return cls(**params)
    except InvalidVariant:
        return None


def canonical_arch(arch) -> str:
    return parse_arch(arch).name
