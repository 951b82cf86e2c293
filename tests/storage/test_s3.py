"""Snapshots on object storage: a workspace whose snapshot files live on a real S3-compatible server (moto's, in
this process, on the loopback interface) ingests, cleans, answers read-only SQL and trains, with the same content
hashes as a local workspace; a publish that fails anywhere before its commit leaves no catalog row."""

from __future__ import annotations

import math
import os

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from storage import doctor, objects, publish, sandbox
from storage.errors import ObjectStorageError, UnsafeQueryError
from storage.workspace import Workspace

moto_server = pytest.importorskip("moto.server")

BUCKET = "dpo-test"
ALPACA = ("alpaca_eval", "annotations", "alpaca-7b_concise__weighted_alpaca_eval_gpt4_turbo.json.gz")


def _start() -> tuple[object, str]:
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    return srv, f"http://{host}:{port}"


def _env(mp: pytest.MonkeyPatch, endpoint: str) -> None:
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        mp.setenv(key, value)
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", objects.STORAGE_ENV):
        mp.delenv(key, raising=False)
    pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir(BUCKET)


@pytest.fixture(scope="module")
def s3_endpoint():
    srv, endpoint = _start()
    with pytest.MonkeyPatch.context() as mp:
        _env(mp, endpoint)
        yield endpoint
    srv.stop()


def _keys(prefix: str) -> set[str]:
    return {i.path for i in objects.list_files(prefix)}


def _pairs(n: int) -> pa.Table:
    from storage.schema import build_pair_table

    return build_pair_table({"prompt": [[{"role": "user", "content": f"question {i}?"}] for i in range(n)],
                             "chosen": [f"good answer {i}" for i in range(n)],
                             "rejected": [f"bad {i}" for i in range(n)], "source": ["t"] * n,
                             "source_row": list(range(n))})


@pytest.mark.slow
def test_s3_workspace_ingests_cleans_answers_sql_and_trains(s3_endpoint, tmp_path):
    from dpo_train.tiny import make_tiny_model, shared_data_dir
    from dpo_train.trainer import TrainConfig, train
    from pipelines import steps

    source = shared_data_dir().joinpath(*ALPACA)
    if not source.exists():
        pytest.skip(f"real data missing: {source}")
    storage = f"s3://{BUCKET}/team/ws1"
    ws = Workspace(tmp_path / "ws", storage=storage)
    raw = steps.ingest(ws, [str(source)], "alpaca", format="alpaca_eval")
    clean = steps.clean(ws, raw.snapshot_id)
    assert raw.input_rows == 804 and clean.input_rows == raw.kept
    assert clean.kept + clean.rejected + clean.quarantined == clean.input_rows and clean.rejected > 0
    for info in (raw, clean):  # the files are objects; nothing of a snapshot is on local disk
        assert isinstance(info.path, objects.ObjectPath)
        assert str(info.path).startswith(f"{storage}/snapshots/{info.dataset}/v{info.version}-")
    assert not any(p.is_file() for p in (ws.root / "snapshots").rglob("*"))
    assert (clean.path / "report.html").exists() and _keys(f"{storage}/.staging") == set()
    assert {k.rsplit("/", 1)[1] for k in _keys(str(clean.path))} >= {"pairs.parquet", "rejects.parquet",
                                                                     "manifest.json", "report.html"}
    # The Prefect artifact of a flow run links the report object itself (`dpo report serve` is local only).
    from pipelines.report_ui import report_markdown

    assert f"({clean.path}/report.html)" in report_markdown(ws, clean, [{"input": clean.input_rows}])

    # The same data in a local workspace: the same content hashes and the same rows.
    local = Workspace(tmp_path / "local")
    lraw = steps.ingest(local, [str(source)], "alpaca", format="alpaca_eval")
    lclean = steps.clean(local, lraw.snapshot_id)
    assert (raw.content_hash, clean.content_hash) == (lraw.content_hash, lclean.content_hash)
    assert ws.read(clean.snapshot_id).equals(local.read(lclean.snapshot_id))
    assert ws.read_rejects(clean.snapshot_id).equals(local.read_rejects(lclean.snapshot_id))

    # SQL over the objects, read-only.
    name = clean.dataset
    assert ws.sql(f'select count(*) n from "{name}"').column("n").to_pylist() == [clean.kept]  # noqa: S608
    by_rule = "select rule, count(*) n from rejects where snapshot_id = '{}' group by all order by all"
    assert ws.sql(by_rule.format(clean.snapshot_id)).equals(local.sql(by_rule.format(lclean.snapshot_id)))
    secret = f"{BUCKET}/team/secret.parquet"  # an object of the bucket that is no snapshot's
    pq.write_table(pa.table({"x": [1]}), secret, filesystem=objects.s3_filesystem())
    before = _keys(f"s3://{BUCKET}")
    with pytest.raises(UnsafeQueryError):
        ws.sql(f"COPY (SELECT * FROM \"{name}\") TO '{clean.path}/evil.parquet'")  # noqa: S608
    # The second layer alone (the statement check bypassed): no write, and no object outside the snapshots.
    target = f"dpo-objects://{str(clean.path).removeprefix('s3://')}/evil.parquet"
    for stmt in (
        f"COPY (SELECT 1 AS x) TO '{target}'",
        f"COPY (SELECT 1 AS x) TO '{storage}/evil.parquet'",
        f"SELECT * FROM read_parquet('s3://{secret}')",  # noqa: S608
        f"SELECT * FROM 'dpo-objects://{secret}'",  # noqa: S608
        f"SELECT * FROM read_parquet('{target.rsplit('/', 2)[0]}/../../../secret.parquet')",  # noqa: S608
    ):
        with pytest.raises(duckdb.Error):
            sandbox.run_statements(ws.root, [stmt], sandbox.SqlLimits(timeout_s=30))
    assert _keys(f"s3://{BUCKET}") == before

    # Train a few steps from the clean snapshot on the objects.
    corpus = ["How do I bake bread? Mix flour, water, salt and yeast, then bake.", "Paris is in France."] * 8
    model = make_tiny_model(tmp_path / "tiny", seed=0, corpus=corpus, vocab_size=512, n_layers=1, hidden=32,
                            heads=2, max_positions=256)
    # Reference log-probs on the fly: 2 steps, not a reference pass over all 799 pairs.
    cfg = TrainConfig(snapshot=clean.snapshot_id, model=str(model), lr=1e-3, per_device_batch_size=4,
                      max_length=96, max_prompt_length=48, max_steps=2, save_steps=0, report=False,
                      precompute_reference=False)
    res = train(cfg, ws)
    assert len(res.losses) == 2 and all(math.isfinite(v) for v in res.losses.values())
    assert doctor.diagnose(ws.root) == []


