from __future__ import annotations

import math

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpo_train.pairing import RULES, PairingConfig, build_pairs
from storage.schema import PAIR_SCHEMA, REJECTS_SCHEMA, validate_pair_table


def scored(groups: dict[str, list[float | None]], judge: str = "python:f@1") -> pa.Table:
    rows = []
    for p, scores in groups.items():
        for k, s in enumerate(scores):
            rows.append({"prompt_id": p, "prompt": [{"role": "user", "content": f"question {p}"}], "sample_index": k,
                         "response": f"answer {p}-{k}", "score": s, "model": f"policy-{p}", "judge": judge})
    return pa.Table.from_pylist(rows)


def pairs_of(res) -> list[tuple[str, str]]:
    return list(zip(res.pairs.column("chosen").to_pylist(), res.pairs.column("rejected").to_pylist(), strict=True))


def test_config_is_strict():
    with pytest.raises(ValueError, match="unknown pair rule"):
        PairingConfig(rule="nope")
    with pytest.raises(ValueError, match="unknown PairingConfig keys"):
        PairingConfig.from_dict({"rule": "best_vs_worst", "margin": 1})
    with pytest.raises(ValueError):
        PairingConfig(min_margin=-1)
    with pytest.raises(ValueError, match="missing columns"):
        build_pairs(pa.table({"prompt_id": ["a"]}), PairingConfig(), round=1)


def test_best_vs_worst_columns_and_provenance():
    res = build_pairs(scored({"a": [0.1, 0.9, 0.5], "b": [2.0, 1.0]}), {"rule": "best_vs_worst"}, round=3)
    assert res.pairs.schema == PAIR_SCHEMA
    validate_pair_table(res.pairs)
    assert pairs_of(res) == [("answer a-1", "answer a-0"), ("answer b-0", "answer b-1")]
    assert res.pairs.column("chosen_score").to_pylist() == [0.9, 2.0]
    assert res.pairs.column("rejected_score").to_pylist() == [0.1, 1.0]
    assert res.pairs.column("source").to_pylist() == ["round-3"] * 2
    assert res.pairs.column("round").to_pylist() == [3, 3]
    assert res.pairs.column("source_row").to_pylist() == [0, 1]
    assert res.pairs.column("judge").to_pylist() == ["python:f@1"] * 2
    assert res.pairs.column("chosen_model").to_pylist() == ["policy-a", "policy-b"]
    assert res.dropped.num_rows == 0 and res.dropped.schema == REJECTS_SCHEMA
    assert res.stats["pairs"] == 2 and res.stats["prompts"] == 2


def test_ties_and_margin_are_dropped_with_reasons_not_silently():
    t = scored({"tie": [1.0, 1.0, 1.0], "close": [1.0, 1.05], "ok": [0.0, 1.0], "single": [1.0],
                "nan": [float("nan"), None, 2.0]})
    res = build_pairs(t, PairingConfig(min_margin=0.1), round=1, judge="override")
    assert pairs_of(res) == [("answer ok-1", "answer ok-0")]
    assert res.pairs.column("judge").to_pylist() == ["override"]
    reasons = dict(zip(res.dropped.column("prompt_text").to_pylist(), res.dropped.column("reason").to_pylist(),
                       strict=True))
    assert reasons == {"question tie": "tie", "question close": "below_min_margin"}
    assert set(res.dropped.column("rule").to_pylist()) == {"pairing:best_vs_worst"}
    assert res.stats["responses_missing_score"] == 2
    assert res.stats["dropped_by_reason"] == {"below_min_margin": 1, "tie": 1}
    # Kept and dropped share one numbering, so (source, source_row) identifies every candidate.
    rows = res.pairs.column("source_row").to_pylist() + res.dropped.column("source_row").to_pylist()
    assert sorted(rows) == list(range(len(rows)))


def test_all_above_margin_with_cap():
    t = scored({"a": [0.0, 1.0, 2.0, 3.0]})
    res = build_pairs(t, {"rule": "all_above_margin", "min_margin": 1.5}, round=1)
    got = sorted((c[-1], r[-1]) for c, r in pairs_of(res))
    assert got == [("2", "0"), ("3", "0"), ("3", "1")]
    assert res.stats["dropped_by_reason"] == {"below_min_margin": 3}
    capped = build_pairs(t, {"rule": "all_above_margin", "min_margin": 1.5, "max_pairs_per_prompt": 2}, round=1)
    # Largest margins survive the cap; equal margins are broken by sample_index, deterministically.
    assert sorted((c[-1], r[-1]) for c, r in pairs_of(capped)) == [("2", "0"), ("3", "0")]
    assert capped.stats["dropped_by_reason"]["over_cap"] == 1
    ties = build_pairs(scored({"t": [1.0, 1.0]}), {"rule": "all_above_margin"}, round=1)
    assert ties.pairs.num_rows == 0 and ties.dropped.column("reason").to_pylist() == ["tie"]


