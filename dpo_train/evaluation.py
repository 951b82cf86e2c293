"""Per-round evaluation: judge reward with its standard error, win rates against the previous round and the
reference, KL to the reference on the sampled ids, answer length, truncation and EOS rates, and diversity.

Every function returns plain JSON-able dicts, so a round can store its evaluation in the catalog and the
report (dpo_train.round_report) can be rebuilt from the stored records alone. Every estimate carries its
standard error: win rates and score means are clustered by prompt (a prompt's samples are not independent of
each other), KL is over samples (see dpo_train.kl).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np
import pyarrow as pa

from dpo_train.judges.base import Judge, score_table
from dpo_train.kl import mean_se

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values.to_pylist() if isinstance(values, pa.Array | pa.ChunkedArray) else values, dtype=float)
    return arr[np.isfinite(arr)]


def clustered_mean_se(values: Any, groups: Any | None = None) -> tuple[float | None, float | None]:
    """Mean of `values` and its standard error treating each group (prompt) as one independent unit: the
    samples of one prompt share its difficulty, so a plain std/sqrt(n) would understate the error."""
    v = np.asarray(values, dtype=float)
    if groups is None or v.size == 0:
        return mean_se(v)
    g = np.asarray(groups)
    ok = np.isfinite(v)
    v, g = v[ok], g[ok]
    if v.size == 0:
        return None, None
    _, inv = np.unique(g, return_inverse=True)
    k = int(inv.max()) + 1
    if k < 2:
        return mean_se(v)
    # Ratio estimator over clusters: mean = sum/count; its s.e. from the per-cluster residual sums.
    sums, counts = np.bincount(inv, v, k), np.bincount(inv, minlength=k).astype(float)
    mean = float(sums.sum() / counts.sum())
    resid = sums - mean * counts
    se = math.sqrt(k / (k - 1) * float((resid ** 2).sum())) / float(counts.sum())
    return mean, se


def score_distribution(scores: Any, bins: int = 10, groups: Any | None = None) -> dict[str, Any]:
    """n, mean with its standard error (clustered by `groups` when given), std, min/max, quantiles, histogram."""
    s = _finite(scores)
    if s.size == 0:
        return {"n": 0, "mean": None, "stderr": None, "std": None}
    counts, edges = np.histogram(s, bins=bins)
    _, se = clustered_mean_se(np.asarray(scores, dtype=float), groups)
    out: dict[str, Any] = {"n": int(s.size), "mean": float(s.mean()), "stderr": se, "std": float(s.std()),
                           "min": float(s.min()), "max": float(s.max())}
    out.update({f"p{int(q * 100)}": float(np.quantile(s, q)) for q in QUANTILES})
    out["histogram"] = {"counts": counts.tolist(), "edges": edges.tolist()}
    return out


def ks_statistic(a: Any, b: Any) -> float | None:
    """Two-sample Kolmogorov-Smirnov distance (largest gap between the empirical CDFs)."""
    x, y = np.sort(_finite(a)), np.sort(_finite(b))
    if x.size == 0 or y.size == 0:
        return None
    grid = np.concatenate([x, y])
    return float(np.max(np.abs(np.searchsorted(x, grid, "right") / x.size - np.searchsorted(y, grid, "right") / y.size)))


Scored = tuple[np.ndarray, np.ndarray | None]  # scores and their prompt ids (clusters)


def compare_scores(current: Any, previous: Any | None = None, reference: Any | None = None) -> dict[str, Any]:
    """Score distribution of this round, and its shift against the previous round and the reference.

    Each argument is scores, or (scores, prompt ids). The samples of different rounds are drawn with fresh
    seeds, so a difference's standard error is sqrt(se_a^2 + se_b^2)."""
    def split(x: Any) -> Scored:
        return (np.asarray(x[0], float), None if x[1] is None else np.asarray(x[1])) if isinstance(x, tuple) \
            else (np.asarray(x, float), None)

    cur_s, cur_g = split(current)
    out: dict[str, Any] = {"current": score_distribution(cur_s, groups=cur_g)}
    for name, other in (("previous", previous), ("reference", reference)):
        if other is None:
            continue
        o_s, o_g = split(other)
        dist = score_distribution(o_s, groups=o_g)
        out[name] = dist
        cur = out["current"]
        out[f"delta_mean_vs_{name}"] = None if cur["mean"] is None or dist["mean"] is None \
            else cur["mean"] - dist["mean"]
        out[f"delta_stderr_vs_{name}"] = None if cur["stderr"] is None or dist["stderr"] is None \
            else math.hypot(cur["stderr"], dist["stderr"])
        out[f"ks_vs_{name}"] = ks_statistic(cur_s, o_s)
    return out


