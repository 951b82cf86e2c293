import json

import duckdb
import pytest

from storage.formats import export
from storage.schema import quarantine_table, rejects_table
from storage.workspace import Workspace, parse_ref


def test_publish_read_and_versions(workspace, small_pairs):
    a = workspace.publish("hh", small_pairs, params={"threshold": 0.9})
    b = workspace.publish("hh", small_pairs.slice(0, 4), parents=["hh@1"], kind="clean")
    assert (a.snapshot_id, b.snapshot_id) == ("hh@1", "hh@2")
    assert workspace.resolve("hh").snapshot_id == "hh@2"
    assert workspace.read("hh@1").num_rows == 10
    assert workspace.read("hh").num_rows == 4
    assert b.parents == ["hh@1"] and a.params == {"threshold": 0.9}
    assert workspace.read_polars("hh@1").height == 10
    assert workspace.read_dataset("hh@2").num_rows == 4
    manifest = json.loads((b.path / "manifest.json").read_text())
    assert manifest["counts"] == {"input": 4, "kept": 4, "rejected": 0, "quarantined": 0}
    assert a.content_hash != b.content_hash


def test_accounting_is_enforced(workspace, small_pairs):
    rej = rejects_table(small_pairs.slice(0, 2), "dedup", "dup", None)
    q = quarantine_table([{"source": "f", "source_row": 1, "error": "x", "stage": "ingest"}])
    info = workspace.publish("d", small_pairs.slice(2), rejects=rej, quarantine=q, input_rows=11)
    assert (info.input_rows, info.kept, info.rejected, info.quarantined) == (11, 8, 2, 1)
    with pytest.raises(ValueError, match="row accounting broken"):
        workspace.publish("d", small_pairs, rejects=rej, input_rows=11)
    assert [s.snapshot_id for s in workspace.list_snapshots("d")] == ["d@1"]


def test_views_in_read_only_sql_and_plain_duckdb(workspace, small_pairs):
    rej = rejects_table(small_pairs.slice(0, 3), "near_identical", "similar", '{"t": 0.9}')
    workspace.publish("hh", small_pairs.slice(3), rejects=rej, tables={"gate_stats": small_pairs.select(["pair_id"])})
    workspace.publish("hh", small_pairs.slice(5), parents=["hh@1"])
    assert workspace.sql("select count(*) n from hh").to_pylist() == [{"n": 5}]
    assert workspace.sql('select count(*) n from "hh@1"').to_pylist() == [{"n": 7}]
    assert workspace.sql("select count(*) n from hh_v1").to_pylist() == [{"n": 7}]
    assert workspace.sql("select rule, snapshot_id from rejects").column("rule").to_pylist() == ["near_identical"] * 3
    assert workspace.sql("select count(*) n from quarantine").to_pylist() == [{"n": 0}]
    assert workspace.sql("select count(*) n from gate_stats").to_pylist() == [{"n": 10}]
    snaps = workspace.sql("select snapshot_id, parents from snapshots order by version").to_pylist()
    assert snaps == [{"snapshot_id": "hh@1", "parents": []}, {"snapshot_id": "hh@2", "parents": ["hh@1"]}]
    con = duckdb.connect(str(workspace.root / "catalog.duckdb"), read_only=True)
    try:
        assert con.execute('select count(*) from "hh@2"').fetchone() == (5,)
        assert con.execute("select count(*) from rejects").fetchone() == (3,)
        names = {r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()}
        assert {"hh", "hh@1", "hh@2", "snapshots", "rejects", "quarantine", "rounds"} <= names
    finally:
        con.close()


@pytest.mark.parametrize("query", [
    "drop view hh", "create table x as select 1", "insert into runs (run_id) values ('x')",
    "copy (select 1) to 'out.csv'", "attach 'other.duckdb'", "select 1; delete from metrics",
])
def test_sql_refuses_writes(workspace, small_pairs, query):
    workspace.publish("hh", small_pairs)
    with pytest.raises(ValueError, match="read-only"):
        workspace.sql(query)


def test_sql_cannot_read_outside_workspace(workspace, small_pairs):
    workspace.publish("hh", small_pairs)
    with pytest.raises(duckdb.Error, match="disabled by configuration|Permission"):
        workspace.sql("select * from read_csv('/etc/passwd')")


