"""Strict construction of a part's config dataclass from a dict: an unknown key fails loudly, naming it.

Lives in storage because it is the one package every other part may import (DESIGN.md's one-way flow).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict_strict(cls: type[T], d: dict[str, Any] | None, what: str | None = None) -> T:
    """`cls(**d)`, refusing keys that are not init fields of the dataclass `cls`."""
    d = dict(d or {})
    known = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what or cls.__name__} keys: {unknown} (known: {sorted(known)})")
    return cls(**d)
