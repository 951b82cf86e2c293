"""The DuckDB catalog: tables for snapshots, runs, metrics and rounds, and the SQL views over the Parquet files.

The catalog is a single `catalog.duckdb` file. Every operation opens it, does one transaction and closes it,
so a killed process never holds it and DuckDB's WAL recovery rolls back a transaction cut short by a kill.
Views use absolute Parquet paths so a plain `duckdb` client opened from anywhere sees the same data.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

CATALOG_FILE = "catalog.duckdb"
CATALOG_VERSION = 1

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


@contextlib.contextmanager
def connect(root: Path, *, read_only: bool = False, lock_timeout_s: float = 60.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the catalog, waiting for another writer's lock (DuckDB allows one writing process per file)."""
    path = root / CATALOG_FILE
    deadline = time.monotonic() + lock_timeout_s
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise RuntimeError(f"cannot open catalog {path}: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    try:
        yield con
    finally:
        con.close()


def init_catalog(root: Path) -> None:
    with connect(root) as con:
        for stmt in DDL:
            con.execute(stmt)
        con.execute("INSERT OR REPLACE INTO catalog_meta VALUES ('catalog_version', ?)", [str(CATALOG_VERSION)])


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


def _read_parquet_sql(paths: Sequence[Path]) -> str:
    """A SELECT over Parquet files; every path is quoted as a SQL string literal."""
    files = "[" + ", ".join(quote_literal(str(p)) for p in paths) + "]"
    return f"SELECT * FROM read_parquet({files}, union_by_name = true)"  # noqa: S608


def rebuild_views(con: duckdb.DuckDBPyConnection, root: Path, empty_dir: Path) -> None:
    """Recreate every data view from the snapshot log (called inside the publishing transaction)."""
    rows = con.execute(
        "SELECT dataset, version, path, tables FROM snapshot_log ORDER BY dataset, version"
    ).fetchall()
    existing = {
        r[0]
        for r in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main'"
        ).fetchall()
    }
    wanted: dict[str, str] = {}
    newest: dict[str, Path] = {}
    table_files: dict[str, list[Path]] = {"rejects": [], "quarantine": []}
    for dataset, version, path, tables in rows:
        pairs = Path(path) / "pairs.parquet"
        sel = _read_parquet_sql([pairs])
        wanted[f"{dataset}@{version}"] = sel
        wanted[f"{dataset}_v{version}"] = sel
        newest[dataset] = pairs
        for name in tables:
            table_files.setdefault(name, []).append(Path(path) / f"{name}.parquet")
    for dataset, pairs in newest.items():
        wanted[dataset] = _read_parquet_sql([pairs])
    for name, files in table_files.items():
        if not files:
            files = [empty_dir / f"{name}.parquet"]
        wanted[name] = _read_parquet_sql(files)
    reserved = {"snapshots", "rounds"}
    for name in sorted(existing - set(wanted) - reserved):
        con.execute(f"DROP VIEW IF EXISTS {quote_ident(name)}")
    for name, sel in wanted.items():
        if name in reserved:
            raise ValueError(f"dataset or table name {name!r} is reserved")
        con.execute(f"CREATE OR REPLACE VIEW {quote_ident(name)} AS {sel}")


READ_ONLY_TYPES = {"SELECT", "EXPLAIN"}


def sql_read_only(root: Path, query: str) -> pa.Table:
    """Run SELECT/EXPLAIN statements read-only; anything else is refused before it runs.

    Besides the read-only connection, file access is confined to the workspace and the configuration is
    locked, so `read_csv('/etc/passwd')` or `COPY ... TO` cannot reach outside it.
    """

    with connect(root, read_only=True) as con:
        statements = con.extract_statements(query)
        if not statements:
            raise ValueError("empty SQL")
        for stmt in statements:
            kind = stmt.type.name
            if kind not in READ_ONLY_TYPES:
                raise ValueError(
                    f"refused: the SQL inspection path is read-only and this is a {kind} statement "
                    f"({stmt.query.strip()[:80]!r}); only SELECT/EXPLAIN (incl. DESCRIBE/SHOW/SUMMARIZE) run here"
                )
        con.execute(f"SET allowed_directories = [{quote_literal(str(root) + '/')}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        result: pa.Table | None = None
        for stmt in statements:
            rel = con.sql(stmt.query)
            result = rel.to_arrow_table() if rel is not None else pa.table({})
        assert result is not None
        return result
