"""Issue 9 item 7: reference log-probs keep their own identity; a dataset name always means the user's data.

Before: training published its reference log-probs as `toy@2`, so `toy` changed meaning after `dpo train` (a
killed run on `toy` did not resume, other lengths were refused, `dpo export toy` carried `ref_*` columns).
"""

from __future__ import annotations

import json
import threading
import time

import pyarrow as pa
import pytest
from train_pairs import pair_table

from dpo_train.trainer import TrainConfig, train
from storage import artefacts
from storage.formats import to_trl


def _cfg(model, **kw):
    base = dict(snapshot="toy", model=str(model), lr=1e-3, per_device_batch_size=4, max_length=96,
                max_prompt_length=48, max_steps=2, save_steps=0, report=False)
    return TrainConfig(**{**base, **kw})


def test_training_leaves_the_dataset_name_alone(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(16))
    res = train(_cfg(tiny_model_dir), workspace)
    assert res.reference_computed and res.snapshot_id == "toy@1"
    assert workspace.resolve("toy").snapshot_id == "toy@1"
    assert [s.snapshot_id for s in workspace.list_snapshots()] == ["toy@1"]
    # the artefact is linked to the snapshot it was made from, and is queryable in SQL
    assert [a.artefact_id for a in artefacts.list_artefacts(workspace.root, parent="toy@1")] == [res.reference]
    rows = workspace.sql("SELECT artefact_id, kind, parents FROM artefact_log").to_pylist()
    assert rows == [{"artefact_id": res.reference, "kind": "reference", "parents": ["toy@1"]}]
    assert workspace.sql("SELECT count(*) AS n FROM toy").to_pylist() == [{"n": 16}]


def test_export_after_training_has_no_reference_columns(workspace, tiny_model_dir, tmp_path):
    from pipelines.cli import main

    workspace.publish("toy", pair_table(16))
    res = train(_cfg(tiny_model_dir), workspace)
    out = tmp_path / "toy.jsonl"
    assert main(["-w", str(workspace.root), "export", "toy", "--to", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 16 and not any(k.startswith("ref_") for r in rows for k in r)
    assert "ref_chosen_logps" not in to_trl(workspace.read("toy")).column_names
    # exported only when asked: the snapshot's artefact joins its rows
    asked = artefacts.reference_pairs(workspace.root, "toy@1", workspace.read("toy"))
    assert asked.column("ref_chosen_logp").null_count == 0 and asked.num_rows == 16
    assert asked.column("pair_id").to_pylist() == workspace.read("toy").column("pair_id").to_pylist()
    with_ref = tmp_path / "toy-ref.jsonl"
    assert main(["-w", str(workspace.root), "export", "toy", "--to", str(with_ref), "--with-reference-logps"]) == 0
    got = [json.loads(line) for line in with_ref.read_text().splitlines()]
    assert [r["ref_chosen_logps"] for r in got] == asked.column("ref_chosen_logp").to_pylist()
    train(_cfg(tiny_model_dir, max_length=80), workspace)
    with pytest.raises(ValueError, match="choose one"):
        artefacts.reference_pairs(workspace.root, "toy@1", workspace.read("toy"))
    assert artefacts.reference_pairs(workspace.root, "toy@1", workspace.read("toy"), res.reference).num_rows == 16


def test_other_lengths_make_another_artefact_not_a_refusal(workspace, tiny_model_dir, tiny_ref_dir):
    workspace.publish("toy", pair_table(16))
    a = train(_cfg(tiny_model_dir, run_id="a"), workspace)
    b = train(_cfg(tiny_model_dir, run_id="b", max_length=80), workspace)
    c = train(_cfg(tiny_model_dir, run_id="c", ref_model=str(tiny_ref_dir)), workspace)
    assert a.reference_computed and b.reference_computed and c.reference_computed
    assert len({a.reference, b.reference, c.reference}) == 3
    # each is found again by what it depends on
    a2 = train(_cfg(tiny_model_dir, run_id="a2"), workspace)
    b2 = train(_cfg(tiny_model_dir, run_id="b2", max_length=80), workspace)
    assert (a2.reference, b2.reference) == (a.reference, b.reference)
    assert not a2.reference_computed and not b2.reference_computed
    assert [s.snapshot_id for s in workspace.list_snapshots()] == ["toy@1"]
    assert len(artefacts.list_artefacts(workspace.root, kind="reference")) == 3


def test_killed_run_on_a_bare_name_resumes(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(24))
    cfg = _cfg(tiny_model_dir, max_steps=-1, epochs=2, save_steps=2, save_total_limit=0, grad_accum=2)

    class Killed(KeyboardInterrupt):
        pass

    def kill_at_3(step: int, _metrics: dict) -> None:
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train(cfg, workspace, on_step=kill_at_3)
    resumed = train(cfg, workspace)
    assert min(resumed.losses) == 2  # from checkpoint-000002 of the same run, not a new run at step 0
    runs = workspace.sql("SELECT run_id, status FROM runs").to_pylist()
    assert runs == [{"run_id": resumed.run_id, "status": "finished"}]


def test_same_key_is_computed_and_published_once(workspace):
    """A second process with the same key waits for the first and reuses its artefact."""
    key = "reference:" + "ab" * 32
    table = pa.table({"pair_id": ["p1", "p2"], "ref_chosen_logp": [-1.0, -2.0], "ref_rejected_logp": [-3.0, -4.0]})
    computed: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with artefacts.publishing(workspace.root, "reference", key) as pub:
            inside.set()
            time.sleep(0.5)  # computing
            computed.append("first")
            pub.publish(table, parents=["toy@1"], meta={})

    t = threading.Thread(target=first)
    t.start()
    inside.wait(5)
    with artefacts.publishing(workspace.root, "reference", key) as pub:
        if pub.hit is None:
            computed.append("second")
            pub.publish(table, parents=["toy@1"], meta={})
        hit = pub.hit
    t.join()
    assert computed == ["first"] and hit is not None
    assert len(artefacts.list_artefacts(workspace.root)) == 1