def test_best_vs_random_lower_is_seeded_and_respects_margin():
    t = scored({f"p{i}": [5.0, 1.0, 2.0, 3.0, 4.9] for i in range(30)})
    res = build_pairs(t, {"rule": "best_vs_random_lower", "min_margin": 0.5, "seed": 1}, round=2)
    assert res.pairs.num_rows == 30
    assert set(res.pairs.column("chosen_score").to_pylist()) == {5.0}
    rejected = res.pairs.column("rejected_score").to_pylist()
    assert set(rejected) <= {1.0, 2.0, 3.0} and len(set(rejected)) == 3  # random partner, never the 4.9
    again = build_pairs(t, {"rule": "best_vs_random_lower", "min_margin": 0.5, "seed": 1}, round=2)
    assert pairs_of(again) == pairs_of(res)
    other = build_pairs(t, {"rule": "best_vs_random_lower", "min_margin": 0.5, "seed": 2}, round=2)
    assert pairs_of(other) != pairs_of(res)
    none = build_pairs(scored({"x": [1.0, 0.95]}), {"rule": "best_vs_random_lower", "min_margin": 0.5}, round=2)
    assert none.pairs.num_rows == 0 and none.dropped.column("reason").to_pylist() == ["below_min_margin"]


score_values = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.floats(-5, 5, allow_nan=False))


@settings(max_examples=40, deadline=None)
@given(groups=st.dictionaries(st.sampled_from("abcdef"), st.lists(score_values, min_size=1, max_size=5),
                              min_size=1, max_size=4),
       rule=st.sampled_from(sorted(RULES)), margin=st.sampled_from([0.0, 0.3]),
       cap=st.sampled_from([None, 1, 2]))
def test_pairing_invariants(groups, rule, margin, cap):
    res = build_pairs(scored(groups), PairingConfig(rule=rule, min_margin=margin, max_pairs_per_prompt=cap), round=1)
    c, r = res.pairs.column("chosen_score").to_pylist(), res.pairs.column("rejected_score").to_pylist()
    assert all(x - y >= margin and x > y for x, y in zip(c, r, strict=True))
    assert res.stats["pairs"] + res.stats["dropped"] == res.stats["candidates"]
    per_prompt = res.pairs.group_by("prompt_id").aggregate([("pair_id", "count")]).column(1).to_pylist()
    if cap is not None:
        assert max(per_prompt, default=0) <= cap
    if rule != "all_above_margin":
        assert max(per_prompt, default=0) <= 1
    usable = {p: [s for s in v if s is not None and not math.isnan(s)] for p, v in groups.items()}
    for p, v in usable.items():
        has_gap = len(v) >= 2 and max(v) - min(v) >= margin and max(v) > min(v)
        if rule == "best_vs_worst" or rule == "best_vs_random_lower":
            assert (f"question {p}" in res.pairs.column("prompt_text").to_pylist()) == has_gap


def scored_with_ids(groups: dict[str, list[tuple[float, str]]]) -> pa.Table:
    """Scored generations carrying sampled ids; each answer is (score, stop_reason)."""
    rows = []
    for p, answers in groups.items():
        for k, (s, stop) in enumerate(answers):
            ids = [10 + k, 20 + k] + ([2] if stop == "eos" else [30 + k])
            rows.append({"prompt_id": p, "prompt": [{"role": "user", "content": f"question {p}"}], "sample_index": k,
                         "response": f"answer {p}-{k}", "score": s, "prompt_token_ids": [1, 5, 6],
                         "token_ids": ids, "stop_reason": stop,
                         "finish_reason": "length" if stop == "length" else "stop"})
    return pa.Table.from_pylist(rows)


def test_pairs_carry_the_sampled_token_ids_and_stop_reasons():
    res = build_pairs(scored_with_ids({"a": [(0.1, "eos"), (0.9, "length")]}), PairingConfig(), round=1)
    row = res.pairs.to_pylist()[0]
    assert row["chosen_token_ids"] == [11, 21, 31] and row["rejected_token_ids"] == [10, 20, 2]
    assert row["prompt_token_ids"] == [1, 5, 6]
    assert (row["chosen_stop"], row["rejected_stop"]) == ("length", "eos")
    assert res.stats["responses_truncated"] == 1 and res.stats["pairs_truncated_chosen"] == 1


def test_truncated_answers_policy_drop_keep_or_loss():
    groups = {"a": [(0.1, "eos"), (0.9, "length"), (0.5, "eos")], "b": [(2.0, "length"), (1.0, "length")]}
    keep = build_pairs(scored_with_ids(groups), PairingConfig(truncated="keep"), round=1)
    assert pairs_of(keep) == [("answer a-1", "answer a-0"), ("answer b-0", "answer b-1")]
    drop = build_pairs(scored_with_ids(groups), PairingConfig(truncated="drop"), round=1)
    assert pairs_of(drop) == [("answer a-2", "answer a-0")]
    assert drop.stats["responses_truncated"] == 3 and drop.stats["responses_truncated_dropped"] == 3
    loss = build_pairs(scored_with_ids(groups), PairingConfig(truncated="loss"), round=1)
    # a truncated answer loses to every answer that stopped; two truncated answers tie and never pair
    assert pairs_of(loss) == [("answer a-2", "answer a-1")]
    assert loss.stats["pairs_truncated_chosen"] == 0 and loss.stats["dropped_by_reason"] == {"tie": 1}
    with pytest.raises(ValueError, match="truncated must be one of"):
        PairingConfig(truncated="maybe")