def kl_estimate(policy: str, reference: str, generations: pa.Table, *, batch_size: int = 8,
                dtype: str = "auto", device: str | None = None) -> dict[str, Any]:
    """KL of the policy to the reference on the policy's own sampled token ids (see dpo_train.kl)."""
    from dpo_train.kl import kl_to_reference

    return kl_to_reference(policy, reference, generations, batch_size=batch_size, dtype=dtype, device=device)


def _stop_reasons(t: pa.Table) -> list[str] | None:
    if "stop_reason" in t.column_names and t.column("stop_reason").null_count == 0:
        return t.column("stop_reason").to_pylist()
    if "finish_reason" in t.column_names:  # older generations: "stop" meant EOS
        return ["length" if f == "length" else "eos" for f in t.column("finish_reason").to_pylist()]
    return None


def _lengths(t: pa.Table) -> dict[str, Any]:
    resp = t.column("response").to_pylist()
    if not resp:
        return {"n": 0, "mean_chars": None}
    chars = np.array([len(r) for r in resp], dtype=float)
    words = np.array([len(r.split()) for r in resp], dtype=float)
    out: dict[str, Any] = {"n": len(resp), "mean_chars": float(chars.mean()), "median_chars": float(np.median(chars)),
                           "mean_words": float(words.mean())}
    if "num_tokens" in t.column_names:
        out["mean_tokens"], out["mean_tokens_stderr"] = mean_se(_finite(t.column("num_tokens")))
    reasons = _stop_reasons(t)
    if reasons is not None:
        for key, reason in (("truncated_fraction", "length"), ("eos_fraction", "eos"),
                            ("stop_string_fraction", "stop_string")):
            out[key], out[key + "_stderr"] = mean_se([r == reason for r in reasons])
    return out


def length_drift(current: pa.Table, previous: pa.Table | None = None,
                 reference: pa.Table | None = None) -> dict[str, Any]:
    """Answer lengths, truncation and EOS rates of this round and the length ratio to previous and reference."""
    out: dict[str, Any] = {"current": _lengths(current)}
    for name, other in (("previous", previous), ("reference", reference)):
        if other is None:
            continue
        o = _lengths(other)
        out[name] = o
        c, p = out["current"]["mean_chars"], o["mean_chars"]
        out[f"chars_ratio_vs_{name}"] = None if not c or not p else c / p
    return out


def _units(t: pa.Table) -> list[list]:
    """The answer as a sequence: its sampled token ids when recorded, else its whitespace words."""
    if "token_ids" in t.column_names and t.column("token_ids").null_count == 0:
        return t.column("token_ids").to_pylist()
    return [r.split() for r in t.column("response").to_pylist()]


