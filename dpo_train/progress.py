"""Progress of long steps inside training (the reference pass), reported to whoever is listening.

The trainer's steps report `(what, done, total)` here; a front end (the CLI's progress bars) listens for the
duration of a call with `reporting(callback)`. Nobody listening costs one context-variable read per batch.
A context variable, not a parameter threaded through every call, so a step deep in the trainer can report
without each layer above it passing a callback along.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Callback = Callable[[str, int, int], None]
_LISTENER: ContextVar[Callback | None] = ContextVar("dpo_train_progress", default=None)


def report(what: str, done: int, total: int) -> None:
    listener = _LISTENER.get()
    if listener is not None:
        listener(what, done, total)


@contextmanager
def reporting(callback: Callback) -> Iterator[None]:
    token = _LISTENER.set(callback)
    try:
        yield
    finally:
        _LISTENER.reset(token)