def test_paths_confined_and_names_checked(workspace, small_pairs):
    with pytest.raises(ValueError, match="escapes the workspace"):
        workspace.path("..", "elsewhere")
    for bad in ("../x", "a b", "x;drop", ""):
        with pytest.raises(ValueError):
            workspace.publish(bad, small_pairs)
    with pytest.raises(ValueError, match="plain file name"):
        workspace.publish("ok", small_pairs, files={"../evil.html": "x"})
    with pytest.raises(ValueError, match="version after '@'"):
        parse_ref("hh@latest")


def test_unknown_snapshot_names_known_versions(workspace, small_pairs):
    workspace.publish("hh", small_pairs)
    with pytest.raises(KeyError, match="hh@1"):
        workspace.resolve("hh@7")


def test_cache_key_lookup(workspace, small_pairs):
    assert workspace.find_cached("k1") is None
    workspace.publish("hh", small_pairs, cache_key="k1")
    assert workspace.find_cached("k1").snapshot_id == "hh@1"


def test_moved_workspace_rebuilds_views(tmp_path, small_pairs):
    ws = Workspace(tmp_path / "a")
    ws.publish("hh", small_pairs)
    (tmp_path / "a").rename(tmp_path / "b")
    moved = Workspace(tmp_path / "b")
    assert moved.sql("select count(*) n from hh").to_pylist() == [{"n": 10}]
    assert moved.read("hh").num_rows == 10


def test_runs_metrics_rounds(workspace):
    workspace.record_run("r1", kind="dpo", snapshot_id="hh@1", model="m", config={"beta": 0.1},
                         code_version="0.1", status="running", output_dir="/x")
    workspace.log_metrics("r1", [(0, "loss", 0.69), (1, "loss", 0.6)])
    workspace.log_metrics("r1", [(1, "loss", 0.5)])  # a resumed run overwrites the same step
    workspace.log_metrics("r1", [(2, "loss", 0.4), (2, "loss", 0.3)])  # a step retried within one flush: the last
    workspace.update_run("r1", status="finished")
    rows = workspace.sql("select step, value from metrics where run_id = 'r1' order by step").to_pylist()
    assert rows == [{"step": 0, "value": 0.69}, {"step": 1, "value": 0.5}, {"step": 2, "value": 0.3}]
    assert workspace.sql("select status from runs").to_pylist() == [{"status": "finished"}]
    workspace.record_round("exp", 1, "generate", status="done", artefact="gen@1", details={"n": 4})
    assert workspace.get_rounds("exp")[0]["details"] == {"n": 4}
    assert workspace.sql("select count(*) n from rounds").to_pylist() == [{"n": 1}]


@pytest.mark.parametrize("fmt,suffix", [("trl-standard", "jsonl"), ("trl-conversational", "parquet"),
                                        ("trl-conversational", "jsonl"), ("hf-dataset", "hf")])
def test_export_formats(workspace, small_pairs, tmp_path, fmt, suffix):
    import datasets
    import pyarrow.parquet as pq

    out = export(small_pairs, tmp_path / f"out.{suffix}", fmt)
    if suffix == "jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    elif suffix == "parquet":
        rows = pq.read_table(out).to_pylist()
    else:
        rows = datasets.load_from_disk(str(out)).to_list()
    assert len(rows) == 10
    if fmt == "trl-standard":
        # the prompt rendered with the trainer's plain template (storage/templates.py), answers as stored
        assert rows[0]["prompt"] == "User: question 0\n\nAssistant:" and rows[0]["chosen"] == "good answer 0"
    else:
        assert rows[0]["prompt"] == [{"role": "user", "content": "question 0"}]
        assert rows[0]["chosen"] == [{"role": "assistant", "content": "good answer 0"}]


def test_names_that_would_shadow_catalog_views_are_refused(workspace, small_pairs):
    for name in ("rejects", "snapshots", "metrics"):
        with pytest.raises(ValueError, match="reserved"):
            workspace.publish(name, small_pairs)
    workspace.publish("hh", small_pairs)
    with pytest.raises(ValueError, match="names a dataset"):
        workspace.publish("other", small_pairs, tables={"hh": small_pairs.select(["pair_id"])})
    workspace.publish("other", small_pairs, tables={"gate_summary": small_pairs.select(["pair_id"])})
    with pytest.raises(ValueError, match="reserved"):
        workspace.publish("gate_summary", small_pairs)
