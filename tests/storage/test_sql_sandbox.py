"""Read-only SQL is read-only: an adversarial corpus, each statement asserted harmless (every workspace file
hashed before and after, catalog intact), the second layer tested with the check bypassed, and the limits."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import duckdb
import pytest

from storage import sandbox
from storage.errors import QueryLimitError, UnsafeQueryError
from storage.schema import rejects_table
from storage.workspace import Workspace

# {ws}: workspace root, {snap}: a published pairs.parquet, {cat}: catalog.duckdb.
CORPUS = [
    # the reported ones
    "EXPLAIN ANALYZE COPY (SELECT 'x') TO '{cat}' (FORMAT csv)",
    "EXPLAIN ANALYZE COPY (SELECT 'x') TO '{snap}' (FORMAT parquet)",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "CHECKPOINT", "FORCE CHECKPOINT", "VACUUM", "VACUUM ANALYZE", "ANALYZE",
    # writes in every shape
    "COPY (SELECT 1) TO '{ws}/out.csv'", "COPY (SELECT 1) TO '{snap}' (FORMAT parquet)",
    "COPY snapshot_log TO '{ws}/snapshots/x.parquet'", "COPY snapshot_log FROM '{snap}'",
    "EXPORT DATABASE '{ws}/export'", "IMPORT DATABASE '{ws}/export'",
    "ATTACH '{ws}/other.duckdb' AS o", "ATTACH '{cat}' AS c2", "DETACH dpo", "USE memory",
    "CREATE TABLE t AS SELECT 1", "CREATE OR REPLACE VIEW hh AS SELECT 1", "CREATE MACRO m(x) AS x",
    "CREATE SEQUENCE s", "CREATE SCHEMA s", "CREATE TYPE e AS ENUM ('a')", "CREATE INDEX i ON runs(run_id)",
    "CREATE TEMP TABLE t AS SELECT 1", "CREATE SECRET (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "DROP VIEW hh", "DROP TABLE snapshot_log", "DROP VIEW IF EXISTS snapshots", "ALTER TABLE runs ADD COLUMN x INT",
    "ALTER VIEW hh RENAME TO h2", "INSERT INTO runs (run_id) VALUES ('x')", "UPDATE snapshot_log SET kept = 0",
    "DELETE FROM metrics", "TRUNCATE snapshot_log", "INSERT OR REPLACE INTO catalog_meta VALUES ('root', '/x')",
    "MERGE INTO runs USING (SELECT 'x' AS run_id) s ON runs.run_id = s.run_id WHEN NOT MATCHED THEN INSERT (run_id) VALUES (s.run_id)",
    "WITH x AS (SELECT 1) INSERT INTO runs (run_id) SELECT 'y' FROM x",
    "PRAGMA force_checkpoint", "PRAGMA enable_profiling", "SET threads = 64", "SET memory_limit = '100GB'",
    "SET enable_external_access = true", "RESET lock_configuration", "SET VARIABLE x = 1",
    "SET profiling_output = '{ws}/p.json'", "INSTALL httpfs", "LOAD httpfs", "FORCE INSTALL json",
    "CALL checkpoint()", "CALL force_checkpoint()", "CALL pragma_version()",
    "BEGIN TRANSACTION", "COMMIT", "ROLLBACK", "PREPARE p AS SELECT 1", "EXECUTE p", "DEALLOCATE p",
    "SELECT 1; DELETE FROM metrics", "SELECT 1; COPY (SELECT 2) TO '{ws}/x.csv'",
    "PIVOT hh ON source USING count(*)",
    # reads that try to escape or to write through a table function
    "SELECT * FROM checkpoint()", "SELECT * FROM force_checkpoint()",
    "SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_text('{cat}')",
    "SELECT * FROM read_text('{ws}/snapshots/../catalog.duckdb')",
    "SELECT * FROM read_parquet('dpo-snapshots://{ws}/snapshots/../catalog.duckdb')",
    "SELECT * FROM read_blob('{snap}')", "SELECT * FROM query('DELETE FROM metrics')",
    "SELECT * FROM query_table('metrics')", "SELECT nextval('s')", "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM duckdb_secrets()", "SELECT * FROM sniff_csv('/etc/passwd')",
    "SELECT * FROM '{ws}/snapshots/hh/v1/pairs.parquet'", "FROM read_json('/etc/hostname')",
    "EXPLAIN SELECT * FROM checkpoint()", "EXPLAIN (FORMAT json) COPY (SELECT 1) TO '{ws}/e.csv'",
    "EXPLAIN /* c */ ANALYZE DELETE FROM metrics", "DESCRIBE CREATE TABLE t AS SELECT 1",
    "EXPLAIN ANALYSE COPY (SELECT 1) TO '{ws}/a.csv'", "EXPLAIN (ANALYZE) COPY (SELECT 1) TO '{ws}/b.csv'",
    "SUMMARIZE SELECT * FROM force_checkpoint()", "DESCRIBE SELECT * FROM force_checkpoint()",
    "SELECT (SELECT count(*) FROM force_checkpoint())", "SELECT * FROM range(3) WHERE EXISTS (FROM checkpoint())",
    "WITH RECURSIVE t AS (SELECT * FROM force_checkpoint()) SELECT * FROM t",
    "SELECT * FROM hh UNION ALL SELECT * FROM force_checkpoint()",
    "SELECT list_transform([1], x -> (SELECT 1 FROM force_checkpoint()))",
    # reads that must run
    "SELECT count(*) FROM hh", "SUMMARIZE hh", "DESCRIBE hh", "SHOW TABLES", "EXPLAIN SELECT * FROM hh",
    "EXPLAIN ANALYZE SELECT count(*) FROM hh", "FROM snapshots", "SELECT * FROM rejects",
]
READS = {"SELECT count(*) FROM hh", "SUMMARIZE hh", "DESCRIBE hh", "SHOW TABLES", "EXPLAIN SELECT * FROM hh",
         "EXPLAIN ANALYZE SELECT count(*) FROM hh", "FROM snapshots", "SELECT * FROM rejects"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, request) -> Workspace:
    from storage.schema import build_pair_table

    n = 12
    pairs = build_pair_table({
        "prompt": [[{"role": "user", "content": f"question {i}"}] for i in range(n)],
        "chosen": [f"good {i}" for i in range(n)], "rejected": [f"bad {i}" for i in range(n)],
        "source": ["unit"] * n, "source_row": list(range(n)),
    })
    w = Workspace(tmp_path_factory.mktemp("sandbox") / "ws")
    w.publish("hh", pairs.slice(2), rejects=rejects_table(pairs.slice(0, 2), "dedup", "dup", None))
    w.publish("hh", pairs.slice(4), parents=["hh@1"])
    return w


def _hashes(root: Path) -> dict[str, str]:
    """Every file of the workspace except the sandbox's own temp area (.tmp/)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".tmp" not in p.relative_to(root).parts}


