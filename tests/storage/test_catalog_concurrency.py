"""Readers never block writers; a writer that must wait says so and gives up with a clear, typed error."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from storage.errors import CatalogBusyError
from storage.workspace import Workspace

ENV = {**os.environ, "PYTHONPATH": os.getcwd()}

LONG_QUERY = textwrap.dedent("""
    import sys
    from storage.sandbox import SqlLimits
    from storage.workspace import Workspace
    ws = Workspace(sys.argv[1])
    ws.sql("SELECT 1")  # warm: the catalog copy exists
    print("ready", flush=True)
    try:
        ws.sql("SELECT count(*) FROM range(100000000) a, range(100000000) b", SqlLimits(timeout_s=8))
    except Exception as exc:
        print(type(exc).__name__, flush=True)
""")

HOLDER = textwrap.dedent("""
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])  # a plain DuckDB client holding the catalog open for writing
    print("ready", flush=True)
    time.sleep(float(sys.argv[2]))
""")


def _start(script: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, env=ENV)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


@pytest.mark.slow
def test_a_long_query_does_not_block_a_publish(tmp_path, small_pairs, monkeypatch):
    monkeypatch.setenv("DPO_CATALOG_WAIT_S", "5")
    ws = Workspace(tmp_path / "ws")
    ws.publish("hh", small_pairs)
    reader = _start(LONG_QUERY, str(ws.root))
    try:
        time.sleep(1.0)  # the query is running now
        t0 = time.monotonic()
        info = ws.publish("hh", small_pairs.slice(3))
        ws.log_metrics("r1", [(0, "loss", 0.69)])  # a training's metrics flush goes through as well
        waited = time.monotonic() - t0
        assert reader.poll() is None, "the query should still be running while the writer published"
    finally:
        out, _ = reader.communicate(timeout=60)
    assert info.snapshot_id == "hh@2" and waited < 5
    assert b"QueryLimitError" in out


def test_a_waiting_writer_says_who_holds_the_catalog(tmp_path, small_pairs, capsys):
    ws = Workspace(tmp_path / "ws")
    holder = _start(HOLDER, str(ws.root / "catalog.duckdb"), "2")
    try:
        info = ws.publish("hh", small_pairs)
    finally:
        holder.wait()
    assert info.snapshot_id == "hh@1"
    err = capsys.readouterr().err
    assert "waiting for the catalog" in err and f"PID {holder.pid}" in err


def test_a_writer_gives_up_with_a_typed_error(tmp_path, small_pairs, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    monkeypatch.setenv("DPO_CATALOG_WAIT_S", "0.5")
    holder = _start(HOLDER, str(ws.root / "catalog.duckdb"), "30")
    try:
        with pytest.raises(CatalogBusyError, match=rf"held by .*PID {holder.pid}.*gave up after"):
            ws.publish("hh", small_pairs)
        with pytest.raises(CatalogBusyError):
            ws.log_metrics("r1", [(0, "loss", 0.5)])
    finally:
        holder.kill()
        holder.wait()
    assert not list((ws.root / "snapshots").iterdir())  # nothing half-published
    assert ws.publish("hh", small_pairs).snapshot_id == "hh@1"


def test_cli_reports_a_busy_catalog_without_a_traceback(tmp_path, small_pairs, monkeypatch, capsys):
    from pipelines.cli import main

    ws = Workspace(tmp_path / "ws")
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n', encoding="utf-8")
    monkeypatch.setenv("DPO_CATALOG_WAIT_S", "0.5")
    holder = _start(HOLDER, str(ws.root / "catalog.duckdb"), "30")
    try:
        rc = main(["-w", str(ws.root), "ingest", str(src), "--dataset", "hh"])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert rc == 2 and "held by" in err and "Traceback" not in err
