"""Any DuckDB 1.x client opens the catalog; a moved or copied catalog never silently reads another workspace's
files; a user's own views and macros survive publishes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from storage import catalog
from storage.workspace import Workspace

DUCKDB_CLI = shutil.which("duckdb", path=str(Path(sys.executable).parent)) or shutil.which("duckdb")


def _cli(db: Path, sql: str) -> subprocess.CompletedProcess:
    assert DUCKDB_CLI, "duckdb-cli (the dev extra) is not installed"
    return subprocess.run([DUCKDB_CLI, "-readonly", "-csv", str(db), "-c", sql], capture_output=True, text=True,
                          timeout=60, cwd="/")


def test_duckdb_1x_cli_opens_the_catalog_and_queries_views(workspace, small_pairs):
    workspace.publish("hh", small_pairs)
    workspace.publish("hh", small_pairs.slice(4), parents=["hh@1"])
    version = subprocess.run([DUCKDB_CLI, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("v1."), version  # the newest duckdb-cli on PyPI is a 1.x client
    res = _cli(workspace.root / "catalog.duckdb",
               'SELECT (SELECT count(*) FROM hh) AS n, (SELECT count(*) FROM "hh@1") AS n1, '
               "(SELECT count(*) FROM snapshots) AS s, (SELECT count(*) FROM rejects) AS r")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["n,n1,s,r", "6,10,2,0"]


def test_a_catalog_made_in_the_newer_format_is_rewritten_for_1x(tmp_path, small_pairs):
    ws = Workspace(tmp_path / "ws")
    ws.publish("hh", small_pairs)
    path = ws.root / "catalog.duckdb"
    newer = tmp_path / "newer.duckdb"
    con = duckdb.connect()
    con.execute(f"ATTACH '{path}' AS old (READ_ONLY)")
    con.execute(f"ATTACH '{newer}' AS new (STORAGE_VERSION 'v2.0.0')")
    con.execute("COPY FROM DATABASE old TO new")
    con.close()
    shutil.copyfile(newer, path)
    assert catalog.storage_version(ws.root).startswith("v2")
    with duckdb.connect(str(path)) as c:  # an old catalog: opening it must bring it up to date
        c.execute("UPDATE catalog_meta SET value = '1' WHERE key = 'catalog_version'")
    again = Workspace(ws.root)
    assert catalog.storage_version(ws.root).startswith("v1.")
    assert again.read("hh").num_rows == 10
    assert _cli(path, "SELECT count(*) FROM hh").stdout.split()[-1] == "10"


def test_a_copied_workspace_never_reads_the_originals_files(tmp_path, small_pairs):
    a = Workspace(tmp_path / "a")
    a.publish("hh", small_pairs)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    # A plain client on the copy, before any dpo command there: an error saying what to do, not a's rows.
    with duckdb.connect(str(tmp_path / "b" / "catalog.duckdb"), read_only=True) as con:
        with pytest.raises(duckdb.Error, match="moved or copied.*doctor --fix"):
            con.execute("SELECT count(*) FROM hh").fetchall()
    res = _cli(tmp_path / "b" / "catalog.duckdb", "SELECT count(*) FROM hh")
    assert res.returncode != 0 and "doctor --fix" in res.stderr
    # One documented command repoints the copy; then it reads its own files (the original can go).
    from pipelines.cli import main

    assert main(["-w", str(tmp_path / "b"), "doctor", "--fix"]) == 0
    shutil.rmtree(tmp_path / "a")
    assert _cli(tmp_path / "b" / "catalog.duckdb", "SELECT count(*) FROM hh").stdout.split()[-1] == "10"
    b = Workspace(tmp_path / "b")
    assert b.sql("SELECT count(*) AS n FROM hh").to_pylist() == [{"n": 10}]
    assert b.resolve("hh").path.is_relative_to(b.root)


def test_user_views_and_macros_survive_publishes(workspace, small_pairs):
    workspace.publish("hh", small_pairs)
    with duckdb.connect(str(workspace.root / "catalog.duckdb")) as con:
        con.execute("CREATE VIEW long_chosen AS SELECT * FROM hh WHERE length(chosen) > 12")
        con.execute("CREATE MACRO ratio(a, b) AS a / b")
        con.execute("CREATE TABLE notes (t VARCHAR)")
    workspace.publish("hh", small_pairs.slice(2), parents=["hh@1"])
    workspace.publish("other", small_pairs)
    rows = workspace.sql("SELECT count(*) AS n, ratio(4, 2) AS r FROM long_chosen").to_pylist()
    assert rows == [{"n": 8, "r": 2.0}]
    # a dataset may not take the name of something the user made
    for name in ("long_chosen", "LONG_CHOSEN", "notes", "ratio"):
        with pytest.raises(ValueError, match="already"):
            workspace.publish(name, small_pairs)
