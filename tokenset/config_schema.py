"""The ``Section`` mixin of every configuration dataclass, and the validation of plain values against it.

``Section`` gives a frozen dataclass its presets (``PRESETS``, reached as ``TokenizerConfig.preset("tiny")``),
``replace`` and ``to_dict``. ``from_mapping(cls, values, where)`` builds such a dataclass from plain (YAML / JSON)
values: an unknown key, a missing required key or a value of the wrong type raises a ``ValueError`` prefixed by
``where``; values are converted where the annotation says so (int -> float, str -> Enum, list -> tuple). A section's
``__post_init__`` checks its own value ranges with ``_check``. The sections themselves are ``tokenset.config_sections``
and ``tokenset.config_studies``; ``tokenset.config`` gathers them. This module imports nothing else from tokenset.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, ClassVar, Literal, Mapping, TypeVar

__all__ = ["Section", "from_mapping"]

T = TypeVar("T", bound="Section")


class Section:
    """Mixin for config dataclasses: presets, validation, (de)serialisation."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    # Fields added after checkpoints were written: ``to_dict`` leaves them out while they hold their default, so a
    # configuration saved before they existed still equals today's (checkpoint resume compares the two).
    OMIT_IF_DEFAULT: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def preset(cls: type[T], name: str, /, **overrides: Any) -> T:
        """The named preset with ``overrides`` applied (each checked like a params.yaml key)."""
        if name not in cls.PRESETS:
            raise ValueError(
                f"{cls.__name__}: unknown preset {name!r}; expected one of {sorted(cls.PRESETS)}"
            )
        return from_mapping(cls, {**cls.PRESETS[name], **overrides}, where=f"preset {name!r}")

    def replace(self: T, **changes: Any) -> T:
        """A copy with ``changes`` applied and validated."""
        return from_mapping(type(self), {**self.to_dict(), **changes}, where="replace()")

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-serialisable values (enums as their values, tuples as lists)."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if f.name in self.OMIT_IF_DEFAULT and v == f.default:
                continue
            if isinstance(v, enum.Enum):
                v = v.value
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out


def from_mapping(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """Build ``cls`` from plain values, validating names and types; ``where`` prefixes every error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected keys are {sorted(fields)}")
    required = [n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in values]
    if missing:
        raise ValueError(f"{where}: missing required key(s) {missing}")
    hints = typing.get_type_hints(cls)
    converted = {name: _coerce(value, hints[name], f"{where}: key {name!r}") for name, value in values.items()}
    try:
        return cls(**converted)
    except _InvalidValue as err:
        raise ValueError(f"{where}: {err}") from None


class _InvalidValue(ValueError):
    pass


def _check(obj: Any, ok: bool, key: str, expected: str) -> None:
    if not ok:
        raise _InvalidValue(f"key {key!r} is {getattr(obj, key)!r}; expected {expected}")


def _distinct(values: Any) -> bool:
    """True for a non-empty sequence without repeats (seeds, arms, sheet names, grid values)."""
    return len(values) >= 1 and len(set(values)) == len(values)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``hint``; return it converted (int -> float, str -> Enum, list -> tuple)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg, where)
            except ValueError:
                continue
        raise ValueError(f"{where} is {value!r}; expected {hint}")
    if hint is type(None):
        if value is None:
            return None
        raise ValueError(f"{where} is {value!r}; expected null")
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ValueError(f"{where} is {value!r}; expected one of {list(args)}")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
        try:
            return hint(value)
        except ValueError:
            raise ValueError(f"{where} is {value!r}; expected one of {[m.value for m in hint]}") from None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} is {value!r} ({type(value).__name__}); expected a list")
        item = args[0]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where} is {value!r} ({type(value).__name__}); expected true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{where} is {value!r} ({type(value).__name__}); expected an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{where} is {value!r} ({type(value).__name__}); expected a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where} is {value!r} ({type(value).__name__}); expected a string")
    raise TypeError(f"{where}: unsupported annotation {hint!r} in config")
