"""Typed storage errors: each carries a message a user can act on, and the CLI turns them into exit code 2."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class StorageError(Exception):
    """Base of every error storage raises on purpose (bad input or a workspace it cannot use right now)."""


class CatalogBusyError(StorageError):
    """Another process kept the catalog longer than we were willing to wait."""


class DiskFullError(StorageError):
    """The disk filled while writing; nothing half-written was published."""


class QueryLimitError(StorageError):
    """A read-only SQL query hit its timeout, memory or temp-space limit and was stopped."""


class UnsafeQueryError(StorageError, ValueError):
    """A statement the read-only SQL path refuses (it could write, or it reaches outside the catalog)."""


class ObjectStorageError(StorageError, OSError):
    """The object store (S3) refused or failed a request: the message names the object and what was kept."""


def is_disk_full(exc: BaseException) -> bool:
    return getattr(exc, "errno", None) == 28 or "no space left on device" in str(exc).lower()


class Writing:
    """Within it, 'no space left on device' (an OSError, or DuckDB's IO error, which says so in its message)
    becomes DiskFullError naming the file being written and what the user can do (`advice`)."""

    def __init__(self, path: Path | None = None,
                 advice: str = "nothing was published (free some space and retry)") -> None:
        self.path, self.advice = path, advice

    def at(self, path: Path) -> Writing:
        self.path = path
        return self

    def __enter__(self) -> Writing:
        return self

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, Exception) and not isinstance(exc, DiskFullError) and is_disk_full(exc):
            raise DiskFullError(f"no space left on device while writing {self.path}; {self.advice}") from exc
        return False
