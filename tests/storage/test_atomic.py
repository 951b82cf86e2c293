"""A real writer process is killed with SIGKILL mid-publish; the workspace must stay consistent."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.parquet as pq
import pytest

from storage.workspace import Workspace

WRITER = textwrap.dedent("""
    import sys
    from storage.schema import build_pair_table
    from storage.workspace import Workspace
    ws = Workspace(sys.argv[1])
    n = 20000
    t = build_pair_table({"prompt": [[{"role": "user", "content": f"p{i}" * 20}] for i in range(n)],
                          "chosen": ["c" * 200] * n, "rejected": ["r" * 150] * n,
                          "source": ["s"] * n, "source_row": list(range(n))})
    print("ready", flush=True)
    while True:
        ws.publish("big", t, files={"report.html": "x" * 1_000_000})
""")


@pytest.mark.slow
def test_kill_9_during_publish_leaves_no_half_snapshot(tmp_path):
    root = tmp_path / "ws"
    Workspace(root)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    for delay in (0.3, 0.7, 1.1, 1.6, 2.2):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ws = Workspace(root)  # must open cleanly after the kill (WAL recovery)
        for info in ws.list_snapshots("big"):
            t = pq.read_table(info.path / "pairs.parquet")
            assert t.num_rows == info.kept == 20000
            assert (info.path / "manifest.json").exists()
            assert (info.path / "report.html").stat().st_size == 1_000_000
        if ws.list_snapshots("big"):
            assert ws.sql("select count(*) n from big").to_pylist() == [{"n": 20000}]
        # nothing uncatalogued is visible through the views
        catalogued = {str(i.path) for i in ws.list_snapshots("big")}
        views = ws.sql("select view_name from duckdb_views() where view_name like 'big@%'").to_pylist()
        assert len(views) == len(catalogued)
    assert len(Workspace(root).list_snapshots("big")) >= 1
    # at least one kill landed mid-write (its temp folder is left behind, invisible), so the crash window was hit
    assert any((root / ".tmp").iterdir())
