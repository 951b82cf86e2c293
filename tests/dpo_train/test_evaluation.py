from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from dpo_train.evaluation import (
    clustered_mean_se,
    compare_scores,
    diversity,
    evaluate_round,
    kl_estimate,
    ks_statistic,
    length_drift,
    score_distribution,
    win_rate,
)
from dpo_train.generation import GenerationConfig, generate
from dpo_train.judges import PythonFunctionJudge
from dpo_train.round_report import render_report, write_report

LEN_JUDGE = PythonFunctionJudge("dpo_train.judges.functions:answer_length")


def gens(responses: list[str], prompts: int = 2) -> pa.Table:
    n = len(responses) // prompts
    return pa.table({
        "prompt_id": [f"p{i // n}" for i in range(len(responses))],
        "prompt": [[{"role": "user", "content": f"q{i // n}"}] for i in range(len(responses))],
        "sample_index": [i % n for i in range(len(responses))],
        "response": responses,
        "num_tokens": [len(r.split()) for r in responses],
        "finish_reason": ["stop"] * len(responses),
    })


def test_score_distribution_and_shift():
    d = score_distribution([1.0, 2.0, 3.0, float("nan"), 4.0])
    assert d["n"] == 4 and d["mean"] == 2.5 and d["p50"] == 2.5 and sum(d["histogram"]["counts"]) == 4
    assert score_distribution([])["mean"] is None
    c = compare_scores([2.0, 3.0], previous=[1.0, 2.0], reference=[0.0, 0.0])
    assert c["delta_mean_vs_previous"] == 1.0 and c["delta_mean_vs_reference"] == 2.5
    assert c["ks_vs_reference"] == 1.0 and ks_statistic([1, 2], [1, 2]) == 0.0 and ks_statistic([], [1]) is None


def test_score_means_carry_standard_errors_clustered_by_prompt():
    c = compare_scores(([1.0, 1.0, 3.0, 3.0], ["a", "a", "b", "b"]), reference=([0.0, 1.0, 0.0, 1.0], None))
    # two prompts of two identical samples each: the effective sample size is 2, not 4
    assert c["current"]["mean"] == 2.0 and c["current"]["stderr"] == pytest.approx(1.0)
    assert c["reference"]["stderr"] == pytest.approx(np.std([0, 1, 0, 1], ddof=1) / 2)
    assert c["delta_stderr_vs_reference"] == pytest.approx(np.hypot(1.0, c["reference"]["stderr"]))
    m, se = clustered_mean_se([1.0, 2.0, 3.0, 4.0], ["a", "b", "c", "d"])
    assert m == 2.5 and se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)


def test_diversity_distinct_n_and_pairwise_similarity():
    same = gens(["a b c", "a b c", "x y", "x y"])
    d = diversity(same)
    assert d["pairwise_similarity"] == 1.0 and d["distinct_1"] == pytest.approx(5 / 10)
    varied = diversity(gens(["a b c", "d e f", "x y", "z w"]))
    assert varied["pairwise_similarity"] == 0.0 and varied["distinct_2"] == 1.0


def test_length_drift():
    d = length_drift(gens(["aaaa", "bbbb"]), previous=gens(["aa", "bb"]), reference=gens(["a", "b"]))
    assert d["current"]["mean_chars"] == 4 and d["chars_ratio_vs_previous"] == 2.0
    assert d["chars_ratio_vs_reference"] == 4.0 and d["current"]["truncated_fraction"] == 0.0
    t = gens(["a", "b", "c", "d"]).append_column("stop_reason", pa.array(["eos", "length", "length", "stop_string"]))
    cur = length_drift(t)["current"]
    assert (cur["truncated_fraction"], cur["eos_fraction"], cur["stop_string_fraction"]) == (0.5, 0.25, 0.25)
    assert cur["truncated_fraction_stderr"] == pytest.approx(np.std([0, 1, 1, 0], ddof=1) / 2)


def test_win_rate_matches_answers_by_prompt_and_sample():
    cur = gens(["a b c", "a", "x y", "z"])
    prev = gens(["a", "a b", "x y", "w"])
    w = win_rate(cur, prev, LEN_JUDGE)
    assert (w["wins"], w["ties"], w["losses"]) == (1, 2, 1) and w["win_rate"] == 0.5 and w["n"] == 4
    assert w["stderr"] == 0.0  # clustered by prompt: both prompts average exactly 0.5
    w2 = win_rate(gens(["a b c", "a b", "x", "z"]), prev, LEN_JUDGE)
    assert w2["win_rate"] == 0.5 and w2["stderr"] == pytest.approx(0.25) and w2["ci95"][0] < 0.5 < w2["ci95"][1]
    assert win_rate(cur, gens(["q"] * 4).set_column(0, "prompt_id", pa.array(["o"] * 4)), LEN_JUDGE)["n"] == 0


def test_kl_estimate_with_tiny_models(tiny_model_dir, tiny_ref_dir, chat_prompts):
    g = generate(chat_prompts[:2], GenerationConfig(model=str(tiny_model_dir), n=2, max_new_tokens=6, seed=0))
    same = kl_estimate(str(tiny_model_dir), str(tiny_model_dir), g)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["n"] == 4
    diff = kl_estimate(str(tiny_model_dir), str(tiny_ref_dir), g)
    assert diff["kl"] != pytest.approx(0.0, abs=1e-3) and diff["stderr"] is not None


def test_evaluate_round_and_report(tmp_path, tiny_model_dir, tiny_ref_dir, chat_prompts):
    ref = gens(["a", "b", "c", "d"])
    r1 = gens(["a b", "b c", "c", "d e"])
    r2 = gens(["a b c", "b c d", "c d", "d e f"])
    sampled = generate(chat_prompts[:2], GenerationConfig(model=str(tiny_model_dir), n=2, max_new_tokens=6))
    hist = [evaluate_round(1, r1, judge=LEN_JUDGE, previous=ref, reference=ref),
            evaluate_round(2, r2, judge=LEN_JUDGE, previous=r1, reference=ref)]
    with_kl = evaluate_round(2, sampled, judge=LEN_JUDGE, policy_path=str(tiny_model_dir),
                             reference_path=str(tiny_ref_dir))
    assert with_kl["kl"]["kl"] > 0 and with_kl["kl"]["stderr"] > 0 and "kl_mc" in with_kl["kl"]
    assert hist[1]["score"]["current"]["mean"] == 2.75
    assert hist[1]["score"]["delta_mean_vs_previous"] == pytest.approx(1.0)
    assert hist[1]["win_rate"]["win_rate"] == 1.0 and hist[1]["win_rate_vs_reference"]["win_rate"] == 1.0
    assert "diversity" in hist[1] and "kl" not in hist[0]
    hist[1]["kl"] = with_kl["kl"]
    assert hist[0]["judge"] == LEN_JUDGE.label
    with pytest.raises(ValueError, match="no judge"):
        evaluate_round(3, r2.append_column("score", pa.array([1.0] * 4)), previous=r1)
    assert "score" not in evaluate_round(3, r2, previous=r1)  # nothing to score with: left out, not invented
    html = render_report(hist[::-1])
    assert html.count("data:image/png;base64,") == 6 and " ± " in html
    assert re.search(r"<tr><td>1</td>.*<tr><td>2</td>", html)  # rounds in order
    path = write_report(hist, tmp_path / "rep" / "rounds.html")
    assert path.read_text().startswith("<!doctype html>")
    assert np.isfinite(hist[1]["kl"]["kl"])
