"""Reference log-probs: computed once into their own artefact with provenance, reused, step-0 check."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from train_pairs import pair_table

from dpo_train.trainer import TrainConfig, train
from storage import artefacts


def _cfg(model, **kw):
    base = dict(snapshot="toy", model=str(model), lr=1e-3, per_device_batch_size=4, max_length=96,
                max_prompt_length=48, max_steps=2, save_steps=0, report=False)
    return TrainConfig(**{**base, **kw})


def test_reference_cached_then_reused(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(16))
    first = train(_cfg(tiny_model_dir, snapshot="toy@1", run_id="a"), workspace)
    assert first.reference_computed and first.snapshot_id == "toy@1" and first.reference
    art = artefacts.get(workspace.root, first.reference)
    assert art.kind == "reference" and art.parents == ["toy@1"]
    assert {"model_fingerprint", "tokenizer_hash", "chat_template", "max_length", "max_prompt_length",
            "truncation_mode"} <= set(art.meta)
    logps = artefacts.read(workspace.root, art.artefact_id)
    assert logps.column("pair_id").to_pylist() == workspace.read("toy@1").column("pair_id").to_pylist()
    assert logps.column("ref_chosen_logp").null_count == 0
    # the same snapshot again: the artefact is found, no reference pass, nothing new anywhere
    again = train(_cfg(tiny_model_dir, snapshot="toy@1", run_id="b"), workspace)
    assert not again.reference_computed and again.reference == first.reference
    assert [s.snapshot_id for s in workspace.list_snapshots("toy")] == ["toy@1"]
    assert len(artefacts.list_artefacts(workspace.root)) == 1


def test_step0_check_catches_wrong_logps(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(8))
    ok = train(_cfg(tiny_model_dir, run_id="a", max_steps=1), workspace)
    assert ok.losses[0] == pytest.approx(0.6931471805599453, abs=1e-5)  # policy == reference: log 2
    # alter the cached numbers behind the catalog's back: the step-0 check must notice
    path = artefacts.get(workspace.root, ok.reference).path / artefacts.DATA_FILE
    table = pq.read_table(path)
    shifted = pc.add(table.column("ref_chosen_logp"), 1.0)
    table = table.set_column(table.schema.get_field_index("ref_chosen_logp"), "ref_chosen_logp",
                             pa.chunked_array(shifted.chunks, pa.float64()))
    pq.write_table(table, path)
    with pytest.raises(ValueError, match="step-0 check failed"):
        train(_cfg(tiny_model_dir, run_id="b"), workspace)
