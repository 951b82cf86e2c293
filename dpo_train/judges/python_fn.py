"""Judge with a Python function the user names as "module:function"."""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import xxhash

from dpo_train.judges.base import Judge, check_rows

_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def load_function(spec: str) -> Callable[..., Any]:
    """Import `module:function`, checking it names a callable that takes (prompt, response) arguments."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise ValueError(f"judge function must be written 'package.module:function', got {spec!r}")
    module_name, fn_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"judge function {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    fn = module.__dict__.get(fn_name)
    if fn is None:
        raise ValueError(f"judge function {spec!r}: module {module_name!r} has no attribute {fn_name!r}")
    if not callable(fn):
        raise ValueError(f"judge function {spec!r} is not callable")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError as exc:
        raise ValueError(f"judge function {spec!r} must accept two positional arguments "
                         f"(prompt, response): {exc}") from exc
    except ValueError:
        pass  # builtins without a signature: trust the call
    return fn


def function_version(fn: Callable[..., Any]) -> str:
    """Hash of the function's source, so editing the function changes the judge version."""
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        src = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"
    return xxhash.xxh3_64_hexdigest(src.encode())[:12]


@dataclass
class PythonFunctionJudge(Judge):
    """`fn(prompt_messages, response) -> float` per row, or, with batched=True,
    `fn(list_of_prompts, list_of_responses) -> sequence of floats` (faster for vectorised scorers)."""

    function: str
    batched: bool = False
    kind: ClassVar[str] = "python"
    _fn: Callable[..., Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._fn = load_function(self.function)  # fail at configuration time, not mid-round

    @property
    def version(self) -> str:
        return f"{self.function}@{function_version(self._fn)}"

    def score(self, table: pa.Table) -> np.ndarray:
        check_rows(table)
        prompts = table.column("prompt").to_pylist()
        responses = table.column("response").to_pylist()
        if self.batched:
            raw = list(self._fn(prompts, responses))
        else:
            raw = [self._fn(p, r) for p, r in zip(prompts, responses, strict=True)]
        if len(raw) != len(responses):
            raise RuntimeError(f"{self.function} returned {len(raw)} scores for {len(responses)} rows")
        try:
            out = np.array([float(x) for x in raw], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise RuntimeError(f"{self.function} returned a non-numeric score: {exc}") from exc
        bad = [i for i, x in enumerate(out) if math.isinf(x)]
        if bad:
            raise RuntimeError(f"{self.function} returned infinite scores at rows {bad[:5]}")
        return out
