"""Reference log-probs: published once with provenance, reused, refused when they do not match, step-0 check."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from train_pairs import pair_table

from dpo_train.reference import META_KEY, ReferenceMismatchError
from dpo_train.trainer import TrainConfig, train


def _cfg(model, **kw):
    base = dict(snapshot="toy", model=str(model), lr=1e-3, per_device_batch_size=4, max_length=96,
                max_prompt_length=48, max_steps=2, save_steps=0, report=False)
    return TrainConfig(**{**base, **kw})


def test_reference_cached_then_reused(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(16))
    first = train(_cfg(tiny_model_dir, snapshot="toy@1", run_id="a"), workspace)
    assert first.reference_computed and first.snapshot_id == "toy@2"
    info = workspace.resolve("toy@2")
    assert info.kind == "reference" and info.parents == ["toy@1"]
    meta = info.meta[META_KEY]
    assert {"model_fingerprint", "tokenizer_hash", "chat_template", "max_length", "max_prompt_length",
            "truncation_mode"} <= set(meta)
    assert workspace.read("toy@2").column("ref_chosen_logp").null_count == 0
    # the same snapshot again: the cache is found, no reference pass, no new version
    again = train(_cfg(tiny_model_dir, snapshot="toy@1", run_id="b"), workspace)
    assert not again.reference_computed and again.snapshot_id == "toy@2"
    assert [s.snapshot_id for s in workspace.list_snapshots("toy")] == ["toy@1", "toy@2"]
    # a different max_length is a different cache entry: computed again
    other = train(_cfg(tiny_model_dir, snapshot="toy@1", run_id="c", max_length=80), workspace)
    assert other.reference_computed and other.snapshot_id == "toy@3"


def test_mismatching_reference_fails_clearly(workspace, tiny_model_dir, tiny_ref_dir):
    workspace.publish("toy", pair_table(8))
    train(_cfg(tiny_model_dir, snapshot="toy@1", run_id="a"), workspace)
    with pytest.raises(ReferenceMismatchError, match="max_length"):
        train(_cfg(tiny_model_dir, snapshot="toy@2", run_id="b", max_length=80), workspace)
    with pytest.raises(ReferenceMismatchError, match="model_fingerprint"):
        train(_cfg(tiny_model_dir, snapshot="toy@2", run_id="c", ref_model=str(tiny_ref_dir)), workspace)


def test_step0_check_catches_wrong_logps(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(8))
    ok = train(_cfg(tiny_model_dir, snapshot="toy@1", run_id="a", max_steps=1), workspace)
    assert ok.losses[0] == pytest.approx(0.6931471805599453, abs=1e-5)  # policy == reference: log 2
    info = workspace.resolve("toy@2")
    table = workspace.read("toy@2")
    shifted = pc.add(table.column("ref_chosen_logp"), 1.0)
    table = table.set_column(table.schema.get_field_index("ref_chosen_logp"), "ref_chosen_logp",
                             pa.chunked_array(shifted.chunks, pa.float64()))
    workspace.publish("toy", table, parents=["toy@2"], kind="reference", meta=info.meta)
    with pytest.raises(ValueError, match="step-0 check failed"):
        train(_cfg(tiny_model_dir, snapshot="toy@3", run_id="b"), workspace)
