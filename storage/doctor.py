"""`dpo doctor`: check a workspace, and with fix=True repair what is safe to repair.

Each check reports findings; a finding is `fixed` only when the repair touched nothing the workspace did not make
itself: an uncatalogued `snapshots/<ds>/vN` is deleted only when its manifest says it is that snapshot (a publish
killed between its rename and its commit), `.trash/` entries only when they carry the name publish gives them,
`.tmp/` entries only once they are older than an hour (a younger one may be a publish in progress). Everything
else is reported and left alone. The orphan check holds the catalog's write lock, so it never races a publish.
Snapshots on object storage get the same checks (`check_objects`): objects under `<prefix>/snapshots/` no catalog
row names (deleted only when the folder has the `v<N>-<16 hex>` name publish gives), staging uploads older than an
hour, and catalogued snapshots whose objects are gone.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb

from storage import catalog, objects, runs
from storage.publish import TRASH_PREFIX

TMP_MAX_AGE_S = 3600.0
# The final folder publish gives a snapshot on object storage: version and a per-publish suffix.
REMOTE_FOLDER_RE = re.compile(r"v[1-9][0-9]*-[0-9a-f]{16}")
# What publish names the folders it moves aside (older versions used `<ds>-v<N>-<uuid>` without the prefix).
TRASH_RE = re.compile(r"(" + re.escape(TRASH_PREFIX) + r")?.+-v[0-9]+-[0-9a-f]{32}")


@dataclass
class Finding:
    check: str
    path: str
    problem: str
    fixed: bool = False
    action: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"check": self.check, "path": self.path, "problem": self.problem,
                "status": "fixed" if self.fixed else "open", "action": self.action}


def stale_tmp(root: Path, max_age_s: float = TMP_MAX_AGE_S) -> list[Path]:
    now = time.time()
    tmp = root / ".tmp"
    return sorted(p for p in tmp.iterdir() if now - p.stat().st_mtime > max_age_s) if tmp.exists() else []


def own_trash(root: Path) -> list[Path]:
    trash = root / ".trash"
    return sorted(p for p in trash.iterdir() if TRASH_RE.fullmatch(p.name)) if trash.exists() else []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def check_tmp_and_trash(root: Path, fix: bool) -> list[Finding]:
    out = []
    for p in stale_tmp(root):
        f = Finding("stale-tmp", str(p), "temporary files of an unfinished write, older than an hour")
        if fix:
            _remove(p)
            f.fixed, f.action = True, "deleted"
        out.append(f)
    trash = root / ".trash"
    own = set(own_trash(root))
    for p in sorted(trash.iterdir()) if trash.exists() else []:
        if p in own:
            f = Finding("trash", str(p), "an uncatalogued folder publish moved aside")
            if fix:
                _remove(p)
                f.fixed, f.action = True, "deleted"
        else:
            f = Finding("trash", str(p), "not put there by this workspace: left alone")
        out.append(f)
    return out


def _manifest_id(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("snapshot_id"))
    except (OSError, ValueError, AttributeError):
        return None


def check_orphans(root: Path, fix: bool) -> list[Finding]:
    """Folders under snapshots/ the catalog does not know (and catalogued snapshots whose folder is gone)."""
    out = []
    with catalog.connect(root) as con:  # the write lock: no publish is between its rename and its commit
        known = {Path(p) for p in catalog.snapshot_paths(con) if not objects.is_uri(p)}
        for ds_dir in sorted((root / "snapshots").iterdir()):
            if not ds_dir.is_dir():
                continue
            for folder in sorted(ds_dir.iterdir()):
                if folder in known:
                    continue
                ours = re.fullmatch(r"v[1-9][0-9]*", folder.name) and \
                    _manifest_id(folder) == f"{ds_dir.name}@{folder.name[1:]}"
                if not ours:
                    out.append(Finding("orphan", str(folder), "not in the catalog and not made by a publish: "
                                       "left alone"))
                    continue
                f = Finding("orphan", str(folder), "snapshot folder written by a publish that never committed "
                            "(not in the catalog, invisible)")
                if fix:
                    aside = root / ".trash" / f"{TRASH_PREFIX}{ds_dir.name}-{folder.name}-{uuid.uuid4().hex}"
                    folder.rename(aside)
                    shutil.rmtree(aside)
                    f.fixed, f.action = True, "deleted"
                out.append(f)
        for path in sorted(known):
            if not (path / "pairs.parquet").exists():
                out.append(Finding("missing", str(path), "catalogued snapshot whose files are gone "
                                   "(cannot be repaired here)"))
    return out


def check_objects(root: Path, fix: bool) -> list[Finding]:
    """Objects under the workspace's s3:// prefixes that no catalog row names: snapshot folders a publish copied
    but never committed (deleted by fix: their name is one only publish gives), staging uploads older than an
    hour (deleted by fix), anything else (left alone); and catalogued snapshots whose objects are gone."""
    out: list[Finding] = []
    with catalog.connect(root, read_only=True) as con:  # a local-only workspace needs no lock and no request
        if not _uses_objects(con):
            return out
    with catalog.connect(root) as con:  # the write lock: no publish is between its copy and its commit
        remote = {p for p in catalog.snapshot_paths(con) if objects.is_uri(p)}
        row = con.execute("SELECT value FROM catalog_meta WHERE key = 'storage'").fetchone()
        prefixes = {p.rsplit("/snapshots/", 1)[0] for p in remote} | ({row[0]} if row and row[0] else set())
        for prefix in sorted(prefixes):
            out += _remote_orphans(prefix, remote, fix)
        for path in sorted(remote):
            if not objects.exists(objects.join(path, "pairs.parquet")):
                out.append(Finding("missing", path, "catalogued snapshot whose objects are gone "
                                   "(cannot be repaired here)"))
    return out


def _uses_objects(con: duckdb.DuckDBPyConnection) -> bool:
    row = con.execute("SELECT value FROM catalog_meta WHERE key = 'storage'").fetchone()
    return bool(row and row[0]) or any(objects.is_uri(p) for p in catalog.snapshot_paths(con))


def _remote_orphans(prefix: str, known: set[str], fix: bool) -> list[Finding]:
    folders: dict[str, list[str]] = {}
    for info in objects.list_files(objects.join(prefix, "snapshots")):
        uri = objects.SCHEME + info.path
        folders.setdefault(uri.rsplit("/", 1)[0], []).append(uri)
    out = []
    for folder, files in sorted(folders.items()):
        if folder in known:
            continue
        if not REMOTE_FOLDER_RE.fullmatch(folder.rsplit("/", 1)[1]):
            out.append(Finding("orphan", folder, "not in the catalog and not made by a publish: left alone"))
            continue
        f = Finding("orphan", folder, f"{len(files)} object(s) copied by a publish that never committed "
                    "(not in the catalog, invisible)")
        if fix:
            objects.remove(files)
            f.fixed, f.action = True, "deleted"
        out.append(f)
    now = time.time()
    for info in objects.list_files(objects.join(prefix, objects.STAGING)):
        if info.mtime is not None and now - info.mtime.timestamp() > TMP_MAX_AGE_S:
            f = Finding("stale-staging", objects.SCHEME + info.path, "upload of an unfinished publish, older "
                        "than an hour")
            if fix:
                objects.remove([objects.SCHEME + info.path])
                f.fixed, f.action = True, "deleted"
            out.append(f)
    return out


def check_views(root: Path, fix: bool) -> list[Finding]:
    """Every view must bind; broken views the catalog made are rebuilt, a user's broken views are reported."""
    broken: list[tuple[str, bool, str]] = []
    with catalog.connect(root, read_only=True) as con:
        catalog.register_object_storage(con, catalog.snapshot_paths(con))
        ours = {r[0] for r in con.execute("SELECT name FROM catalog_views").fetchall()}
        names = [r[0] for r in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = current_database()"
        ).fetchall()]
        for name in names:
            try:
                con.execute(f"SELECT * FROM {catalog.quote_ident(name)} LIMIT 0")  # noqa: S608 (quoted)
            except duckdb.Error as exc:
                broken.append((name, name in ours, str(exc).splitlines()[0][:200]))
        present = set(names)
        broken += [(name, True, "missing") for name in catalog.wanted_views(con, root, root / "_empty")
                   if name not in present]
    out = [Finding("view", name, (err if err == "missing" else f"broken: {err}")
                   + ("" if mine else " (a user's view: left alone)"))
           for name, mine, err in broken]
    if fix and any(mine for _, mine, _ in broken):
        with catalog.connect(root) as con:
            con.execute("BEGIN")
            catalog.rebuild_views(con, root, root / "_empty")
            con.execute("COMMIT")
        for f, (_, mine, _) in zip(out, broken, strict=True):
            if mine:
                f.fixed, f.action = True, "rebuilt from the snapshot log"
    return out


def check_runs(root: Path, fix: bool) -> list[Finding]:
    with catalog.connect(root, read_only=True) as con:
        cols = {r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'runs' "
            "AND database_name = current_database()").fetchall()}
        who = "pid, host" if {"pid", "host"} <= cols else "NULL, NULL"
        running = con.execute(f"SELECT run_id, output_dir, {who} FROM runs WHERE status = 'running'").fetchall()  # noqa: S608
    dead = [r for r in running if runs.process_gone(r[1], r[2], r[3])]
    out = [Finding("run", str(run_id), "status `running` but its process is gone") for run_id, *_ in dead]
    if fix and dead:
        marked = set(runs.mark_dead_runs(root))
        for f in out:
            if f.path in marked:
                f.fixed, f.action = True, "marked interrupted"
    return out


CHECKS = (check_tmp_and_trash, check_orphans, check_objects, check_views, check_runs)


def diagnose(root: Path, fix: bool = False) -> list[Finding]:
    """Run every check (in order); with fix=True repair what is safe. Open findings remain `fixed=False`."""
    return [f for check in CHECKS for f in check(root, fix)]
