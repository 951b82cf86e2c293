"""Derived artefacts (cached reference log-probs, ...): their own identity, never a version of a user's dataset.

A dataset name always means the user's data. What is computed from it lives here instead: one folder per
artefact under `artefacts/<kind>/<artefact_id>/` and one row in the catalog table `artefact_log`, found by the
key of everything it depends on (`cache_key`), linked to the snapshot(s) it was made from (`parents`).
Several artefacts of one snapshot coexist (other lengths, another reference model: another key). They are
exported only when asked (`with_reference_logps`).

Publishing is atomic and serialised per key: the files are written and fsynced in `.tmp/`, renamed into place and
catalogued in one transaction, under a file lock on the key, so two processes computing the same artefact
publish it once (`publishing(...)` lets the second one wait and reuse it instead of computing it again).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from storage import catalog
from storage.locks import FileLock
from storage.publish import fsync_file, to_json

TABLE = "artefact_log"
DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    artefact_id VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, cache_key VARCHAR NOT NULL UNIQUE,
    parents VARCHAR[] NOT NULL, created_at TIMESTAMPTZ NOT NULL, meta JSON, params JSON,
    rows BIGINT NOT NULL, path VARCHAR NOT NULL)"""
DATA_FILE = "data.parquet"
_KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# A constant column list, not user input.
_COLS = "artefact_id, kind, cache_key, parents, created_at, meta, params, rows, path"


@dataclass(frozen=True)
class ArtefactInfo:
    artefact_id: str
    kind: str
    cache_key: str
    parents: list[str]
    created_at: datetime
    meta: dict[str, Any]
    params: dict[str, Any]
    rows: int
    path: Path  # absolute; the catalog stores it relative to the workspace so a moved workspace still works


def artefact_id(kind: str, key: str) -> str:
    """`reference-<16 hex>`: short, stable for a key, and never a valid `dataset@version` address."""
    digest = re.sub(r"[^0-9a-f]", "", key.split(":")[-1].lower())
    if len(digest) < 16:
        raise ValueError(f"artefact key {key!r} must end in a hex digest")
    return f"{kind}-{digest[:16]}"


def _lock_path(root: Path, key: str) -> Path:
    return root / "artefacts" / ".locks" / f"{artefact_id('key', key)}.lock"


def find(root: Path, key: str) -> ArtefactInfo | None:
    rows = _select(root, "WHERE cache_key = ?", [key])
    return _info(root, rows[0]) if rows else None


def get(root: Path, artefact: str) -> ArtefactInfo:
    rows = _select(root, "WHERE artefact_id = ?", [artefact])
    if not rows:
        raise KeyError(f"no artefact {artefact!r} in workspace {root} (the catalog table `artefact_log` lists them)")
    return _info(root, rows[0])


def list_artefacts(root: Path, *, kind: str | None = None, parent: str | None = None) -> list[ArtefactInfo]:
    """Artefacts, oldest first; `parent` keeps those made from that snapshot id."""
    rows = _select(root, "ORDER BY created_at", [])
    out = [_info(root, r) for r in rows]
    return [a for a in out if (kind is None or a.kind == kind) and (parent is None or parent in a.parents)]


def read(root: Path, artefact: str) -> pa.Table:
    return pq.read_table(get(root, artefact).path / DATA_FILE)


class Publisher:
    """Handed out by `publishing`: the artefact already published under the key (`hit`), or `publish()` it."""

    def __init__(self, root: Path, kind: str, key: str) -> None:
        self.root, self.kind, self.key = root, kind, key
        self.hit = find(root, key)

    def publish(self, data: pa.Table, *, parents: list[str], meta: dict[str, Any],
                params: dict[str, Any] | None = None) -> ArtefactInfo:
        if self.hit is not None:
            return self.hit
        root, aid = self.root, artefact_id(self.kind, self.key)
        rel = Path("artefacts") / self.kind / aid
        tmp = root / ".tmp" / f"artefact-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            pq.write_table(data, tmp / DATA_FILE, compression="zstd")
            created = datetime.now(UTC)
            manifest = {"artefact_id": aid, "kind": self.kind, "cache_key": self.key, "parents": parents,
                        "meta": meta, "params": params or {}, "rows": data.num_rows,
                        "created_at": created.isoformat()}
            (tmp / "manifest.json").write_text(to_json(manifest), encoding="utf-8")
            for name in (DATA_FILE, "manifest.json"):
                fsync_file(tmp / name)
            final = root / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            with catalog.connect(root) as con:
                con.execute(DDL)
                con.execute("BEGIN")
                try:
                    if final.exists():  # left by a process killed between rename and commit: never catalogued
                        (root / ".trash").mkdir(exist_ok=True)
                        os.rename(final, root / ".trash" / f"{aid}-{uuid.uuid4().hex}")
                    os.rename(tmp, final)
                    fsync_file(final.parent)
                    con.execute(f"INSERT INTO {TABLE} ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                                [aid, self.kind, self.key, parents, created, to_json(meta), to_json(params or {}),
                                 data.num_rows, rel.as_posix()])
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.hit = get(root, aid)
        return self.hit


