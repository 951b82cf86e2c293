"""A workspace: one folder with `catalog.duckdb` and the immutable Parquet snapshots it catalogues.

Publishing is atomic: files are written and fsynced in `.tmp/`, the folder is renamed into `snapshots/`, and the
catalog row plus views are committed in one DuckDB transaction. Until that commit nothing is visible; a folder
left by a kill between rename and commit is not in the catalog, so it is invisible and is moved aside by the
next publish of that version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from storage import catalog, runs
from storage.schema import PAIR_SCHEMA, QUARANTINE_SCHEMA, REJECTS_SCHEMA, SCHEMA_VERSION, conform

if TYPE_CHECKING:
    import datasets
    import polars as pl

DEFAULT_WORKSPACE = "dpo-workspace"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,127}$")
_TMP_MAX_AGE_S = 3600.0
# Names of catalog views and tables; a dataset of that name would shadow them in SQL.
RESERVED_NAMES = frozenset({"snapshots", "rejects", "quarantine", "rounds", "runs", "metrics", "round_log",
                            "snapshot_log", "catalog_meta"})


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str
    dataset: str
    version: int
    path: Path
    kind: str
    parents: list[str]
    created_at: datetime
    flow_run: str | None
    params: dict[str, Any]
    meta: dict[str, Any]
    input_rows: int
    kept: int
    rejected: int
    quarantined: int
    schema_version: int
    content_hash: str
    cache_key: str | None
    tables: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["path"] = str(self.path)
        d["created_at"] = self.created_at.isoformat()
        return d


def check_name(name: str, what: str = "dataset") -> str:
    if not _NAME_RE.match(name):
        raise ValueError(
            f"invalid {what} name {name!r}: use letters, digits, '_' or '-', starting with a letter or '_'"
        )
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'hh@3' -> ('hh', 3); 'hh' -> ('hh', None) meaning the newest version."""
    name, sep, version = ref.partition("@")
    check_name(name)
    if not sep:
        return name, None
    if not version.isdigit():
        raise ValueError(f"invalid snapshot reference {ref!r}: the version after '@' must be a number")
    return name, int(version)


def content_hash(pairs: pa.Table) -> str:
    """Hash of what training sees: ids in order plus weights and cached reference log-probs."""
    h = xxhash.xxh3_128()
    for name in ("pair_id", "weight", "ref_chosen_logp", "ref_rejected_logp"):
        col = pairs.column(name).combine_chunks()
        for buf in col.buffers():
            if buf is not None:
                h.update(memoryview(buf))
    h.update(str(pairs.num_rows).encode())
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


