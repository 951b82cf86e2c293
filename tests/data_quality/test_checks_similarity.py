"""near_identical (chosen vs rejected) and near_dup (MinHash/LSH across rows) on hand-made and planted data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from data_quality.checks import near_dup, near_identical
from data_quality.checks.text import jaccard, shingle_set, text_shingles
from data_quality.scale import edited_copy, tagged_sets
from data_quality.synthetic import make_synthetic
from storage.schema import build_pair_table

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def pairs(rows: list[tuple[str, str, str]], sources: list[str] | None = None) -> pa.Table:
    return build_pair_table({
        "prompt": [[{"role": "user", "content": p}] for p, _, _ in rows],
        "chosen": [c for _, c, _ in rows], "rejected": [r for _, _, r in rows],
        "source": sources or ["t"] * len(rows), "source_row": list(range(len(rows))),
    })


def test_near_identical_threshold() -> None:
    long = "The capital of France is Paris, a city on the Seine with many museums and cafes."
    t = pairs([("q", long, long.replace("many", "lots of")), ("q", long, "I do not know."),
               ("q", "You're welcome!", "you're welcome."), ("q", long, long.replace("Seine ", "Seine  ") + " \r\n")])
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
        for groups in (1, 2):
            b, r = near_dup.choose_bands(t, 64, 0.99, groups)
            assert b * r <= 64 and 1 - (1 - t ** (r * groups)) ** b >= 0.99


def test_near_dup_hand_made_keeps_first_across_sources() -> None:
    base = " ".join(f"word{i}" for i in range(60))
    edited = base.replace("word30", "other")
    t = pairs([("q", base, "no"), ("z", "totally different text here", "x y"), ("q", edited, "no")],
              sources=["s1", "s2", "s3"])
    res = near_dup.run(t, near_dup.NearDupConfig(threshold=0.8))
    assert res.kept.column("source_row").to_pylist() == [0, 1]
    assert res.rejects.column("duplicate_of").to_pylist() == [t.column("pair_id")[0].as_py()]
    assert res.stats["cluster_sizes"] == {"2": 1} and res.stats["cross_source_clusters"] == 1


def _within(table: pa.Table, a: int, b: int, cfg: near_dup.NearDupConfig) -> bool:
    """The check's own rule, recomputed with Python sets: whole tagged pair and each answer."""
    whole = tagged_sets(table.take([a, b]), cfg.fields, cfg.ngram)
    answers = [tagged_sets(table.take([a, b]), (f,), cfg.ngram) for f in ("chosen", "rejected")]
    return (jaccard(*whole) >= cfg.threshold - 1e-9
            and all(jaccard(*s) >= cfg.min_answer_jaccard - 1e-9 for s in answers))


def _assert_no_chaining(table: pa.Table, res, cfg: near_dup.NearDupConfig) -> None:
    ids = table.column("pair_id").to_pylist()
    kept = set(res.kept.column("pair_id").to_pylist())
    for dropped, named in zip(res.rejects.column("pair_id").to_pylist(),
                              res.rejects.column("duplicate_of").to_pylist(), strict=True):
        assert named in kept, "a drop must name a kept pair"
        assert _within(table, ids.index(named), ids.index(dropped), cfg), (dropped, named)


