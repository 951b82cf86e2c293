"""Snapshot files on local disk or on S3-compatible object storage: the one place that tells them apart.

A workspace's root (catalog, locks, run records, temp files) is always a local folder; its snapshot files may live
under an `s3://bucket/prefix` instead (`DPO_WORKSPACE_STORAGE`, recorded in the catalog on first use). Endpoint and
credentials come from the standard AWS variables (AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION or AWS_DEFAULT_REGION) through pyarrow's own S3 client: no
boto and no DuckDB extension at run time.

Objects are immutable: publish writes every file under a staging key first and copies it to a final key that is
unique to that publish (`snapshots/<ds>/v<N>-<16 hex>/`) only after every upload succeeded, and the catalog row is
committed after that. S3 has no atomic rename, so a crash can leave objects nobody catalogued (`dpo doctor` finds
and deletes them), never a catalog row naming a missing or partial object.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from fsspec.implementations.arrow import ArrowFSWrapper
from pyarrow import fs as pafs

SCHEME = "s3://"
STORAGE_ENV = "DPO_WORKSPACE_STORAGE"
LOCAL = "local"  # DPO_WORKSPACE_STORAGE=local: back to files inside the workspace folder
STAGING = ".staging"  # under the storage prefix: uploads not yet promoted to their final key


def is_uri(path: object) -> bool:
    return str(path).startswith(SCHEME)


def check_storage(uri: str) -> str:
    """`s3://bucket[/prefix]` without a trailing slash; anything else is refused with the shape it needs."""
    bucket = uri.removeprefix(SCHEME).split("/", 1)[0]
    if not is_uri(uri) or not bucket or any(c in uri for c in "?#*") or "//" in uri.removeprefix(SCHEME):
        raise ValueError(f"invalid snapshot storage {uri!r}: use s3://bucket or s3://bucket/prefix "
                         f"(or {LOCAL!r} for files inside the workspace folder)")
    return uri.rstrip("/")


def join(base: str, *parts: str) -> str:
    """A URI below `base`; parts are plain names (no '..' walking out of the prefix)."""
    for p in parts:
        if not p.strip("/") or any(seg in ("", ".", "..") for seg in p.strip("/").split("/")):
            raise ValueError(f"invalid object name {p!r} under {base}")
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


@lru_cache(maxsize=8)
def _s3(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    kw: dict[str, Any] = {}
    if endpoint:
        kw["endpoint_override"] = endpoint
        if endpoint.startswith("http://"):
            kw["scheme"] = "http"
    if region:
        kw["region"] = region
    # Retries are pyarrow's (AWS standard strategy, 3 attempts); credentials from the AWS default chain.
    return pafs.S3FileSystem(**kw)


class S3Files(ArrowFSWrapper):
    """pyarrow's S3 client as an fsspec file system under the `s3` protocol, for DuckDB's register_filesystem
    (the catalog's connection binds its views with it; the SQL sandbox uses its own read-only one)."""

    protocol = "s3"
    cachable = False


def s3_filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 client configured from the standard AWS variables (read at each call: tests change them)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _s3(endpoint, region)


def locate(path: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """(file system, path inside it) for a local path or an s3:// URI."""
    text = str(path)
    if is_uri(text):
        return s3_filesystem(), text.removeprefix(SCHEME)
    return pafs.LocalFileSystem(), os.fspath(path)


def read_parquet(path: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    """The one reader of snapshot Parquet files, local or on object storage."""
    fs, p = locate(path)
    return pq.read_table(p, filesystem=fs, columns=columns)


def exists(path: str | os.PathLike[str]) -> bool:
    fs, p = locate(path)
    return fs.get_file_info(p).type == pafs.FileType.File


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    fs, p = locate(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def list_files(prefix: str) -> list[pafs.FileInfo]:
    """Every object under an s3:// prefix (none when the prefix is empty)."""
    fs, p = locate(prefix)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=True, allow_not_found=True))
    return [i for i in infos if i.type == pafs.FileType.File]


def remove(uris: Iterable[str]) -> None:
    """Delete objects, best effort (used on paths that are no snapshot's: staging keys and uncatalogued copies)."""
    fs = s3_filesystem()
    for uri in uris:
        try:
            fs.delete_file(uri.removeprefix(SCHEME))
        except (OSError, FileNotFoundError):
            pass


def stage(local_files: Iterable[Path], staging: str) -> list[str]:
    """Upload local files under the staging prefix (a multipart upload becomes visible only once complete)."""
    fs = s3_filesystem()
    done = []
    for f in local_files:
        target = join(staging, f.name)
        pafs.copy_files(str(f), target.removeprefix(SCHEME), source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
        done.append(target)
    return done


def promote(staged: list[str], final: str) -> list[str]:
    """Copy staged objects to the final prefix in order (the manifest last: a final folder holding a manifest is
    complete). On failure the copies already made are deleted and the error is raised."""
    fs = s3_filesystem()
    copied: list[str] = []
    try:
        for src in staged:
            dst = join(final, src.rsplit("/", 1)[1])
            fs.copy_file(src.removeprefix(SCHEME), dst.removeprefix(SCHEME))
            copied.append(dst)
    except BaseException:
        remove(copied)
        raise
    return copied


def staging_prefix(storage: str) -> str:
    return join(storage, STAGING, uuid.uuid4().hex)


class ObjectPath:
    """A pathlib-like handle on an s3:// URI: what `SnapshotInfo.path` is for a snapshot on object storage.

    `str()` is the URI (pyarrow, Polars and DuckDB readers open it); `/`, `name`, `parent`, `exists()`,
    `read_bytes()` and `read_text()` work like Path's. `os.fspath()` (so `open(path)`) gives a local read-only
    copy in the workspace's object cache: objects under a final key never change, so the copy never goes stale.
    """

    __slots__ = ("uri", "cache")

    def __init__(self, uri: str, cache: Path | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.cache = cache

    def __truediv__(self, part: str | os.PathLike[str]) -> ObjectPath:
        return ObjectPath(join(self.uri, str(part)), self.cache)

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"ObjectPath({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[1]

    @property
    def parent(self) -> ObjectPath:
        return ObjectPath(self.uri.rsplit("/", 1)[0], self.cache)

    def resolve(self) -> ObjectPath:
        return self

    def is_relative_to(self, other: object) -> bool:
        return self.uri == str(other).rstrip("/") or self.uri.startswith(str(other).rstrip("/") + "/")

    def exists(self) -> bool:
        fs, p = locate(self.uri)
        return fs.get_file_info(p).type != pafs.FileType.NotFound

    def read_bytes(self) -> bytes:
        return read_bytes(self.uri)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def __fspath__(self) -> str:
        if self.cache is None:
            raise FileNotFoundError(f"{self.uri} is an object, not a local file (read it with storage.objects)")
        local = self.cache / xxhash.xxh3_64_hexdigest(self.uri.encode()) / self.name
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            part = local.with_name(f".{local.name}.{uuid.uuid4().hex}")
            try:
                part.write_bytes(self.read_bytes())
                os.chmod(part, 0o444)
                os.replace(part, local)
            finally:
                part.unlink(missing_ok=True)
        return str(local)


def snapshot_path(path: str, cache: Path | None) -> Path | ObjectPath:
    """A catalog `path` value as a Path (local snapshot) or an ObjectPath (snapshot on object storage)."""
    return ObjectPath(path, cache) if is_uri(path) else Path(path)
