"""The whole gate: config strictness, ordering, accounting and planted-defect recall on a small set."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_quality.gate import GateConfig, run_gate
from data_quality.synthetic import make_synthetic
from storage.schema import PAIR_SCHEMA, REJECTS_SCHEMA, build_pair_table


def test_from_dict_is_strict_and_round_trips() -> None:
    with pytest.raises(ValueError, match="near_dupp"):
        GateConfig.from_dict({"near_dupp": {}})
    with pytest.raises(ValueError, match="thresh"):
        GateConfig.from_dict({"near_dup": {"thresh": 0.5}})
    with pytest.raises(ValueError):
        GateConfig.from_dict({"length_bias": {"mode": "magic"}})
    cfg = GateConfig.from_dict({"near_dup": {"threshold": 0.7, "fields": ["chosen"]}, "margins": {"min_score_margin": 1}})
    assert cfg.near_dup.fields == ("chosen",) and cfg.margins.min_score_margin == 1.0
    d = cfg.to_dict()
    json.dumps(d)
    assert GateConfig.from_dict(d) == cfg


def test_gate_accounting_and_reasons_on_planted_defects() -> None:
    data = make_synthetic(4000, seed=5)
    res = run_gate(data.table, GateConfig(), eval_prompts=data.eval_prompts)
    assert res.kept.schema.equals(PAIR_SCHEMA, check_metadata=False)
    assert res.rejects.schema.equals(REJECTS_SCHEMA, check_metadata=False)
    assert res.kept.num_rows + res.rejects.num_rows == data.table.num_rows == res.stats["input_rows"]
    assert len(set(res.kept.column("pair_id").to_pylist())) == res.kept.num_rows  # no exact duplicates survive
    rule_of = dict(zip(res.rejects.column("source_row").to_pylist(), res.rejects.column("rule").to_pylist(),
                       strict=True))
    src = np.asarray(data.table.column("source_row"))
    # Keep-first may drop the original instead of its copy, so a duplicate counts as found if either goes.
    dup = np.flatnonzero(data.defect == "exact_dup")
    found = [rule_of.get(int(src[i])) == "dedup" or rule_of.get(int(src[data.base_row[i]])) == "dedup" for i in dup]
    assert np.mean(found) >= 0.95
    expect = {"empty": "degenerate", "near_copy": "near_identical",
              "low_margin": "margins", "contaminated": "decontam", "contradiction": "contradictions"}
    for defect, rule in expect.items():
        rows = src[data.defect == defect]
        got = np.mean([rule_of.get(int(r)) == rule for r in rows])
        assert got >= 0.95, (defect, got)
    originals = np.zeros(len(src), dtype=bool)
    originals[data.base_row[data.base_row >= 0]] = True  # a copy's original may be the one dropped
    clean = src[(data.defect == "clean") & ~originals]
    assert np.mean([int(r) in rule_of for r in clean]) < 0.01
    w = np.asarray(res.kept.column("weight"))
    assert abs(w.mean() - 1) < 1e-9
    assert abs(res.stats["checks"]["length_bias"]["weighted_frac_chosen_longer"] - 0.5) <= 0.01
    assert res.stats["config"]["near_dup"]["threshold"] == 0.8
    assert set(res.tables) >= {"gate_drops", "gate_steps", "gate_hist", "gate_clusters", "gate_summary"}
    assert sum(res.tables["gate_drops"].column("rows").to_pylist()) == res.rejects.num_rows
    json.dumps(res.stats)


def test_disabled_checks_and_empty_input() -> None:
    t = build_pair_table({"prompt": [[{"role": "user", "content": "q"}]] * 2, "chosen": ["a", "a"],
                          "rejected": ["b", "b"], "source": ["s", "s"], "source_row": [0, 1]})
    cfg = GateConfig.from_dict({"dedup": {"enabled": False}, "near_dup": {"enabled": False}})
    res = run_gate(t, cfg)
    assert res.kept.num_rows == 2 and "dedup" not in res.stats["checks"]
    empty = run_gate(t.slice(0, 0))
    assert empty.kept.num_rows == 0 and empty.rejects.num_rows == 0