def test_near_dup_does_not_chain_on_real_rows() -> None:
    # Real AlpacaEval rows (copied from ../shared/data) where clusters as connected components dropped a pair
    # against one it is not similar to (A~B, B~C: C dropped against A), plus the "H_AR_" rows (e.g. rejected
    # "heart, hair, harm" vs "HARRY and HARD"): none of those may be dropped against each other.
    rows = [json.loads(line) for line in (FIXTURES / "alpaca_eval_near_dup_chains.jsonl").open(encoding="utf-8")]
    t = build_pair_table({k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected", "source", "source_row")})
    cfg = near_dup.NearDupConfig()
    res = near_dup.run(t, cfg)
    assert res.rejects.num_rows >= 3  # the clusters are real: each still loses the rows that are within the rule
    _assert_no_chaining(t, res, cfg)
    harry = [i for i, r in enumerate(rows) if "H_AR_" in r["prompt"][0]["content"]]
    assert set(res.kept.column("source_row").to_pylist()) >= {rows[i]["source_row"] for i in harry}


def test_near_dup_chain_keeps_the_far_end() -> None:
    words = [f"w{i}" for i in range(40)]

    def edit(k: int) -> str:  # words from k on replaced
        return " ".join(words[:k] + [f"x{i}" for i in range(k, 40)])
    a, b, c = edit(40), edit(34), edit(31)
    t = pairs([("q", a, a), ("q", b, b), ("q", c, c)])
    cfg = near_dup.NearDupConfig(threshold=0.7, min_answer_jaccard=0.0)
    whole = tagged_sets(t, cfg.fields, cfg.ngram)
    assert jaccard(whole[0], whole[1]) >= 0.7 and jaccard(whole[1], whole[2]) >= 0.7 > jaccard(whole[0], whole[2])
    res = near_dup.run(t, cfg)
    assert res.kept.column("source_row").to_pylist() == [0, 2]  # c is not dropped against a through b


def test_near_dup_recall_and_precision_on_planted_set() -> None:
    data = make_synthetic(3000, seed=3, rates={"near_dup": 0.1, "exact_dup": 0.0, "contradiction": 0.0})
    cfg = near_dup.NearDupConfig(threshold=0.7, min_answer_jaccard=0.0)
    res = near_dup.run(data.table, cfg)
    sets = tagged_sets(data.table, cfg.fields, cfg.ngram)
    dropped = set(res.rejects.column("source_row").to_pylist())
    rows = data.table.column("source_row").to_pylist()
    # Every planted copy within the threshold of its (kept, earlier) original is found.
    # (An original that is itself a near-duplicate of an earlier row is dropped; its copies are then judged
    # against that earlier row, not through the original: no chaining.)
    planted = [(b, i) for i, b in enumerate(data.base_row) if b >= 0 and data.defect[i] == "near_dup" and b < i
               and rows[b] not in dropped and jaccard(sets[b], sets[i]) >= cfg.threshold]
    assert len(planted) > 50
    assert np.mean([rows[i] in dropped for _, i in planted]) >= 0.95
    _assert_no_chaining(data.table, res, cfg)


def test_near_dup_on_planted_copies_inside_real_rows(shared_data) -> None:
    from data_quality.ingest import ingest_files

    ann = shared_data / "alpaca_eval" / "annotations"
    files = sorted(ann.glob("*alpaca_eval_gpt4.json.gz"))[:4]  # 4 x 805 rows, one reference answer shared
    real = ingest_files(files).pairs
    cfg = near_dup.NearDupConfig()
    copy = edited_copy(real.slice(0, 400), copy=1)
    t = pa.concat_tables([real, copy.select(real.column_names).cast(real.schema)])
    res = near_dup.run(t, cfg)
    n = real.num_rows
    sets = tagged_sets(t, cfg.fields, cfg.ngram)
    truth = [n + k for k in range(copy.num_rows) if _within(t, k, n + k, cfg)]
    assert len(truth) > 300
    dropped = set(res.rejects.column("pair_id").to_pylist())
    ids = t.column("pair_id").to_pylist()
    recall = np.mean([ids[i] in dropped for i in truth])
    assert recall >= 0.97, recall
    _assert_no_chaining(t, res, cfg)
    del sets


def test_intersections_match_python_sets() -> None:
    texts = pl.Series(["a b c d e f g", "a b c d e f h", "x y z", "b a c d e f g", "😌😊", "😅👍"])
    t = pairs([("q", x, "r") for x in texts])
    src = near_dup.TableTexts(t)
    f = near_dup.Field(src, "chosen", near_dup.NearDupConfig())
    cand = np.array([[0, 1], [0, 2], [0, 3], [4, 5], [1, 3]])
    inter, union = near_dup.field_overlap(f, cand)
    sets = tagged_sets(t, ("chosen",), 3)
    want = [len(sets[a] & sets[b]) / len(sets[a] | sets[b]) if sets[a] | sets[b] else 0.0 for a, b in cand]
    assert np.allclose(np.divide(inter, union, out=np.zeros(len(cand)), where=union > 0), want)
    assert want[2] < 1.0  # "b a c" is not "a b c": shingles keep word order


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
    loose = near_dup.run(t, near_dup.NearDupConfig(threshold=0.8, min_answer_jaccard=0.0))
    assert loose.kept.column("source_row").to_pylist() == [0]
