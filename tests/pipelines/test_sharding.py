"""The sharded gate equals the single-process gate (plain functions, no Prefect)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from pipelines import sharding
from storage.workspace import content_hash


def _reject_keys(t: pa.Table) -> list[tuple]:
    cols = [t.column(c).to_pylist() for c in ("pair_id", "rule", "reason", "duplicate_of", "source", "source_row")]
    return sorted(zip(*cols, strict=True), key=repr)


def test_plan_groups_steps_and_reshards_after_normalise() -> None:
    phases = sharding.plan(["normalise", "degenerate", "contradictions", "dedup", "near_identical", "margins",
                            "decontam", "near_dup", "length_bias", "future_check", "dedup"])
    assert [(p.sharded, p.names) for p in phases] == [
        (True, ["normalise", "degenerate"]),
        (True, ["contradictions", "dedup", "near_identical", "margins", "decontam"]),
        (False, ["near_dup", "length_bias", "future_check"]),
        (True, ["dedup"]),
    ]


def test_shard_ids_are_stable_and_in_range() -> None:
    ids = pa.array(["ff000000aa", "0000000f11", "00000010"])
    assert sharding.shard_ids(ids, 16).tolist() == [0, 15, 0]
    assert sharding.shard_ids(ids, 1000).tolist() == [80, 15, 16]


@pytest.mark.parametrize("n_shards", [5])
def test_sharded_gate_matches_single_process(shared_data: Path, n_shards: int) -> None:
    from data_quality.gate import GateConfig, run_gate
    from data_quality.ingest import ingest_files

    ann = shared_data / "alpaca_eval" / "annotations"
    res = ingest_files([shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz",
                        ann / "alpaca-7b_concise__weighted_alpaca_eval_gpt4_turbo.json.gz",
                        ann / "alpaca-7b_verbose__weighted_alpaca_eval_gpt4_turbo.json.gz"])
    gate = {"contradictions": {"policy": "keep_majority"}}
    single = run_gate(res.pairs, GateConfig.from_dict(gate))
    sharded = sharding.run_sharded(res.pairs, gate, None, n_shards)
    assert single.rejects.num_rows > 0  # the comparison is about something
    assert sharded.kept.equals(single.kept)
    assert content_hash(sharded.kept) == content_hash(single.kept)
    assert _reject_keys(sharded.rejects) == _reject_keys(single.rejects)
    assert sharded.stats["drops_by_reason"] == single.stats["drops_by_reason"]
    assert sharded.stats["checks"]["dedup"]["shards"] == n_shards
