"""The DuckDB catalog: tables for snapshots, runs, metrics and rounds, and the SQL views over the Parquet files.

The catalog is a single `catalog.duckdb` file. Every operation opens it, does one transaction and closes it,
so a killed process never holds it and DuckDB's WAL recovery rolls back a transaction cut short by a kill.

Any DuckDB 1.x client opens it: the file is written in storage format v1.0.0 (`STORAGE_VERSION`), whatever
DuckDB this code runs. Views read absolute Parquet paths, so a plain `duckdb` client opened from any folder sees
the same data, and each view carries a guard: it runs only while the catalog file sits inside the workspace its
paths point into. A moved or copied catalog therefore fails loudly ("... run `dpo doctor --fix`") instead of
silently reading another workspace's files; any `dpo` command on the new folder repoints the views.
Only views the catalog made (listed in `catalog_views`) are ever dropped or replaced: a user's own views and
macros survive publishes.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import duckdb

from storage import objects
from storage.errors import CatalogBusyError, DiskFullError, StorageError, is_disk_full
from storage.names import CATALOG_OBJECTS

CATALOG_FILE = "catalog.duckdb"
CATALOG_VERSION = 3
# The oldest storage format of DuckDB 1.x: every 1.x client (and later) reads it.
STORAGE_VERSION = "v1.0.0"
_CONFIG = {"storage_compatibility_version": STORAGE_VERSION}
# How long a writer waits for another process's lock before giving up (override: $DPO_CATALOG_WAIT_S).
DEFAULT_WAIT_S = 120.0
RESERVED_VIEWS = frozenset({"snapshots", "rounds"})

DDL = [
    """CREATE TABLE IF NOT EXISTS catalog_meta (key VARCHAR PRIMARY KEY, value VARCHAR)""",
    """CREATE TABLE IF NOT EXISTS snapshot_log (
        snapshot_id VARCHAR PRIMARY KEY, dataset VARCHAR NOT NULL, version INTEGER NOT NULL,
        kind VARCHAR NOT NULL, parents VARCHAR[] NOT NULL, created_at TIMESTAMPTZ NOT NULL,
        flow_run VARCHAR, params JSON, meta JSON, input_rows BIGINT NOT NULL, kept BIGINT NOT NULL,
        rejected BIGINT NOT NULL, quarantined BIGINT NOT NULL, schema_version INTEGER NOT NULL,
        content_hash VARCHAR NOT NULL, cache_key VARCHAR, path VARCHAR NOT NULL, tables VARCHAR[] NOT NULL,
        UNIQUE (dataset, version))""",
    """CREATE TABLE IF NOT EXISTS runs (
        run_id VARCHAR PRIMARY KEY, kind VARCHAR, snapshot_id VARCHAR, model VARCHAR, config JSON,
        code_version VARCHAR, status VARCHAR, output_dir VARCHAR, parent_run VARCHAR,
        started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ)""",
    """CREATE TABLE IF NOT EXISTS metrics (
        run_id VARCHAR NOT NULL, step INTEGER NOT NULL, name VARCHAR NOT NULL, value DOUBLE,
        logged_at TIMESTAMPTZ, PRIMARY KEY (run_id, step, name))""",
    """CREATE TABLE IF NOT EXISTS round_log (
        experiment VARCHAR NOT NULL, round INTEGER NOT NULL, step VARCHAR NOT NULL, status VARCHAR NOT NULL,
        artefact VARCHAR, details JSON, updated_at TIMESTAMPTZ, PRIMARY KEY (experiment, round, step))""",
    # The data views this catalog made (and so may drop or replace); every other view is the user's.
    """CREATE TABLE IF NOT EXISTS catalog_views (name VARCHAR PRIMARY KEY)""",
    """CREATE OR REPLACE VIEW snapshots AS SELECT snapshot_id, dataset, version, kind, parents, created_at,
        flow_run, input_rows, kept, rejected, quarantined, schema_version, content_hash, cache_key, params,
        meta, path FROM snapshot_log ORDER BY dataset, version""",
    """CREATE OR REPLACE VIEW rounds AS SELECT * FROM round_log ORDER BY experiment, round, updated_at""",
]


def quote_ident(name: str) -> str:
    """Quote a SQL identifier; doubling quotes makes any name safe."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _holder(message: str) -> str:
    """Who holds the lock, from DuckDB's "Conflicting lock is held in <program> (PID n)"."""
    m = re.search(r"held in (.+?) \(PID (\d+)\)", message)
    return f"{m.group(1)} (PID {m.group(2)})" if m else "another process"