@contextlib.contextmanager
def publishing(root: Path, kind: str, key: str) -> Iterator[Publisher]:
    """Hold the key's lock (waiting while another process holds it) for a look-up, compute and publish.

    `with publishing(root, kind, key) as p:` -> if `p.hit` is None, compute and `p.publish(...)`: a second process
    with the same key waits at the `with` and then finds the first one's artefact instead of computing it again.
    """
    if not _KIND_RE.match(kind):
        raise ValueError(f"invalid artefact kind {kind!r}")
    with FileLock(_lock_path(root, key), wait=True, info={"key": key}):
        yield Publisher(root, kind, key)


def publish(root: Path, kind: str, key: str, data: pa.Table, *, parents: list[str], meta: dict[str, Any],
            params: dict[str, Any] | None = None) -> ArtefactInfo:
    """Write `data` as the artefact of `key` (or return the one already published under it)."""
    with publishing(root, kind, key) as p:
        return p.publish(data, parents=parents, meta=meta, params=params)


def link(root: Path, artefact: str, parent: str) -> None:
    """Record that `artefact` (found by its key) also serves snapshot `parent` (same content, another name)."""
    with catalog.connect(root) as con:
        con.execute(f"UPDATE {TABLE} SET parents = list_append(parents, ?) "  # noqa: S608
                    "WHERE artefact_id = ? AND NOT list_contains(parents, ?)", [parent, artefact, parent])


def reference_pairs(root: Path, snapshot_id: str, pairs: pa.Table, artefact: str | None = None) -> pa.Table:
    """`pairs` of `snapshot_id` with the reference log-probs of its artefact (`artefact`, or its only one).

    For an export that asked for them; raises ValueError naming the choices when there is none or several."""
    if artefact is None:
        found = list_artefacts(root, kind="reference", parent=snapshot_id)
        if not found:
            raise ValueError(f"no cached reference log-probs for {snapshot_id}: `dpo train` on it computes them "
                             "(precompute_reference = true)")
        if len(found) > 1:
            choices = "; ".join(f"{a.artefact_id} (max_length {a.meta.get('max_length')}, model "
                                f"{a.meta.get('model_path')})" for a in found)
            raise ValueError(f"{snapshot_id} has {len(found)} reference log-prob artefacts, choose one: {choices}")
        artefact = found[0].artefact_id
    return with_reference_logps(pairs, read(root, artefact))


def with_reference_logps(pairs: pa.Table, logps: pa.Table) -> pa.Table:
    """`pairs` with `ref_chosen_logp`/`ref_rejected_logp` from a reference artefact: an export asked for them."""
    if logps.column("pair_id").to_pylist() != pairs.column("pair_id").to_pylist():
        raise ValueError("the reference artefact's rows do not line up with this snapshot's pairs")
    for name in ("ref_chosen_logp", "ref_rejected_logp"):
        col = logps.column(name)
        if name in pairs.column_names:
            pairs = pairs.set_column(pairs.schema.get_field_index(name), name, col)
        else:
            pairs = pairs.append_column(name, col)
    return pairs


def _select(root: Path, clause: str, params: list[Any]) -> list[tuple]:
    """Artefact rows; `clause` is always a constant from this module, values go through parameters."""
    with catalog.connect(root, read_only=True) as con:
        try:
            return con.execute(f"SELECT {_COLS} FROM {TABLE} {clause}", params).fetchall()  # noqa: S608
        except duckdb.CatalogException:  # no artefact published in this workspace yet
            return []


def _info(root: Path, row: tuple) -> ArtefactInfo:
    aid, kind, key, parents, created, meta, params, rows, path = row
    return ArtefactInfo(aid, kind, key, list(parents), created, json.loads(meta) if meta else {},
                        json.loads(params) if params else {}, rows, root / path)
