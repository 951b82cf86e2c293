"""`dpo doctor` finds orphans, stale temp and trash, broken views and dead runs; --fix repairs only what the
workspace made itself, prints what it did, and the exit code says whether problems remain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import duckdb

from pipelines.cli import main
from storage.doctor import diagnose


def _damage(ws, small_pairs) -> dict[str, object]:
    ws.publish("hh", small_pairs)
    root = ws.root
    orphan = root / "snapshots" / "hh" / "v2"  # a publish killed between its rename and its commit
    orphan.mkdir()
    (orphan / "manifest.json").write_text(json.dumps({"snapshot_id": "hh@2"}), encoding="utf-8")
    stranger = root / "snapshots" / "hh" / "notes"  # not ours: reported, never deleted
    stranger.mkdir()
    stale = root / ".tmp" / "deadbeef"
    stale.mkdir()
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    with duckdb.connect(str(root / "catalog.duckdb")) as con:
        con.execute("DROP VIEW \"hh@1\"")  # a view the catalog made, gone
        con.execute("CREATE TABLE scratch AS SELECT 1 AS x")
        con.execute("CREATE VIEW mine AS SELECT * FROM scratch")
        con.execute("DROP TABLE scratch")  # a user's view, broken
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ws.record_run("r-dead", kind="dpo", snapshot_id="hh@1", model="m", config={}, code_version="x",
                  status="running", output_dir=None)
    with duckdb.connect(str(root / "catalog.duckdb")) as con:
        con.execute("UPDATE runs SET pid = ? WHERE run_id = 'r-dead'", [int(dead.stdout)])
    return {"orphan": orphan, "stranger": stranger, "stale": stale}


def test_doctor_reports_then_fixes_what_is_safe(workspace, small_pairs, capsys):
    paths = _damage(workspace, small_pairs)
    found = {(f.check, f.path) for f in diagnose(workspace.root)}
    assert ("orphan", str(paths["orphan"])) in found and ("orphan", str(paths["stranger"])) in found
    assert ("stale-tmp", str(paths["stale"])) in found
    assert ("view", "hh@1") in found and ("view", "mine") in found and ("run", "r-dead") in found
    assert paths["orphan"].exists() and paths["stale"].exists()  # without --fix nothing changes

    assert main(["-w", str(workspace.root), "doctor", "--format", "json"]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {r["status"] for r in rows} == {"open"}
    assert not paths["stale"].exists()  # opening a workspace already deletes temp folders older than an hour

    assert main(["-w", str(workspace.root), "doctor", "--fix", "--format", "json"]) == 1  # the user's remain
    rows = {(r["check"], r["path"]): r for r in
            (json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{"))}
    assert rows[("orphan", str(paths["orphan"]))]["status"] == "fixed"
    assert rows[("view", "hh@1")]["status"] == "fixed" and rows[("run", "r-dead")]["status"] == "fixed"
    assert rows[("orphan", str(paths["stranger"]))]["status"] == "open"
    assert rows[("view", "mine")]["status"] == "open"
    assert not paths["orphan"].exists() and paths["stranger"].exists()
    assert workspace.sql('SELECT count(*) AS n FROM "hh@1"').to_pylist() == [{"n": 10}]
    assert workspace.sql("SELECT status FROM runs WHERE run_id = 'r-dead'").to_pylist() == [
        {"status": "interrupted"}]

    # the user removes their own leftovers; then the workspace is healthy and doctor exits 0
    paths["stranger"].rmdir()
    with duckdb.connect(str(workspace.root / "catalog.duckdb")) as con:
        con.execute("DROP VIEW mine")
    assert main(["-w", str(workspace.root), "doctor"]) == 0
    assert diagnose(workspace.root) == []


def test_doctor_leaves_a_running_training_alone(workspace):
    workspace.record_run("r-live", kind="dpo", snapshot_id=None, model="m", config={}, code_version="x",
                         status="running", output_dir=None)  # this process: alive
    assert [f for f in diagnose(workspace.root, fix=True) if f.check == "run"] == []
    assert workspace.sql("SELECT status FROM runs").to_pylist() == [{"status": "running"}]