@contextlib.contextmanager
def connect(root: Path, *, read_only: bool = False,
            lock_timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the catalog, waiting for another process's lock (DuckDB allows one writing process per file).

    While it waits it says so once ("waiting for the catalog: held by ..."); after `lock_timeout_s` it raises
    CatalogBusyError naming the holder. A full disk raises DiskFullError.
    """
    path = root / CATALOG_FILE
    if lock_timeout_s is None:
        lock_timeout_s = float(os.environ.get("DPO_CATALOG_WAIT_S", DEFAULT_WAIT_S))
    deadline = time.monotonic() + lock_timeout_s
    delay, warned = 0.02, False
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=_CONFIG)
            break
        except duckdb.IOException as exc:
            if is_disk_full(exc):
                raise DiskFullError(f"no space left on device while writing {path}") from exc
            if "lock" not in str(exc).lower():
                raise StorageError(f"cannot open catalog {path}: {exc}") from exc
            holder = _holder(str(exc))
            if time.monotonic() > deadline:
                raise CatalogBusyError(
                    f"the catalog {path} is held by {holder}; gave up after {lock_timeout_s:.0f} s "
                    "(close that DuckDB client or wait for it to finish, then retry; $DPO_CATALOG_WAIT_S sets "
                    "the wait)"
                ) from exc
            if not warned:  # straight to stderr: a logging handler must not be able to swallow or break it
                print(f"waiting for the catalog {path}: held by {holder}", file=sys.stderr, flush=True)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    try:
        yield con
    finally:
        con.close()


def storage_version(root: Path) -> str:
    with connect(root, read_only=True) as con:
        row = con.execute(
            "SELECT tags['storage_version'] FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchone()
    return str(row[0]) if row and row[0] else ""


def _migrate_storage(root: Path) -> None:
    """Rewrite a catalog made in a newer storage format (DuckDB 2.x default) as v1.0.0, keeping everything."""
    path = root / CATALOG_FILE
    tmp = root / f".{CATALOG_FILE}.migrate"
    tmp.unlink(missing_ok=True)
    with connect(root) as con:
        version = quote_literal(STORAGE_VERSION)
        con.execute(f"ATTACH {quote_literal(str(tmp))} AS dpo_migrated (STORAGE_VERSION {version})")
        con.execute(f"COPY FROM DATABASE {quote_ident(current_db(con))} TO dpo_migrated")
        con.execute("DETACH dpo_migrated")
        os.replace(tmp, path)  # while the old file is still locked by us: no writer slips in between


def current_db(con: duckdb.DuckDBPyConnection) -> str:
    row = con.execute("SELECT current_database()").fetchone()
    return str(row[0]) if row else "main"


def init_catalog(root: Path) -> None:
    if (root / CATALOG_FILE).exists() and not storage_version(root).startswith("v1."):
        _migrate_storage(root)
    with connect(root) as con:
        con.execute("BEGIN")
        for stmt in DDL:
            con.execute(stmt)
        con.execute("INSERT OR REPLACE INTO catalog_meta VALUES ('catalog_version', ?)", [str(CATALOG_VERSION)])
        con.execute("COMMIT")


def is_current(root: Path) -> bool:
    """True when the catalog exists, has this code's tables and its views point into `root` (nothing to write)."""
    if not (root / CATALOG_FILE).exists():
        return False
    with connect(root, read_only=True) as con:
        try:
            meta = dict(con.execute("SELECT key, value FROM catalog_meta").fetchall())
        except duckdb.CatalogException:
            return False
    return meta.get("catalog_version") == str(CATALOG_VERSION) and meta.get("root") == str(root)


def _guard(root: Path) -> str:
    """A WHERE condition that holds only while the catalog file lies inside `root` (the sandbox's private copy
    lies in `root/.tmp`); otherwise the view raises an error telling how to repoint it."""
    prefix = quote_literal(str(root) + "/")
    msg = quote_literal(
        f"this catalog's views read the snapshots under {root}, but the catalog file is not in that folder "
        "(the workspace was moved or copied): run `dpo -w <the folder it is in now> doctor --fix` to repoint them"
    )
    # CASE, not OR: DuckDB may evaluate both sides of an OR, and error() must run only when the check fails.
    return (f"CASE WHEN (SELECT bool_or(starts_with(path, {prefix})) FROM duckdb_databases()) "  # noqa: S608
            f"THEN true ELSE error({msg}) END")


def read_parquet_sql(files: Sequence[str], root: Path, locate: Callable[[str], str] = str) -> str:
    """A guarded SELECT over Parquet files (local paths or s3:// URIs, each passed through `locate`); every path
    is quoted as a SQL string literal."""
    listed = "[" + ", ".join(quote_literal(locate(f)) for f in files) + "]"
    return f"SELECT * FROM read_parquet({listed}, union_by_name = true) WHERE {_guard(root)}"  # noqa: S608


def snapshot_file(path: str, name: str) -> str:
    """A file of a snapshot folder: `path` is an absolute local path or an s3:// URI, both '/'-separated."""
    return f"{path.rstrip('/')}/{name}"


def register_object_storage(con: duckdb.DuckDBPyConnection, paths: Sequence[str]) -> None:
    """Let this connection read (and bind views over) s3:// objects through pyarrow's S3 client: DuckDB's own
    httpfs extension is not installed, and is never downloaded at run time."""
    if any(objects.is_uri(p) for p in paths):
        con.register_filesystem(objects.S3Files(objects.s3_filesystem()))


def user_objects(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Names of views, tables and macros in the catalog that it did not make itself (case-folded)."""
    ours = {r[0].lower() for r in con.execute("SELECT name FROM catalog_views").fetchall()}
    names = con.execute(
        "SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = current_database() "
        "UNION SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "UNION SELECT function_name FROM duckdb_functions() WHERE database_name = current_database() "
        "AND function_type IN ('macro', 'table_macro') AND NOT internal"
    ).fetchall()
    return {n[0].lower() for n in names} - ours - CATALOG_OBJECTS - RESERVED_VIEWS


def snapshot_paths(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [r[0] for r in con.execute("SELECT path FROM snapshot_log").fetchall()]


def wanted_views(con: duckdb.DuckDBPyConnection, root: Path, empty_dir: Path,
                 locate: Callable[[str], str] = str) -> dict[str, str]:
    """The data views the snapshot log calls for: name -> SELECT (each file path or URI mapped by `locate`)."""
    rows = con.execute(
        "SELECT dataset, version, path, tables FROM snapshot_log ORDER BY dataset, version"
    ).fetchall()
    wanted: dict[str, str] = {}
    newest: dict[str, str] = {}
    table_files: dict[str, list[str]] = {"rejects": [], "quarantine": []}
    for dataset, version, path, tables in rows:
        pairs = snapshot_file(path, "pairs.parquet")
        sel = read_parquet_sql([pairs], root, locate)
        wanted[f"{dataset}@{version}"] = sel
        wanted[f"{dataset}_v{version}"] = sel
        newest[dataset] = pairs
        for name in tables:
            table_files.setdefault(name, []).append(snapshot_file(path, f"{name}.parquet"))
    for dataset, pairs in newest.items():
        wanted[dataset] = read_parquet_sql([pairs], root, locate)
    for name, files in table_files.items():
        wanted[name] = read_parquet_sql(files or [str(empty_dir / f"{name}.parquet")], root, locate)
    return wanted


def rebuild_views(con: duckdb.DuckDBPyConnection, root: Path, empty_dir: Path) -> None:
    """Recreate every data view from the snapshot log (called inside the publishing transaction).

    Only views listed in `catalog_views` are dropped or replaced; a wanted name that a user's own view, table
    or macro already holds is refused (nothing of the user's is overwritten).
    """
    register_object_storage(con, snapshot_paths(con))  # CREATE VIEW binds: it reads each file's schema
    wanted = wanted_views(con, root, empty_dir)
    tracked = {r[0] for r in con.execute("SELECT name FROM catalog_views").fetchall()}
    if not tracked:  # a catalog from before views were tracked: the ones it made are those it would make now
        existing = {r[0] for r in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal AND database_name = current_database()"
        ).fetchall()}
        tracked = existing & set(wanted)
    users = user_objects(con)
    clash = sorted(n for n in wanted if n.lower() in users or n in RESERVED_VIEWS)
    if clash:
        raise ValueError(f"name(s) {clash} are already used by a view, table or macro of the catalog that "
                         "it did not create: rename that object or choose another dataset/table name")
    for name in sorted(tracked - set(wanted)):
        con.execute(f"DROP VIEW IF EXISTS {quote_ident(name)}")
    for name, sel in wanted.items():
        con.execute(f"CREATE OR REPLACE VIEW {quote_ident(name)} AS {sel}")
    con.execute("DELETE FROM catalog_views")
    con.executemany("INSERT INTO catalog_views VALUES (?)", [[n] for n in sorted(wanted)])
