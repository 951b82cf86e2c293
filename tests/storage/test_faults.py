"""Faults: parallel identical work publishes one snapshot; a full disk is reported as such with nothing
half-written; what publish moves to .trash/ is deleted; an uncatalogued snapshots/<ds>/vN is handled."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time

import duckdb
import pyarrow.parquet as pq
import pytest

from storage import catalog, publish
from storage.errors import DiskFullError
from storage.workspace import Workspace

RACER = textwrap.dedent("""
    import sys, time, pathlib
    from storage.schema import build_pair_table
    from storage.workspace import Workspace
    ws = Workspace(sys.argv[1])
    n = 50
    t = build_pair_table({"prompt": [[{"role": "user", "content": f"p{i}"}] for i in range(n)],
                          "chosen": ["c"] * n, "rejected": ["r"] * n, "source": ["s"] * n,
                          "source_row": list(range(n))})
    assert ws.find_cached("key-1") is None  # every racer misses the cache ...
    print("ready", flush=True)
    go = pathlib.Path(sys.argv[2])
    while not go.exists():  # ... then all publish at once
        time.sleep(0.005)
    print(ws.publish("hh", t, cache_key="key-1").snapshot_id, flush=True)
""")


@pytest.mark.slow
def test_three_parallel_identical_ingests_make_one_snapshot(tmp_path):
    root = tmp_path / "ws"
    Workspace(root)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(root), str(go)], stdout=subprocess.PIPE, env=env)
             for _ in range(3)]
    for p in procs:
        assert p.stdout.readline().strip() == b"ready"
    go.touch()
    outs = [p.communicate(timeout=120)[0].decode().split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert [o[-1] for o in outs] == ["hh@1"] * 3
    ws = Workspace(root)
    assert [s.snapshot_id for s in ws.list_snapshots()] == ["hh@1"]
    assert [p.name for p in (root / "snapshots" / "hh").iterdir()] == ["v1"]


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_a_file_is_reported_and_nothing_is_left(workspace, small_pairs, monkeypatch):
    workspace.publish("hh", small_pairs)
    real = pq.write_table

    def write_table(table, where, **kw):
        if str(where).endswith("rejects.parquet"):  # inside the commit, after pairs.parquet was written
            _enospc()
        return real(table, where, **kw)

    monkeypatch.setattr(publish.pq, "write_table", write_table)
    with pytest.raises(DiskFullError, match=r"no space left on device while writing .*rejects\.parquet"):
        workspace.publish("hh", small_pairs.slice(2))
    assert [s.snapshot_id for s in workspace.list_snapshots()] == ["hh@1"]
    assert [p.name for p in (workspace.root / "snapshots" / "hh").iterdir()] == ["v1"]
    assert not [p for p in (workspace.root / ".tmp").iterdir() if p.name != "sql-cache"]


def test_disk_full_at_commit_is_reported_not_masked_by_rollback(workspace, small_pairs, monkeypatch):
    """DuckDB aborts the transaction when its write fails; the user must see the disk-full error, not
    "cannot rollback - no transaction is active", and the renamed folder must not stay behind."""
    workspace.publish("hh", small_pairs)

    def failing_rebuild(con, root, empty):
        con.execute("SELECT 1")
        raise duckdb.IOException('Could not write file "catalog.duckdb.wal": No space left on device')

    monkeypatch.setattr(catalog, "rebuild_views", failing_rebuild)
    with pytest.raises(DiskFullError, match="no space left on device while writing"):
        workspace.publish("hh", small_pairs.slice(2))
    monkeypatch.undo()
    assert [s.snapshot_id for s in workspace.list_snapshots()] == ["hh@1"]
    assert [p.name for p in (workspace.root / "snapshots" / "hh").iterdir()] == ["v1"]
    assert workspace.publish("hh", small_pairs.slice(2)).snapshot_id == "hh@2"


def test_cli_reports_disk_full_without_a_traceback(workspace, small_pairs, monkeypatch, capsys, tmp_path):
    from pipelines.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n', encoding="utf-8")
    monkeypatch.setattr(publish, "_write_side", _enospc)  # the rejects file, written inside the commit
    rc = main(["-w", str(workspace.root), "ingest", str(src), "--dataset", "hh"])
    err = capsys.readouterr().err
    assert rc == 2 and "no space left on device while writing" in err and "Traceback" not in err


def test_a_full_temp_dir_during_the_ingest_spill_is_disk_full(workspace, monkeypatch, capsys, tmp_path):
    """Kept pairs, rejects and quarantine are spilled to $TMPDIR as they are read: a full temp disk there is
    the same one-line DiskFullError (naming the spill and TMPDIR), exit 2, and the spill folder is removed."""
    import data_quality.ingest.spill as spill
    from pipelines.cli import main

    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 3, encoding="utf-8")
    spill_tmp = tmp_path / "tmpdir"
    spill_tmp.mkdir()
    monkeypatch.setattr(spill.tempfile, "tempdir", str(spill_tmp))
    real = spill.pq.ParquetWriter

    class Full(real):
        def write_table(self, *_a, **_k):
            _enospc()

    monkeypatch.setattr(spill.pq, "ParquetWriter", Full)
    rc = main(["-w", str(workspace.root), "ingest", str(src), "--dataset", "hh"])
    err = capsys.readouterr().err
    assert rc == 2 and "no space left on device while writing" in err and "ingest's spill under TMPDIR" in err, err
    assert "Traceback" not in err
    assert list(spill_tmp.iterdir()) == []
    assert not (workspace.root / "snapshots" / "hh").exists()


def _leftover(root, dataset: str, version: int) -> None:
    """What a publish killed between its rename and its commit leaves: a complete, uncatalogued folder."""
    d = root / "snapshots" / dataset / f"v{version}"
    d.mkdir(parents=True)
    (d / "pairs.parquet").write_bytes(b"x")
    (d / "manifest.json").write_text(json.dumps({"snapshot_id": f"{dataset}@{version}"}), encoding="utf-8")


def test_what_publish_moves_to_trash_is_deleted(workspace, small_pairs):
    workspace.publish("hh", small_pairs)
    _leftover(workspace.root, "hh", 2)
    foreign = workspace.root / ".trash" / "my-notes.txt"
    foreign.write_text("not the workspace's", encoding="utf-8")
    info = workspace.publish("hh", small_pairs.slice(1))
    assert info.snapshot_id == "hh@2" and pq.read_table(info.path / "pairs.parquet").num_rows == 9
    assert [p.name for p in (workspace.root / ".trash").iterdir()] == ["my-notes.txt"]


def test_old_trash_entries_are_emptied_when_the_workspace_opens(workspace):
    old = workspace.root / ".trash" / f"hh-v2-{'a' * 32}"  # the name older versions gave
    old.mkdir()
    (old / "pairs.parquet").write_bytes(b"x")
    Workspace(workspace.root)
    assert not old.exists()


def test_stale_tmp_is_removed_but_a_fresh_one_is_kept(workspace):
    stale, fresh = workspace.root / ".tmp" / "a", workspace.root / ".tmp" / "b"
    for d in (stale, fresh):
        d.mkdir()
    hour_ago = time.time() - 7200
    os.utime(stale, (hour_ago, hour_ago))
    Workspace(workspace.root)
    assert not stale.exists() and fresh.exists()
