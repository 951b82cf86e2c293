"""Advisory file locks that die with their process, naming who holds them.

A lock is `flock` on a small file: the kernel releases it when the holding process exits, however it exits
(kill -9 included), so a lock never outlives its owner and "is this lock held" is also "is its owner alive".
The holder writes its pid, host and start time into the file so a refused or waiting caller can say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class LockHeldError(RuntimeError):
    """The lock is held by another process (or another open of the file in this one)."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        self.path, self.holder = path, holder
        super().__init__(f"{path} is held by {describe(holder)}")


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"


def read_holder(path: Path) -> dict[str, Any]:
    """What the current (or last) holder wrote into the lock file; {} when unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def is_held(path: Path) -> bool:
    """True while some process holds the lock at `path` (a missing file is not held)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own shared lock
    return False


class FileLock:
    """`with FileLock(path, wait=...)`: exclusive lock on `path`, created if missing.

    wait=False raises LockHeldError at once when another process holds it; wait=True polls until it is free
    (logging once who it waits for), up to `timeout_s` (None: no limit), then raises LockHeldError.
    """

    def __init__(self, path: str | os.PathLike[str], *, wait: bool = False, timeout_s: float | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.wait, self.timeout_s = wait, timeout_s
        self.info = dict(info or {})
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        told, delay = False, 0.05
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(self.path)
                if not self.wait or (deadline is not None and time.monotonic() > deadline):
                    os.close(fd)
                    raise LockHeldError(self.path, holder) from None
                if not told:
                    log.warning("waiting for %s, held by %s", self.path, describe(holder))
                    told = True
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        self._fd = fd
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.now(UTC).isoformat(timespec="seconds"), **self.info}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder, sort_keys=True).encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        # The file stays: unlinking it would let a waiter lock a file no later caller can see.
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