def diversity(t: pa.Table, ns: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """distinct-n (distinct n-grams / all n-grams over every answer) and the mean pairwise Jaccard similarity
    of the bigram sets of the samples of one prompt (1: a prompt's samples are all the same answer)."""
    seqs = _units(t)
    out: dict[str, Any] = {}
    for n in ns:
        grams = [tuple(s[i:i + n]) for s in seqs for i in range(len(s) - n + 1)]
        out[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else None
    by_prompt: dict[str, list[set]] = {}
    for pid, s in zip(t.column("prompt_id").to_pylist(), seqs, strict=True):
        by_prompt.setdefault(pid, []).append({tuple(s[i:i + 2]) for i in range(len(s) - 1)} or {tuple(s)})
    sims, groups = [], []
    for pid, sets in by_prompt.items():
        for a, b in combinations(sets, 2):
            sims.append(len(a & b) / len(a | b) if a | b else 1.0)
            groups.append(pid)
    out["pairwise_similarity"], out["pairwise_similarity_stderr"] = clustered_mean_se(sims, groups) if sims \
        else (None, None)
    return out


def win_rate(current: pa.Table, other: pa.Table, judge: Judge) -> dict[str, Any]:
    """Pairwise win rate of this round's answers over `other`'s, matched on (prompt_id, sample_index).

    Ties count half. The standard error is clustered by prompt; ci95 is mean +- 1.96 s.e."""
    keys = ["prompt_id", "sample_index"]
    # Arrow joins cannot carry list columns (the prompt), so join row numbers and take afterwards.
    cur = current.select(keys).append_column("cur_row", pa.array(range(current.num_rows), pa.int64()))
    prev = other.select(keys).append_column("prev_row", pa.array(range(other.num_rows), pa.int64()))
    joined = cur.join(prev, keys=keys, join_type="inner").sort_by([(k, "ascending") for k in keys])
    if joined.num_rows == 0:
        return {"n": 0, "win_rate": None, "stderr": None}
    c_rows, p_rows = joined.column("cur_row"), joined.column("prev_row")
    sources = current.column("source").take(c_rows).to_pylist() if "source" in current.column_names else None
    p = judge.compare(current.column("prompt").take(c_rows).to_pylist(),
                      current.column("response").take(c_rows).to_pylist(),
                      other.column("response").take(p_rows).to_pylist(), sources)
    rate, se = clustered_mean_se(p, joined.column("prompt_id").to_pylist())
    assert rate is not None
    half = 1.96 * (se if se is not None else math.sqrt(max(rate * (1 - rate), 1e-12) / len(p)))
    return {"n": len(p), "win_rate": rate, "stderr": se, "wins": int(np.sum(p == 1.0)),
            "ties": int(np.sum(p == 0.5)), "losses": int(np.sum(p == 0.0)),
            "ci95": [max(0.0, rate - half), min(1.0, rate + half)], "judge": judge.label}


def _scores(t: pa.Table | None, judge: Judge | None) -> tuple[np.ndarray, np.ndarray] | None:
    if t is None:
        return None
    if "score" not in t.column_names:
        if judge is None:
            raise ValueError("generations carry no 'score' column and no judge was given to score them")
        t = score_table(t, judge)
    return np.asarray(t.column("score").to_pylist(), dtype=float), np.asarray(t.column("prompt_id").to_pylist())


def evaluate_round(round: int, generations: pa.Table, *, judge: Judge | None = None,
                   previous: pa.Table | None = None, reference: pa.Table | None = None,
                   policy_path: str | None = None, reference_path: str | None = None,
                   win_judge: Judge | None = None, batch_size: int = 8) -> dict[str, Any]:
    """One JSON-able evaluation record for round `round`.

    `generations`, `previous`, `reference`: answers of this round's policy, the previous round's policy and the
    reference policy to the same prompts (scored already, or scored here with `judge`). KL needs both model
    paths and the sampled token ids; win rates use `win_judge` (default `judge`).
    """
    rec: dict[str, Any] = {"round": round}
    if judge is not None or "score" in generations.column_names:
        rec["score"] = compare_scores(_scores(generations, judge), _scores(previous, judge),
                                      _scores(reference, judge))
        if judge is not None:
            rec["judge"] = judge.label
    if policy_path and reference_path:
        rec["kl"] = kl_estimate(policy_path, reference_path, generations, batch_size=batch_size)
    rec["length"] = length_drift(generations, previous, reference)
    rec["diversity"] = diversity(generations)
    wj = win_judge or judge
    if wj is not None:
        if previous is not None:
            rec["win_rate"] = win_rate(generations, previous, wj)
        if reference is not None:
            rec["win_rate_vs_reference"] = win_rate(generations, reference, wj)
    return rec
