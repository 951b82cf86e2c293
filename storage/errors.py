"""Typed storage errors: each carries a message a user can act on, and the CLI turns them into exit code 2."""

from __future__ import annotations


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