def test_failed_copy_leaves_no_catalog_row_and_doctor_deletes_the_orphan(s3_endpoint, tmp_path, monkeypatch):
    storage = f"s3://{BUCKET}/team/ws2"
    ws = Workspace(tmp_path / "ws", storage=storage)
    first = ws.publish("t", _pairs(3), input_rows=3)
    kept = _keys(f"{storage}/snapshots")
    real_promote = objects.promote

    def crash_after_one_copy(staged, final):  # a process killed mid-copy: one object copied, no clean-up ran
        real_promote(staged[:1], final)
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(objects, "promote", crash_after_one_copy)
    monkeypatch.setattr(objects, "remove", lambda uris: None)
    with pytest.raises(KeyboardInterrupt):
        ws.publish("t", _pairs(4), input_rows=4)
    monkeypatch.undo()
    assert [s.snapshot_id for s in ws.list_snapshots()] == ["t@1"] and ws.read("t").num_rows == 3
    orphans = [f for f in doctor.diagnose(ws.root) if f.check == "orphan"]
    assert len(orphans) == 1 and orphans[0].path.startswith(f"{storage}/snapshots/t/v2-")
    assert [f.fixed for f in doctor.diagnose(ws.root, fix=True) if f.check == "orphan"] == [True]
    assert _keys(f"{storage}/snapshots") == kept
    assert doctor.diagnose(ws.root) == []
    assert ws.publish("t", _pairs(4), input_rows=4).snapshot_id == "t@2" and first.snapshot_id == "t@1"


