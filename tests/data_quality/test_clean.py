"""clean_snapshot: raw snapshot -> gate -> clean snapshot with lineage, rejects, params, stats tables, report."""

from __future__ import annotations

import pytest

from data_quality.clean import clean_snapshot
from data_quality.gate import GateConfig
from storage.schema import build_pair_table


def test_clean_snapshot_lineage_rejects_and_tables(workspace) -> None:
    rows = [("q1", "good", "bad"), ("q1", "good", "bad"), ("q2", "", "x"), ("q3", "fine answer", "poor"),
            ("q4", "same", "same"), ("q5", "a longer chosen answer", "short")]
    t = build_pair_table({"prompt": [[{"role": "user", "content": p}] for p, _, _ in rows],
                          "chosen": [c for _, c, _ in rows], "rejected": [r for _, _, r in rows],
                          "source": ["s"] * len(rows), "source_row": list(range(len(rows)))})
    raw = workspace.publish("toy_raw", t, kind="raw")
    cfg = GateConfig.from_dict({"near_dup": {"threshold": 0.9}})
    info = clean_snapshot(workspace, raw.snapshot_id, cfg, eval_prompts=["an unrelated evaluation prompt here"])
    assert info.dataset == "toy" and info.kind == "clean" and info.parents == [raw.snapshot_id]
    assert (info.input_rows, info.kept, info.rejected) == (6, 3, 3)
    assert info.params["near_dup"]["threshold"] == 0.9 and info.params["eval_prompts"]["count"] == 1
    rejects = workspace.read_rejects(info.snapshot_id)
    assert sorted(rejects.column("reason").to_pylist()) == ["empty_chosen", "exact_duplicate", "identical_answers"]
    drops = workspace.read_table(info.snapshot_id, "gate_drops")
    assert sum(drops.column("rows").to_pylist()) == 3
    assert (info.path / "report.html").exists() or workspace.snapshot_file(info.snapshot_id, "report.html").exists()
    again = clean_snapshot(workspace, info.snapshot_id, {"length_bias": {"mode": "stats"}}, dataset="toy2")
    assert again.parents == [info.snapshot_id] and again.rejected == 0


def test_clean_snapshot_rejects_unknown_config(workspace) -> None:
    t = build_pair_table({"prompt": [[{"role": "user", "content": "q"}]], "chosen": ["a"], "rejected": ["b"],
                          "source": ["s"], "source_row": [0]})
    raw = workspace.publish("t_raw", t)
    with pytest.raises(ValueError, match="bogus"):
        clean_snapshot(workspace, raw.snapshot_id, {"bogus": {}})