def _fmt(stmt: str, root: Path) -> str:
    return stmt.format(ws=root, snap=root / "snapshots" / "hh" / "v1" / "pairs.parquet",
                       cat=root / "catalog.duckdb")


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 60 and len(set(CORPUS)) == len(CORPUS)


@pytest.mark.parametrize("stmt", CORPUS)
def test_every_statement_is_harmless(ws, stmt):
    before = _hashes(ws.root)
    query = _fmt(stmt, ws.root)
    try:
        ws.sql(query)
        ran = True
    except UnsafeQueryError as exc:
        assert "refused" in str(exc) or "syntax" in str(exc)
        ran = False
    except duckdb.Error:  # the second layer stopped it (permission, read-only catalog, missing object)
        ran = False
    assert _hashes(ws.root) == before
    assert ran == (stmt in READS)
    assert ws.sql("SELECT count(*) AS n FROM hh").to_pylist() == [{"n": 8}]
    assert [s.snapshot_id for s in ws.list_snapshots()] == ["hh@1", "hh@2"]
    assert not list(ws.root.glob("*.csv")) and not (ws.root / "export").exists()


WRITES = [
    "COPY (SELECT 1) TO '{snap}' (FORMAT parquet)", "COPY (SELECT 'x') TO '{cat}' (FORMAT csv)",
    "COPY (SELECT 1) TO 'dpo-snapshots://{snap}' (FORMAT parquet)", "COPY (SELECT 1) TO '{ws}/new.csv'",
    "CREATE TABLE t AS SELECT 1", "DROP VIEW hh", "DELETE FROM snapshot_log", "CHECKPOINT",
    "ATTACH '{ws}/other.duckdb' AS o", "EXPORT DATABASE '{ws}/export'", "SET enable_external_access = true",
    "INSTALL httpfs", "SELECT * FROM force_checkpoint()", "SELECT * FROM read_text('{cat}')",
]


@pytest.mark.parametrize("stmt", WRITES)
def test_second_layer_holds_when_the_check_is_bypassed(ws, stmt):
    """Even run without the statement check, a write cannot reach the workspace."""
    before = _hashes(ws.root)
    try:
        rows = sandbox.run_statements(ws.root, [_fmt(stmt, ws.root)], sandbox.SqlLimits())
    except duckdb.Error:
        rows = None
    if "read_text" in stmt:  # the catalog file is outside what the sandbox can read
        assert rows is None
    assert _hashes(ws.root) == before
    assert ws.sql("SELECT count(*) AS n FROM hh").to_pylist() == [{"n": 8}]


def test_timeout_stops_a_cross_join(ws):
    t0 = time.monotonic()
    with pytest.raises(QueryLimitError, match=r"longer than the 1 s limit"):
        ws.sql("SELECT count(*) FROM range(100000000) a, range(100000000) b", sandbox.SqlLimits(timeout_s=1))
    assert time.monotonic() - t0 < 15


def test_memory_limit_stops_a_string_agg(ws):
    with pytest.raises(QueryLimitError, match="memory limit"):
        ws.sql("SELECT length(string_agg(repeat('x', 1000), '')) FROM range(3000000)",
               sandbox.SqlLimits(memory_limit="200MB", timeout_s=60))


def test_cli_sql_timeout_is_a_clear_error(ws, capsys):
    from pipelines.cli import main

    rc = main(["-w", str(ws.root), "sql", "--timeout", "1",
               "SELECT count(*) FROM range(100000000) a, range(100000000) b"])
    assert rc == 2
    assert "longer than the 1 s limit" in capsys.readouterr().err


def test_user_views_and_macros_work_in_the_sandbox(tmp_path, small_pairs):
    ws = Workspace(tmp_path / "ws")
    ws.publish("hh", small_pairs)
    con = duckdb.connect(str(ws.root / "catalog.duckdb"))
    con.execute("CREATE VIEW first3 AS SELECT * FROM hh ORDER BY source_row LIMIT 3")
    con.execute("CREATE MACRO twice(x) AS 2 * x")
    con.close()
    assert ws.sql("SELECT twice(count(*)) AS n FROM first3").to_pylist() == [{"n": 6}]


def test_concurrent_queries_share_the_cached_copy(ws):
    errors: list[BaseException] = []

    def q() -> None:
        try:
            assert ws.sql("SELECT count(*) AS n FROM hh").to_pylist() == [{"n": 8}]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=q) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