def test_failed_commit_deletes_the_copied_objects(s3_endpoint, tmp_path, monkeypatch):
    storage = f"s3://{BUCKET}/team/ws3"
    ws = Workspace(tmp_path / "ws", storage=storage)
    ws.publish("t", _pairs(3), input_rows=3)
    kept = _keys(f"{storage}/snapshots")

    def failing_insert(*a, **kw):
        raise RuntimeError("catalog write failed")

    monkeypatch.setattr(publish.catalog, "rebuild_views", failing_insert)
    with pytest.raises(RuntimeError, match="catalog write failed"):
        ws.publish("t", _pairs(5), input_rows=5)
    monkeypatch.undo()
    assert [s.snapshot_id for s in ws.list_snapshots()] == ["t@1"]
    assert _keys(f"{storage}/snapshots") == kept and _keys(f"{storage}/.staging") == set()


def test_server_stopped_mid_publish_leaves_no_catalog_row(tmp_path, monkeypatch):
    srv, endpoint = _start()
    try:
        _env(monkeypatch, endpoint)
        ws = Workspace(tmp_path / "ws", storage=f"s3://{BUCKET}/ws4")
        ws.publish("t", _pairs(3), input_rows=3)
        real_promote = objects.promote

        def stop_then_promote(staged, final):  # every upload done, then the server goes away
            srv.stop()
            return real_promote(staged, final)

        monkeypatch.setattr(objects, "promote", stop_then_promote)
        with pytest.raises(ObjectStorageError, match=r"object storage failed while writing s3://dpo-test/ws4/"
                           r"snapshots/t/v2-.*nothing was published"):
            ws.publish("t", _pairs(4), input_rows=4)
        assert [s.snapshot_id for s in ws.list_snapshots()] == ["t@1"]
        assert ws.sql("select count(*) n from snapshots").column("n").to_pylist() == [1]
    finally:
        srv.stop()


def test_storage_setting_is_checked_and_recorded(s3_endpoint, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="invalid snapshot storage"):
        Workspace(tmp_path / "bad", storage="/not/a/uri")
    monkeypatch.setenv(objects.STORAGE_ENV, f"s3://{BUCKET}/team/ws5/")
    Workspace(tmp_path / "ws").publish("t", _pairs(2), input_rows=2)
    monkeypatch.delenv(objects.STORAGE_ENV)
    ws = Workspace(tmp_path / "ws")  # no setting now: the recorded one holds
    assert ws.storage == f"s3://{BUCKET}/team/ws5"
    assert str(ws.publish("t", _pairs(3), input_rows=3).path).startswith(f"s3://{BUCKET}/team/ws5/snapshots/t/v2-")
    monkeypatch.setenv(objects.STORAGE_ENV, "local")
    back = Workspace(tmp_path / "ws").publish("t", _pairs(4), input_rows=4)
    assert back.path == tmp_path / "ws" / "snapshots" / "t" / "v3"
    assert [Workspace(tmp_path / "ws").read(f"t@{v}").num_rows for v in (1, 2, 3)] == [2, 3, 4]


def test_missing_objects_are_reported_and_a_local_copy_is_read_only(s3_endpoint, tmp_path):
    storage = f"s3://{BUCKET}/team/ws6"
    ws = Workspace(tmp_path / "ws", storage=storage)
    info = ws.publish("t", _pairs(3), input_rows=3)
    pairs = info.path / "pairs.parquet"
    with open(pairs, "rb") as f:  # code that needs a file gets a local copy of the (immutable) object
        assert f.read() == objects.read_bytes(str(pairs))
    assert os.stat(os.fspath(pairs)).st_mode & 0o222 == 0 and ws.snapshot_file("t", "manifest.json").exists()
    objects.remove([objects.SCHEME + k for k in _keys(str(info.path))])
    missing = [f for f in doctor.diagnose(ws.root) if f.check == "missing"]
    assert [(f.path, f.fixed) for f in missing] == [(str(info.path), False)]


@pytest.mark.parametrize("bad", ["", "..", "a/../b", "a//b", "/"])
def test_object_names_cannot_leave_their_prefix(bad):
    with pytest.raises(ValueError, match="invalid object name"):
        objects.join("s3://b/p", bad)
    assert objects.join("s3://b/p/", "snapshots", "t") == "s3://b/p/snapshots/t"


@pytest.mark.parametrize("bad", ["s3://", "s3:///x", "s3://b//p", "s3://b/p?x=1", "/tmp/x", "gs://b"])
def test_storage_must_be_an_s3_prefix(bad):
    with pytest.raises(ValueError, match="invalid snapshot storage"):
        objects.check_storage(bad)
    assert objects.check_storage("s3://b/p/") == "s3://b/p"
