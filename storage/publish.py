"""Publishing a snapshot: written and fsynced in `.tmp/`, renamed into `snapshots/`, then one catalog transaction.

Until the commit nothing is visible; a folder left by a kill between rename and commit is not in the catalog, so it
is invisible, and the next publish of that version (or `dpo doctor --fix`) moves it aside and deletes it.
Everything a user-visible rule depends on is decided inside the transaction, under the catalog's write lock:
the version number, case-insensitive name uniqueness, and the cache check (parallel identical work publishes ONE
snapshot: the others get it back).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from storage import catalog, objects
from storage.errors import ObjectStorageError, Writing
from storage.names import check_name, check_new_name
from storage.schema import PAIR_SCHEMA, QUARANTINE_SCHEMA, REJECTS_SCHEMA, SCHEMA_VERSION, conform

TRASH_PREFIX = "uncatalogued-"


def content_hash(pairs: pa.Table) -> str:
    """Hash of what training sees: ids in order plus weights and cached reference log-probs."""
    h = xxhash.xxh3_128()
    for name in _HASHED:
        col = pairs.column(name).combine_chunks()
        for buf in col.buffers():
            if buf is not None:
                h.update(memoryview(buf))
    h.update(str(pairs.num_rows).encode())
    return h.hexdigest()


_HASHED = ("pair_id", "weight", "ref_chosen_logp", "ref_rejected_logp")


def file_pairs(path: Path) -> tuple[int, str]:
    """(rows, content hash) of a pairs Parquet file written with PAIR_SCHEMA (an ingest's spill), reading only
    the hashed columns: the hash equals `content_hash` of the same rows as a table."""
    schema = pq.read_schema(path)
    if not schema.equals(PAIR_SCHEMA):
        raise ValueError(f"{path}: a pairs file must have the pair schema exactly (got {schema})")
    hashed = pq.read_table(path, columns=list(_HASHED))
    return hashed.num_rows, content_hash(hashed)


def _place(src: Path, dst: Path) -> None:
    """`src` at `dst` without reading it into memory: a hard link when both share a file system, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def to_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


class SideFile:
    """A side table (rejects, quarantine) given as a Parquet file of its schema, an ingest's spill: streamed into
    the snapshot a row group at a time, never read whole."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        got = pq.read_schema(path)
        if not got.equals(schema):
            raise ValueError(f"{path}: a side table file must have its schema exactly (got {got})")
        self.path = path
        self.num_rows = pq.ParquetFile(path).metadata.num_rows


def _side(value: pa.Table | Path | None, schema: pa.Schema) -> pa.Table | SideFile:
    if value is None:
        return schema.empty_table()
    if isinstance(value, str | os.PathLike):
        return SideFile(Path(value), schema)
    return conform(value, schema)


def _write_side(src: pa.Table | SideFile, snapshot_id: str, path: Path) -> None:
    if isinstance(src, pa.Table):
        pq.write_table(with_snapshot_id(src, snapshot_id), path, compression="zstd")
        return
    f = pq.ParquetFile(src.path)
    schema = with_snapshot_id(f.schema_arrow.empty_table(), snapshot_id).schema
    with pq.ParquetWriter(path, schema, compression="zstd") as out:
        for i in range(f.num_row_groups):
            out.write_table(with_snapshot_id(f.read_row_group(i), snapshot_id))


def with_snapshot_id(table: pa.Table, snapshot_id: str) -> pa.Table:
    if "snapshot_id" in table.column_names:
        table = table.drop_columns(["snapshot_id"])
    return table.add_column(0, "snapshot_id", pa.repeat(pa.scalar(snapshot_id, pa.string()), table.num_rows))


def publish(
    root: Path,
    dataset: str,
    pairs: pa.Table | Path,
    *,
    rejects: pa.Table | Path | None,
    quarantine: pa.Table | Path | None,
    parents: Sequence[str],
    params: dict[str, Any],
    kind: str,
    flow_run: str | None,
    cache_key: str | None,
    input_rows: int | None,
    tables: dict[str, pa.Table],
    files: dict[str, bytes | str | os.PathLike[str]],
    meta: dict[str, Any],
    storage: str | None = None,
) -> str:
    """Publish and return the new snapshot id (or, for a cache_key already published, that snapshot's id).

    `storage`: an s3:// prefix for the snapshot's files (storage/objects.py); None keeps them in `snapshots/`.
    `pairs` may be a Parquet file with PAIR_SCHEMA (an ingest's spill): it becomes pairs.parquet as it is, so
    a publish of millions of rows never holds them in memory; `rejects` and `quarantine` may likewise be files of
    their schemas, streamed into the snapshot."""
    check_name(dataset)
    pairs_path = Path(pairs) if isinstance(pairs, str | os.PathLike) else None
    if pairs_path is not None:
        kept, chash = file_pairs(pairs_path)
    else:
        pairs = conform(pairs)
        kept = pairs.num_rows
    rejects, quarantine = _side(rejects, REJECTS_SCHEMA), _side(quarantine, QUARANTINE_SCHEMA)
    total = kept + rejects.num_rows + quarantine.num_rows
    if input_rows is not None and input_rows != total:
        raise ValueError(
            f"row accounting broken for dataset {dataset!r}: input {input_rows} != kept {kept} + "
            f"rejected {rejects.num_rows} + quarantined {quarantine.num_rows}"
        )
    for name in tables:
        check_name(name, "table")
    for name in files:
        if Path(name).name != name or name.startswith("."):
            raise ValueError(f"snapshot file name {name!r} must be a plain file name")

    tmp = root / ".tmp" / uuid.uuid4().hex
    tmp.mkdir()
    writing = Writing()
    remote = _Remote(storage) if storage else None
    try:
        with writing:
            with writing.at(tmp / "pairs.parquet"):
                if pairs_path is not None:
                    _place(pairs_path, tmp / "pairs.parquet")
                else:
                    chash = content_hash(pairs)
                    pq.write_table(pairs, tmp / "pairs.parquet", compression="zstd")
            # Side tables carry their snapshot_id, known only inside the commit: they are written there, once.
            side = {"rejects": rejects, "quarantine": quarantine, **dict(sorted(tables.items()))}
            written = ["pairs.parquet", *(f"{name}.parquet" for name in side)]
            for name, content in files.items():
                target = writing.at(tmp / name).path
                assert target is not None
                if isinstance(content, bytes):
                    target.write_bytes(content)
                elif isinstance(content, str):
                    target.write_text(content, encoding="utf-8")
                else:
                    shutil.copyfile(content, target)
                written.append(name)
            if remote is not None:  # the big uploads happen before the catalog's write lock is taken
                remote.stage(tmp, ["pairs.parquet", *files])
            return _commit(
                root, tmp, written, side, writing, remote, dataset=dataset, kept=kept, rejects=rejects,
                quarantine=quarantine, parents=list(parents), params=params, meta=meta, kind=kind,
                flow_run=flow_run, cache_key=cache_key, input_rows=total, chash=chash,
            )
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if remote is not None:
            remote.discard_staging()


class _Remote:
    """A publish to object storage: files uploaded under a staging prefix, then copied to a final key unique to
    this publish once all are up, before the catalog commit; on failure the copies are deleted."""

    def __init__(self, storage: str) -> None:
        self.storage = storage
        self.staging = objects.staging_prefix(storage)
        self.staged: list[str] = []
        self.final: list[str] = []

    def stage(self, folder: Path, names: Sequence[str]) -> None:
        try:
            self.staged += objects.stage([folder / n for n in names], self.staging)
        except OSError as exc:
            raise _failed(self.staging, exc) from exc

    def promote(self, dataset: str, version: int) -> str:
        uri = objects.join(self.storage, "snapshots", dataset, f"v{version}-{uuid.uuid4().hex[:16]}")
        try:
            self.final = objects.promote(self.staged, uri)  # in staging order: the manifest, staged last, last
        except OSError as exc:
            raise _failed(uri, exc) from exc
        return uri

    def undo(self) -> None:
        objects.remove(self.final)

    def discard_staging(self) -> None:
        objects.remove(self.staged)


def _failed(uri: str, exc: OSError) -> ObjectStorageError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ObjectStorageError(f"object storage failed while writing {uri}: {first}; nothing was published "
                              "(check the endpoint, credentials and bucket, then retry)")


def _check_names(con: duckdb.DuckDBPyConnection, dataset: str, tables: Sequence[str]) -> None:
    """Case-insensitive uniqueness against what the catalog holds, checked under its write lock."""
    datasets = {r[0] for r in con.execute("SELECT DISTINCT dataset FROM snapshot_log").fetchall()}
    side = {r[0] for r in con.execute("SELECT DISTINCT unnest(tables) FROM snapshot_log").fetchall()}
    folded = {d.lower(): d for d in datasets}
    if dataset not in datasets:  # a new dataset: the creation rules apply
        check_new_name(dataset)
        if dataset.lower() in folded:
            raise ValueError(f"dataset name {dataset!r} differs only in case from the existing dataset "
                             f"{folded[dataset.lower()]!r} (SQL names are case-insensitive)")
        if dataset.lower() in {t.lower() for t in side} | catalog.user_objects(con):
            raise ValueError(f"dataset name {dataset!r} is already the name of a catalog table or view")
    for name in tables:
        if name.lower() in {"pairs", "rejects", "quarantine"} or name.lower() in folded:
            raise ValueError(f"extra table name {name!r} is reserved or names a dataset")


def _commit(root: Path, tmp: Path, written: list[str], side: dict[str, pa.Table | SideFile], writing: Writing,
            remote: _Remote | None, **kw: Any) -> str:
    dataset = kw["dataset"]
    created = datetime.now(UTC)
    trashed: Path | None = None
    final: Path | None = None
    with catalog.connect(root) as con:
        con.execute("BEGIN")
        try:
            if kw["cache_key"] is not None:
                hit = con.execute(
                    "SELECT snapshot_id FROM snapshot_log WHERE cache_key = ? AND dataset = ? "
                    "ORDER BY version DESC LIMIT 1", [kw["cache_key"], dataset]).fetchone()
                if hit:  # identical work published meanwhile by another process: that snapshot is the answer
                    con.execute("ROLLBACK")
                    return str(hit[0])
            _check_names(con, dataset, [n for n in side if n not in ("rejects", "quarantine")])
            row = con.execute("SELECT max(version) FROM snapshot_log WHERE dataset = ?", [dataset]).fetchone()
            version = (row[0] or 0) + 1 if row else 1
            snapshot_id = f"{dataset}@{version}"
            for name, tbl in side.items():
                with writing.at(tmp / f"{name}.parquet"):
                    _write_side(tbl, snapshot_id, tmp / f"{name}.parquet")
            manifest = {
                "snapshot_id": snapshot_id, "schema_version": SCHEMA_VERSION, "kind": kw["kind"],
                "parents": kw["parents"], "params": kw["params"], "meta": kw["meta"],
                "content_hash": kw["chash"], "created_at": created.isoformat(), "files": written,
                "counts": {"input": kw["input_rows"], "kept": kw["kept"],
                           "rejected": kw["rejects"].num_rows, "quarantined": kw["quarantine"].num_rows},
            }
            with writing.at(tmp / "manifest.json"):
                (tmp / "manifest.json").write_text(to_json(manifest), encoding="utf-8")
                for name in [*written, "manifest.json"]:
                    fsync_file(tmp / name)
            if remote is not None:
                remote.stage(tmp, [*(f"{name}.parquet" for name in side), "manifest.json"])
                location = remote.promote(dataset, version)
            else:
                target = root / "snapshots" / dataset / f"v{version}"
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():  # left by a process killed between rename and commit: never catalogued
                    trashed = root / ".trash" / f"{TRASH_PREFIX}{dataset}-v{version}-{uuid.uuid4().hex}"
                    os.rename(target, trashed)
                os.rename(tmp, target)
                final = target
                fsync_file(final.parent)
                location = str(final)
            with writing.at(root / catalog.CATALOG_FILE):
                con.execute(
                    "INSERT INTO snapshot_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [snapshot_id, dataset, version, kw["kind"], kw["parents"], created, kw["flow_run"],
                     to_json(kw["params"]), to_json(kw["meta"]), kw["input_rows"], kw["kept"],
                     kw["rejects"].num_rows, kw["quarantine"].num_rows, SCHEMA_VERSION, kw["chash"],
                     kw["cache_key"], location, list(side)],
                )
                catalog.rebuild_views(con, root, root / "_empty")
                con.execute("COMMIT")
        except BaseException:
            # DuckDB may already have aborted the transaction (a failed COMMIT): the original error is the news.
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            if final is not None and final.exists() and not tmp.exists():
                os.rename(final, tmp)  # back to .tmp, deleted below: nothing uncatalogued stays in snapshots/
            if remote is not None:
                remote.undo()  # best effort: what a crash leaves here, `dpo doctor` finds and deletes
            raise
    if trashed is not None:  # moved there by us a moment ago: ours to delete
        shutil.rmtree(trashed, ignore_errors=True)
    return snapshot_id
