"""A workspace: one folder with `catalog.duckdb` and the immutable Parquet snapshots it catalogues.

Publishing is atomic (storage/publish.py); SQL inspection runs read-only on a private copy of the catalog
(storage/sandbox.py); `dpo doctor` (storage/doctor.py) checks and repairs a workspace.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from storage import catalog, doctor, objects, publish, runs, sandbox
from storage.names import check_name, parse_ref
from storage.publish import content_hash, with_snapshot_id
from storage.schema import PAIR_SCHEMA, QUARANTINE_SCHEMA, REJECTS_SCHEMA, conform

if TYPE_CHECKING:
    import datasets
    import polars as pl

__all__ = ["DEFAULT_WORKSPACE", "SnapshotInfo", "Workspace", "check_name", "content_hash", "parse_ref"]

DEFAULT_WORKSPACE = "dpo-workspace"
OBJECT_CACHE = "object-cache"  # under .tmp/: local copies of objects for code that needs a file (ObjectPath)


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str
    dataset: str
    version: int
    path: Path | objects.ObjectPath  # an ObjectPath for a snapshot on object storage
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


class Workspace:
    """Entry point to storage. Cheap to construct; every catalog call opens and closes the DuckDB file."""

    def __init__(self, root: str | os.PathLike[str] | None = None, *, storage: str | None = None) -> None:
        """`storage`: where new snapshots' files go, an `s3://bucket/prefix` or "local" (default:
        $DPO_WORKSPACE_STORAGE, else what this workspace recorded, else its own `snapshots/`); storage/objects.py."""
        root = root or os.environ.get("DPO_WORKSPACE") or DEFAULT_WORKSPACE
        self.root = Path(root).expanduser().resolve()
        self._storage_wanted = storage or os.environ.get(objects.STORAGE_ENV) or None
        if self._storage_wanted and self._storage_wanted != objects.LOCAL:
            objects.check_storage(self._storage_wanted)  # a bad setting fails here, not at the first publish
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
                pq.write_table(with_snapshot_id(schema.empty_table(), ""), tmp)
                os.replace(tmp, target)

    def _cleanup_tmp(self) -> None:
        """Temp folders older than an hour and what publish itself moved to .trash/ (nothing else is touched)."""
        for p in [*doctor.stale_tmp(self.root), *doctor.own_trash(self.root)]:
            shutil.rmtree(p, ignore_errors=True)

    def _ensure_views_root(self) -> None:
        """Repoint a moved or copied workspace (views and paths still name the old folder) and bring views made
        by an older catalog version up to date: rebuilt in one transaction."""
        with catalog.connect(self.root) as con:
            con.execute("BEGIN")
            paths = con.execute("SELECT snapshot_id, path FROM snapshot_log").fetchall()
            # Objects on object storage do not move with the folder; only local snapshot paths are repointed.
            stale = [(sid, p) for sid, p in paths
                     if not objects.is_uri(p) and not Path(p).is_relative_to(self.root)]
            for sid, _old in stale:
                ds, v = parse_ref(sid)
                con.execute("UPDATE snapshot_log SET path = ? WHERE snapshot_id = ?",
                            [str(self.root / "snapshots" / ds / f"v{v}"), sid])
            catalog.rebuild_views(con, self.root, self.root / "_empty")
            # Recorded last, in the same transaction: the catalog counts as current only once its views are.
            con.execute("INSERT OR REPLACE INTO catalog_meta VALUES ('root', ?)", [str(self.root)])
            con.execute("COMMIT")

    # -- where snapshot files go ---------------------------------------------------------------------------
    @property
    def storage(self) -> str | None:
        """The s3:// prefix new snapshots are written under, or None for the workspace's own `snapshots/`.

        Recorded in the catalog (`catalog_meta.storage`) when set, so later commands without the variable keep
        publishing there; "local" switches back. Snapshots already published stay where their catalog row says."""
        with catalog.connect(self.root, read_only=True) as con:
            row = con.execute("SELECT value FROM catalog_meta WHERE key = 'storage'").fetchone()
        recorded = row[0] if row else None
        wanted = self._storage_wanted
        if wanted is None:
            return recorded
        setting = None if wanted == objects.LOCAL else objects.check_storage(wanted)
        if setting != recorded:
            with catalog.connect(self.root) as con:
                con.execute("INSERT OR REPLACE INTO catalog_meta VALUES ('storage', ?)", [setting])
        return setting

    # -- publish -------------------------------------------------------------------------------------------
    def publish(
        self,
        dataset: str,
        pairs: pa.Table | Path,
        *,
        rejects: pa.Table | Path | None = None,
        quarantine: pa.Table | Path | None = None,
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
        """Publish atomically (storage/publish.py). With a cache_key that this dataset already published (say by
        a parallel identical run), nothing new is written and that snapshot is returned. `pairs`, `rejects` and
        `quarantine` may be Parquet files of their schemas (an ingest's spills), placed or streamed, never read
        whole."""
        parent_ids = [self.resolve(p).snapshot_id for p in parents]
        snapshot_id = publish.publish(
            self.root, dataset, pairs, rejects=rejects, quarantine=quarantine, parents=parent_ids,
            params=params or {}, kind=kind, flow_run=flow_run, cache_key=cache_key, input_rows=input_rows,
            tables=dict(tables or {}), files=dict(files or {}), meta=meta or {}, storage=self.storage,
        )
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
        return self._info(row)

    def _info(self, row: tuple) -> SnapshotInfo:
        return _info(row, self.root / ".tmp" / OBJECT_CACHE)

    def list_snapshots(self, dataset: str | None = None) -> list[SnapshotInfo]:
        if dataset is None:
            rows = _select(self.root, "ORDER BY dataset, version", [])
        else:
            rows = _select(self.root, "WHERE dataset = ? ORDER BY version", [dataset])
        return [self._info(r) for r in rows]

    def find_cached(self, cache_key: str) -> SnapshotInfo | None:
        rows = _select(self.root, "WHERE cache_key = ? ORDER BY created_at DESC LIMIT 1", [cache_key])
        row = rows[0] if rows else None
        return self._info(row) if row else None

    def read(self, ref: str) -> pa.Table:
        info = self.resolve(ref)
        return conform(objects.read_parquet(info.path / "pairs.parquet"), PAIR_SCHEMA)

    def read_table(self, ref: str, name: str) -> pa.Table:
        info = self.resolve(ref)
        if name != "pairs" and name not in info.tables:
            raise KeyError(f"snapshot {info.snapshot_id} has no table {name!r} (it has: {info.tables})")
        return objects.read_parquet(info.path / f"{name}.parquet")

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

    def snapshot_file(self, ref: str, name: str) -> Path | objects.ObjectPath:
        info = self.resolve(ref)
        if Path(name).name != name or name.startswith("."):
            raise FileNotFoundError(f"snapshot {info.snapshot_id} has no file {name!r}")
        p = (info.path / name).resolve()
        if not p.is_relative_to(info.path) or not p.exists():
            raise FileNotFoundError(f"snapshot {info.snapshot_id} has no file {name!r}")
        return p

    def sql(self, query: str, limits: sandbox.SqlLimits | None = None) -> pa.Table:
        """Read-only SQL over the catalog's views (storage/sandbox.py); writes are refused and impossible."""
        return sandbox.sql_read_only(self.root, query, limits)

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


def _info(row: tuple, cache: Path) -> SnapshotInfo:
    (sid, ds, ver, path, kind, parents, created, flow_run, params, meta, inp, kept, rej, quar, sv, ch, ck,
     tables) = row
    return SnapshotInfo(
        snapshot_id=sid, dataset=ds, version=ver, path=objects.snapshot_path(path, cache), kind=kind,
        parents=list(parents), created_at=created, flow_run=flow_run, params=json.loads(params) if params else {},
        meta=json.loads(meta) if meta else {}, input_rows=inp, kept=kept, rejected=rej, quarantined=quar,
        schema_version=sv, content_hash=ch, cache_key=ck, tables=[t for t in tables if t],
    )
