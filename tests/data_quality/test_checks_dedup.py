"""Exact dedup and contradictions: which row is kept, reasons and duplicate_of."""

from __future__ import annotations

import pyarrow as pa

from data_quality.checks import contradictions, dedup, normalise
from storage.schema import build_pair_table


def pairs(rows: list[tuple[str, str, str, str]]) -> pa.Table:
    return build_pair_table({
        "prompt": [[{"role": "user", "content": p}] for p, _, _, _ in rows],
        "chosen": [c for _, c, _, _ in rows], "rejected": [r for _, _, r, _ in rows],
        "source": [s for _, _, _, s in rows], "source_row": list(range(len(rows))),
    })


def test_exact_duplicates_after_normalisation_keep_first() -> None:
    t = pairs([("q", "a", "b", "s1"), ("q", "c", "d", "s1"), ("q ", "a  ", "b", "s2"), ("q", "a", "b", "s3")])
    t = normalise.run(t, normalise.NormaliseConfig()).kept
    res = dedup.run(t, dedup.DedupConfig())
    assert res.kept.column("source_row").to_pylist() == [0, 1]
    assert res.rejects.column("source_row").to_pylist() == [2, 3]
    kept_id = res.kept.column("pair_id")[0].as_py()
    assert res.rejects.column("duplicate_of").to_pylist() == [kept_id, kept_id]
    assert set(res.rejects.column("reason").to_pylist()) == {"exact_duplicate"}


def test_contradictions_drop_both_across_sources() -> None:
    t = pairs([("q", "a", "b", "s1"), ("q", "b", "a", "s2"), ("q", "a", "c", "s1"), ("r", "b", "a", "s1")])
    res = contradictions.run(t, contradictions.ContradictionsConfig(policy="drop_both"))
    assert res.kept.column("source_row").to_pylist() == [2, 3]
    assert res.rejects.column("reason").to_pylist() == ["contradiction", "contradiction"]
    assert res.stats["contradicted_pairs"] == 1 and res.stats["cross_source_pairs"] == 1


def test_contradictions_keep_majority_and_tie() -> None:
    t = pairs([("q", "a", "b", "s1"), ("q", "a", "b", "s2"), ("q", "b", "a", "s3"),  # 2 vs 1
               ("p", "x", "y", "s1"), ("p", "y", "x", "s2")])  # tie
    res = contradictions.run(t, contradictions.ContradictionsConfig(policy="keep_majority"))
    assert res.kept.column("source_row").to_pylist() == [0, 1]
    rej = {r["source_row"]: r for r in res.rejects.select(["source_row", "reason", "duplicate_of"]).to_pylist()}
    assert rej[2]["reason"] == "contradiction_minority"
    assert rej[2]["duplicate_of"] == t.column("pair_id")[0].as_py()
    assert rej[3]["reason"] == rej[4]["reason"] == "contradiction_tie"
