"""The SQL sandbox's read-only view of snapshot objects on S3-compatible storage (storage/sandbox.py, layer 2).

DuckDB's httpfs extension is not installed (no `duckdb-ext-httpfs` wheel is built for the DuckDB this project
pins, and nothing is downloaded at run time), so the sandbox reads objects through pyarrow's S3 client wrapped as
an fsspec file system. Like `ReadOnlySnapshots` for local files, it opens objects for reading only, and only under
the folders of snapshots the catalog lists: no write, delete, copy or rename, and no other key of the bucket.
A view reads `dpo-objects://bucket/key`; `s3://` itself stays unreachable from SQL (external access is off).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.implementations.arrow import ArrowFile
from pyarrow import fs as pafs

from storage import objects

PROTOCOL = "dpo-objects"


def sandbox_uri(uri: str) -> str:
    """s3://bucket/key -> dpo-objects://bucket/key (what the sandbox's views read)."""
    return PROTOCOL + "://" + uri.removeprefix(objects.SCHEME)


class ReadOnlyObjects(AbstractFileSystem):
    """Reads objects under `allowed` s3:// folders; every write is refused (AbstractFileSystem's mutators raise,
    and `_open` opens nothing but 'rb')."""

    protocol = PROTOCOL
    root_marker = ""
    cachable = False

    def __init__(self, allowed: Sequence[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.allowed = [a.removeprefix(objects.SCHEME).strip("/") + "/" for a in allowed]
        self.s3 = objects.s3_filesystem()

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        return str(path).removeprefix(PROTOCOL + "://").strip("/")

    def _key(self, path: str) -> str:
        key = self._strip_protocol(path)
        if any(seg in ("", ".", "..") for seg in key.split("/")) or \
                not any((key + "/").startswith(a) for a in self.allowed):
            raise PermissionError(f"the SQL sandbox reads only the workspace's snapshot objects, not {key}")
        return key

    def info(self, path: str, **kw: Any) -> dict[str, Any]:
        key = self._key(path)
        fi = self.s3.get_file_info(key)
        if fi.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{objects.SCHEME}{key}")
        kind = "directory" if fi.type == pafs.FileType.Directory else "file"
        return {"name": key, "size": fi.size or 0, "type": kind, "mtime": fi.mtime}

    def ls(self, path: str, detail: bool = True, **kw: Any) -> list[Any]:
        key = self._key(path)
        if self.info(key)["type"] != "directory":
            names = [key]
        else:
            names = [i.path for i in self.s3.get_file_info(pafs.FileSelector(key))]
        return [self.info(n) for n in names] if detail else names

    def modified(self, path: str) -> Any:
        return self.info(path)["mtime"]

    def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
        if mode != "rb":
            raise PermissionError(f"the SQL sandbox is read-only: cannot open {path} for writing")
        key = self._key(path)
        return ArrowFile(self, self.s3.open_input_file(key), key, "rb")
