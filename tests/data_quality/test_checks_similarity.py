"""near_identical (chosen vs rejected) and near_dup (MinHash/LSH across rows) on hand-made and planted data."""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from data_quality.checks import near_dup, near_identical
from data_quality.checks.text import jaccard, shingle_set, text_shingles
from data_quality.synthetic import make_synthetic
from storage.schema import build_pair_table


def pairs(rows: list[tuple[str, str, str]], sources: list[str] | None = None) -> pa.Table:
    return build_pair_table({
        "prompt": [[{"role": "user", "content": p}] for p, _, _ in rows],
        "chosen": [c for _, c, _ in rows], "rejected": [r for _, _, r in rows],
        "source": sources or ["t"] * len(rows), "source_row": list(range(len(rows))),
    })


def test_near_identical_threshold() -> None:
    long = "The capital of France is Paris, a city on the Seine with many museums and cafes."
    t = pairs([("q", long, long.replace("many", "lots of")), ("q", long, "I do not know."),
               ("q", "You're welcome!", "you're welcome."), ("q", long, long.replace("Seine ", "Seine  \n"))])
    res = near_identical.run(t, near_identical.NearIdenticalConfig(max_similarity=0.9))
    # case and punctuation are what a reader sees: "!" vs "." and "Y" vs "y" is 0.87 < 0.9
    assert res.kept.column("source_row").to_pylist() == [1, 2]
    assert res.rejects.column("reason").to_pylist() == ["near_identical_answers"] * 2
    strict = near_identical.run(t, near_identical.NearIdenticalConfig(max_similarity=0.99))
    assert strict.kept.column("source_row").to_pylist() == [0, 1, 2]  # whitespace only: still the same text
    with pytest.raises(ValueError):
        near_identical.NearIdenticalConfig(scorer="nope")


def test_vectorised_shingles_match_reference() -> None:
    texts = ["The cat sat on the mat.", "the CAT sat, on the mat", "a b", "", "Grüße aus Köln heute"]
    h, row = text_shingles(texts, 3)
    for i, t in enumerate(texts):
        assert len(set(h[row == i].tolist())) == len(shingle_set(t, 3))
    assert set(h[row == 0].tolist()) == set(h[row == 1].tolist())


def test_choose_bands_reaches_target_at_threshold() -> None:
    for t in (0.6, 0.7, 0.8, 0.9):
        b, r = near_dup.choose_bands(t, 64, 0.99)
        assert b * r <= 64 and 1 - (1 - t**r) ** b >= 0.99


def test_near_dup_hand_made_keeps_first_across_sources() -> None:
    base = " ".join(f"word{i}" for i in range(60))
    edited = base.replace("word30", "other")
    t = pairs([("q", base, "no"), ("z", "totally different text here", "x y"), ("q", edited, "no")],
              sources=["s1", "s2", "s3"])
    res = near_dup.run(t, near_dup.NearDupConfig(threshold=0.8))
    assert res.kept.column("source_row").to_pylist() == [0, 1]
    assert res.rejects.column("duplicate_of").to_pylist() == [t.column("pair_id")[0].as_py()]
    assert res.stats["cluster_sizes"] == {"2": 1} and res.stats["cross_source_clusters"] == 1


def test_near_dup_recall_and_precision_on_planted_set() -> None:
    data = make_synthetic(3000, seed=3, rates={"near_dup": 0.1, "exact_dup": 0.0, "contradiction": 0.0})
    cfg = near_dup.NearDupConfig(threshold=0.7)
    labels, _, stats = near_dup.find_clusters(near_dup.pair_text(data.table, cfg.fields), cfg)
    truth = data.near_dup_pairs
    true = truth[truth[:, 2] >= cfg.threshold]
    i, j = true[:, 0].astype(int), true[:, 1].astype(int)
    assert len(true) > 50
    assert (labels[i] == labels[j]).mean() >= 0.95
    # Exact verification: every merged row has Jaccard >= threshold with some member of its cluster.
    p, c, r = (data.table.column(f).to_pylist() for f in ("prompt_text", "chosen", "rejected"))
    sets = {}

    def sh(k: int) -> set:
        if k not in sets:
            sets[k] = shingle_set(f"{p[k]}\n{c[k]}\n{r[k]}", 3)
        return sets[k]
    for k in np.flatnonzero(labels != np.arange(labels.size))[:100]:
        members = np.flatnonzero(labels == labels[k])
        assert max(jaccard(sh(int(k)), sh(int(m))) for m in members if m != k) >= cfg.threshold - 1e-9
    assert stats["verified_pairs"] <= stats["candidates"]


def test_exact_jaccard_matches_reference() -> None:
    texts = pl.Series(["a b c d e f g", "a b c d e f h", "x y z", "a b c d e f g"])
    pairs_ = np.array([[0, 1], [0, 2], [0, 3]])
    got = near_dup.exact_jaccard(pairs_, lambda rows: texts.gather(rows), 3)
    want = [jaccard(shingle_set(texts[int(a)], 3), shingle_set(texts[int(b)], 3)) for a, b in pairs_]
    assert np.allclose(got, want)


def test_near_dup_needs_both_answers_similar() -> None:
    # One long chosen answer shared by two pairs with different rejected answers (AlpacaEval's shape: one
    # reference output against several models): the concatenated texts are > 0.8 similar, the pairs are not.
    prompt = "explain how tides work"
    long_chosen = " ".join(f"tide{i} moon{i}" for i in range(80))
    t = pairs([(prompt, long_chosen, "the sea goes up and down because of wind"),
               (prompt, long_chosen, "i do not know anything about oceans sorry"),
               (prompt, long_chosen.replace("tide5 ", "tides "), "the sea goes up and down because of wind")])
    res = near_dup.run(t, near_dup.NearDupConfig(threshold=0.8))
    # rows 0 and 1 differ in the rejected answer: both stay; row 2 is a light edit of row 0: dropped
    assert res.kept.column("source_row").to_pylist() == [0, 1]
    assert res.stats["different_answers"] >= 1
    loose = near_dup.run(t, near_dup.NearDupConfig(threshold=0.8, min_answer_jaccard=0.0))
    assert loose.kept.column("source_row").to_pylist() == [0]