class Workspace:
    """Entry point to storage. Cheap to construct; every catalog call opens and closes the DuckDB file."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        root = root or os.environ.get("DPO_WORKSPACE") or DEFAULT_WORKSPACE
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("snapshots", ".tmp", ".trash", "_empty"):
            (self.root / sub).mkdir(exist_ok=True)
        self._write_empty_tables()
        self._cleanup_tmp()
        # Opening an up-to-date catalog only reads it: no DDL and no write lock on every CLI call.
        if not catalog.is_current(self.root):
            catalog.init_catalog(self.root)
            self._ensure_views_root()

    # -- paths ---------------------------------------------------------------------------------------------
    def path(self, *parts: str | os.PathLike[str]) -> Path:
        """A path inside the workspace; anything resolving outside it is refused."""
        p = self.root.joinpath(*parts).resolve()
        if not p.is_relative_to(self.root):
            raise ValueError(f"path {Path(*parts)} escapes the workspace {self.root}")
        return p

    def _write_empty_tables(self) -> None:
        empty = self.root / "_empty"
        for name, schema in (("rejects", REJECTS_SCHEMA), ("quarantine", QUARANTINE_SCHEMA)):
            target = empty / f"{name}.parquet"
            if not target.exists():
                tmp = empty / f".{name}.{uuid.uuid4().hex}.parquet"
                pq.write_table(_with_snapshot_id(schema.empty_table(), ""), tmp)
                os.replace(tmp, target)

    def _cleanup_tmp(self) -> None:
        now = time.time()
        for d in (self.root / ".tmp").iterdir():
            if now - d.stat().st_mtime > _TMP_MAX_AGE_S:
                shutil.rmtree(d, ignore_errors=True)

    def _ensure_views_root(self) -> None:
        """If the workspace folder moved, views still point at the old absolute paths: rebuild them."""
        with catalog.connect(self.root) as con:
            con.execute("BEGIN")
            paths = con.execute("SELECT snapshot_id, path FROM snapshot_log").fetchall()
            stale = [(sid, p) for sid, p in paths if not Path(p).is_relative_to(self.root)]
            for sid, _old in stale:
                ds, v = parse_ref(sid)
                con.execute("UPDATE snapshot_log SET path = ? WHERE snapshot_id = ?",
                            [str(self.root / "snapshots" / ds / f"v{v}"), sid])
            first = con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'rejects'").fetchone()
            if stale or not first or first[0] == 0:
                catalog.rebuild_views(con, self.root, self.root / "_empty")
            # Recorded last, in the same transaction: the catalog counts as current only once its views are.
            con.execute("INSERT OR REPLACE INTO catalog_meta VALUES ('root', ?)", [str(self.root)])
            con.execute("COMMIT")

    # -- publish -------------------------------------------------------------------------------------------
    def publish(
        self,
        dataset: str,
        pairs: pa.Table,
        *,
        rejects: pa.Table | None = None,
        quarantine: pa.Table | None = None,
        parents: Sequence[str] = (),
        params: dict[str, Any] | None = None,
        kind: str = "raw",
        flow_run: str | None = None,
        cache_key: str | None = None,
        input_rows: int | None = None,
        tables: dict[str, pa.Table] | None = None,
        files: dict[str, bytes | str | os.PathLike[str]] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> SnapshotInfo:
        check_name(dataset)
        if dataset in RESERVED_NAMES or self._is_table_name(dataset):
            raise ValueError(f"dataset name {dataset!r} is reserved for a catalog view or table")
        pairs = conform(pairs)
        rejects = conform(rejects, REJECTS_SCHEMA) if rejects is not None else REJECTS_SCHEMA.empty_table()
        quarantine = (
            conform(quarantine, QUARANTINE_SCHEMA) if quarantine is not None else QUARANTINE_SCHEMA.empty_table()
        )
        total = pairs.num_rows + rejects.num_rows + quarantine.num_rows
        if input_rows is not None and input_rows != total:
            raise ValueError(
                f"row accounting broken for dataset {dataset!r}: input {input_rows} != kept {pairs.num_rows} + "
                f"rejected {rejects.num_rows} + quarantined {quarantine.num_rows}"
            )
        parent_ids = [self.resolve(p).snapshot_id for p in parents]
        extra_tables = dict(tables or {})
        for name in extra_tables:
            check_name(name, "table")
            if name in RESERVED_NAMES or name == "pairs" or self.list_snapshots(name):
                raise ValueError(f"extra table name {name!r} is reserved or names a dataset")
        for name in files or {}:
            if Path(name).name != name or name.startswith("."):
                raise ValueError(f"snapshot file name {name!r} must be a plain file name")

        tmp = self.root / ".tmp" / uuid.uuid4().hex
        tmp.mkdir()
        try:
            chash = content_hash(pairs)
            pq.write_table(pairs, tmp / "pairs.parquet", compression="zstd")
            # Side tables carry their snapshot_id, known only inside the commit: they are written there, once.
            side = {"rejects": rejects, "quarantine": quarantine, **dict(sorted(extra_tables.items()))}
            written = ["pairs.parquet", *(f"{name}.parquet" for name in side)]
            for name, content in (files or {}).items():
                target = tmp / name
                if isinstance(content, bytes):
                    target.write_bytes(content)
                elif isinstance(content, str):
                    target.write_text(content, encoding="utf-8")
                else:
                    shutil.copyfile(content, target)
                written.append(name)
            return self._commit(
                tmp, written, side, dataset=dataset, pairs=pairs, rejects=rejects, quarantine=quarantine,
                parents=parent_ids, params=params or {}, meta=meta or {}, kind=kind, flow_run=flow_run,
                cache_key=cache_key, input_rows=total, chash=chash,
            )
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _is_table_name(self, name: str) -> bool:
        with catalog.connect(self.root, read_only=True) as con:
            row = con.execute("SELECT count(*) FROM snapshot_log WHERE list_contains(tables, ?)", [name]).fetchone()
        return bool(row and row[0])

    def _commit(self, tmp: Path, written: list[str], side: dict[str, pa.Table], **kw: Any) -> SnapshotInfo:
        dataset = kw["dataset"]
        created = datetime.now(UTC)
        with catalog.connect(self.root) as con:
            con.execute("BEGIN")
            try:
                row = con.execute("SELECT max(version) FROM snapshot_log WHERE dataset = ?", [dataset]).fetchone()
                version = (row[0] or 0) + 1 if row else 1
                snapshot_id = f"{dataset}@{version}"
                for name, tbl in side.items():
                    pq.write_table(_with_snapshot_id(tbl, snapshot_id), tmp / f"{name}.parquet", compression="zstd")
                manifest = {
                    "snapshot_id": snapshot_id, "schema_version": SCHEMA_VERSION, "kind": kw["kind"],
                    "parents": kw["parents"], "params": kw["params"], "meta": kw["meta"],
                    "content_hash": kw["chash"], "created_at": created.isoformat(), "files": written,
                    "counts": {"input": kw["input_rows"], "kept": kw["pairs"].num_rows,
                               "rejected": kw["rejects"].num_rows, "quarantined": kw["quarantine"].num_rows},
                }
                (tmp / "manifest.json").write_text(_json(manifest), encoding="utf-8")
                for name in [*written, "manifest.json"]:
                    _fsync_file(tmp / name)
                final = self.root / "snapshots" / dataset / f"v{version}"
                final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():  # left by a process killed between rename and commit: never catalogued
                    os.rename(final, self.root / ".trash" / f"{dataset}-v{version}-{uuid.uuid4().hex}")
                os.rename(tmp, final)
                _fsync_file(final.parent)
                con.execute(
                    "INSERT INTO snapshot_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [snapshot_id, dataset, version, kw["kind"], kw["parents"], created, kw["flow_run"],
                     _json(kw["params"]), _json(kw["meta"]), kw["input_rows"], kw["pairs"].num_rows,
                     kw["rejects"].num_rows, kw["quarantine"].num_rows, SCHEMA_VERSION, kw["chash"],
                     kw["cache_key"], str(final), list(side)],
                )
                catalog.rebuild_views(con, self.root, self.root / "_empty")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return self.resolve(snapshot_id)

    # -- read ----------------------------------------------------------------------------------------------
    def resolve(self, ref: str) -> SnapshotInfo:
        dataset, version = parse_ref(ref)
        if version is None:
            rows = _select(self.root, "WHERE dataset = ? ORDER BY version DESC LIMIT 1", [dataset])
        else:
            rows = _select(self.root, "WHERE dataset = ? AND version = ?", [dataset, version])
        row = rows[0] if rows else None
        if row is None:
            known = ", ".join(s.snapshot_id for s in self.list_snapshots(dataset)) or "none"
            raise KeyError(f"no snapshot {ref!r} in workspace {self.root} (versions of {dataset!r}: {known})")
        return _info(row)

    def list_snapshots(self, dataset: str | None = None) -> list[SnapshotInfo]:
        if dataset is None:
            rows = _select(self.root, "ORDER BY dataset, version", [])
        else:
            rows = _select(self.root, "WHERE dataset = ? ORDER BY version", [dataset])
        return [_info(r) for r in rows]

    def find_cached(self, cache_key: str) -> SnapshotInfo | None:
        rows = _select(self.root, "WHERE cache_key = ? ORDER BY created_at DESC LIMIT 1", [cache_key])
        row = rows[0] if rows else None
        return _info(row) if row else None

    def read(self, ref: str) -> pa.Table:
        info = self.resolve(ref)
        return conform(pq.read_table(info.path / "pairs.parquet"), PAIR_SCHEMA)

    def read_table(self, ref: str, name: str) -> pa.Table:
        info = self.resolve(ref)
        if name != "pairs" and name not in info.tables:
            raise KeyError(f"snapshot {info.snapshot_id} has no table {name!r} (it has: {info.tables})")
        return pq.read_table(info.path / f"{name}.parquet")

    def read_rejects(self, ref: str) -> pa.Table:
        return self.read_table(ref, "rejects")

    def read_quarantine(self, ref: str) -> pa.Table:
        return self.read_table(ref, "quarantine")

    def read_polars(self, ref: str) -> pl.DataFrame:
        import polars as pl

        return pl.from_arrow(self.read(ref))  # type: ignore[return-value]

    def read_dataset(self, ref: str) -> datasets.Dataset:
        import datasets

        return datasets.Dataset(self.read(ref))

    def snapshot_file(self, ref: str, name: str) -> Path:
        info = self.resolve(ref)
        p = (info.path / name).resolve()
        if not p.is_relative_to(info.path) or not p.exists():
            raise FileNotFoundError(f"snapshot {info.snapshot_id} has no file {name!r}")
        return p

    def sql(self, query: str) -> pa.Table:
        return catalog.sql_read_only(self.root, query)

    # -- runs, metrics, rounds (catalog tables; see storage/runs.py) ---------------------------------------------
    def record_run(self, run_id: str, *, kind: str, snapshot_id: str | None, model: str | None,
                   config: dict[str, Any], code_version: str | None, status: str, output_dir: str | None,
                   parent_run: str | None = None) -> None:
        runs.record_run(self.root, run_id, kind=kind, snapshot_id=snapshot_id, model=model, config=config,
                        code_version=code_version, status=status, output_dir=output_dir, parent_run=parent_run)

    def update_run(self, run_id: str, *, status: str, finished: bool = True) -> None:
        runs.update_run(self.root, run_id, status=status, finished=finished)

    def log_metrics(self, run_id: str, rows: Sequence[tuple[int, str, float]]) -> None:
        runs.log_metrics(self.root, run_id, rows)

    def record_round(self, experiment: str, round: int, step: str, *, status: str, artefact: str | None = None,
                     details: dict[str, Any] | None = None) -> None:
        runs.record_round(self.root, experiment, round, step, status=status, artefact=artefact, details=details)

    def get_rounds(self, experiment: str) -> list[dict[str, Any]]:
        return runs.get_rounds(self.root, experiment)


# A constant column list, not user input.
_COLS = ("snapshot_id, dataset, version, path, kind, parents, created_at, flow_run, params, meta, input_rows, "
         "kept, rejected, quarantined, schema_version, content_hash, cache_key, tables")


def _select(root: Path, clause: str, params: list[Any]) -> list[tuple]:
    """Snapshot rows; `clause` is always a constant from this module, values go through parameters."""
    with catalog.connect(root, read_only=True) as con:
        return con.execute(f"SELECT {_COLS} FROM snapshot_log {clause}", params).fetchall()  # noqa: S608


def _info(row: tuple) -> SnapshotInfo:
    (sid, ds, ver, path, kind, parents, created, flow_run, params, meta, inp, kept, rej, quar, sv, ch, ck,
     tables) = row
    return SnapshotInfo(
        snapshot_id=sid, dataset=ds, version=ver, path=Path(path), kind=kind, parents=list(parents),
        created_at=created, flow_run=flow_run, params=json.loads(params) if params else {},
        meta=json.loads(meta) if meta else {}, input_rows=inp, kept=kept, rejected=rej, quarantined=quar,
        schema_version=sv, content_hash=ch, cache_key=ck, tables=[t for t in tables if t],
    )


def _with_snapshot_id(table: pa.Table, snapshot_id: str) -> pa.Table:
    if "snapshot_id" in table.column_names:
        table = table.drop_columns(["snapshot_id"])
    return table.add_column(0, "snapshot_id", pa.array([snapshot_id] * table.num_rows, pa.string()))
