"""Per-round evaluation: judge scores vs the previous round and the reference, a KL estimate to the reference,
answer-length drift, win rate against the previous round, and an HTML report with curves over rounds.

Every function returns plain JSON-able dicts, so a round can store its evaluation in the catalog and the
report can be rebuilt from the stored records alone.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dpo_train.judges.base import Judge, score_table
from storage.figures import png_base64

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _finite(values: Any) -> np.ndarray:
    arr = np.asarray(values.to_pylist() if isinstance(values, pa.Array | pa.ChunkedArray) else values, dtype=float)
    return arr[np.isfinite(arr)]


def score_distribution(scores: Any, bins: int = 10) -> dict[str, Any]:
    """n, mean, std, min/max, quantiles and a histogram of the finite scores."""
    s = _finite(scores)
    if s.size == 0:
        return {"n": 0, "mean": None, "std": None}
    counts, edges = np.histogram(s, bins=bins)
    out: dict[str, Any] = {"n": int(s.size), "mean": float(s.mean()), "std": float(s.std()),
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


def compare_scores(current: Any, previous: Any | None = None, reference: Any | None = None) -> dict[str, Any]:
    """Score distribution of this round, and its shift against the previous round and the reference."""
    out: dict[str, Any] = {"current": score_distribution(current)}
    for name, other in (("previous", previous), ("reference", reference)):
        if other is None:
            continue
        dist = score_distribution(other)
        out[name] = dist
        cur = out["current"]["mean"]
        out[f"delta_mean_vs_{name}"] = None if cur is None or dist["mean"] is None else cur - dist["mean"]
        out[f"ks_vs_{name}"] = ks_statistic(current, other)
    return out


def kl_from_logprobs(logp_policy: Any, logp_reference: Any, num_tokens: Any | None = None) -> dict[str, Any]:
    """Monte-Carlo KL(pi || pi_ref) from answers sampled from pi: the mean of log pi(y|x) - log pi_ref(y|x)."""
    d = np.asarray(logp_policy, dtype=float) - np.asarray(logp_reference, dtype=float)
    if d.size == 0:
        return {"n": 0, "kl": None}
    out = {"n": int(d.size), "kl": float(d.mean()),
           "stderr": float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None}
    if num_tokens is not None:
        out["kl_per_token"] = float(d.sum() / max(int(np.sum(num_tokens)), 1))
    return out


def kl_estimate(policy: str, reference: str, generations: pa.Table, *, batch_size: int = 8,
                dtype: str = "auto", device: str | None = None) -> dict[str, Any]:
    """KL of the policy to the reference on the policy's own sampled answers (`generations` from generate())."""
    from dpo_train.judges.implicit import policy_logprobs

    prompts = generations.column("prompt").to_pylist()
    responses = generations.column("response").to_pylist()
    lp_pi, ntok = policy_logprobs(policy, prompts, responses, batch_size=batch_size, dtype=dtype, device=device)
    lp_ref, _ = policy_logprobs(reference, prompts, responses, batch_size=batch_size, dtype=dtype, device=device)
    return kl_from_logprobs(lp_pi, lp_ref, ntok)


def _lengths(t: pa.Table) -> dict[str, Any]:
    resp = t.column("response").to_pylist()
    chars = np.array([len(r) for r in resp], dtype=float)
    words = np.array([len(r.split()) for r in resp], dtype=float)
    out = {"n": len(resp), "mean_chars": float(chars.mean()) if resp else None,
           "median_chars": float(np.median(chars)) if resp else None,
           "mean_words": float(words.mean()) if resp else None}
    if "num_tokens" in t.column_names and resp:
        out["mean_tokens"] = float(np.mean(_finite(t.column("num_tokens"))))
    if "finish_reason" in t.column_names and resp:
        out["truncated_fraction"] = float(np.mean([f == "length" for f in t.column("finish_reason").to_pylist()]))
    return out


def length_drift(current: pa.Table, previous: pa.Table | None = None,
                 reference: pa.Table | None = None) -> dict[str, Any]:
    """Answer lengths of this round and their ratio to the previous round's and the reference's."""
    out: dict[str, Any] = {"current": _lengths(current)}
    for name, other in (("previous", previous), ("reference", reference)):
        if other is None:
            continue
        o = _lengths(other)
        out[name] = o
        c, p = out["current"]["mean_chars"], o["mean_chars"]
        out[f"chars_ratio_vs_{name}"] = None if not c or not p else c / p
    return out


def win_rate(current: pa.Table, previous: pa.Table, judge: Judge) -> dict[str, Any]:
    """Pairwise win rate of this round's answers over the previous round's, matched on (prompt_id, sample_index).

    Ties count half. The interval is a normal approximation (95%).
    """
    keys = ["prompt_id", "sample_index"]
    # Arrow joins cannot carry list columns (the prompt), so join row numbers and take afterwards.
    cur = current.select(keys).append_column("cur_row", pa.array(range(current.num_rows), pa.int64()))
    prev = previous.select(keys).append_column("prev_row", pa.array(range(previous.num_rows), pa.int64()))
    joined = cur.join(prev, keys=keys, join_type="inner").sort_by([(k, "ascending") for k in keys])
    if joined.num_rows == 0:
        return {"n": 0, "win_rate": None}
    c_rows, p_rows = joined.column("cur_row"), joined.column("prev_row")
    p = judge.compare(current.column("prompt").take(c_rows).to_pylist(),
                      current.column("response").take(c_rows).to_pylist(),
                      previous.column("response").take(p_rows).to_pylist())
    n, rate = len(p), float(np.mean(p))
    half = 1.96 * math.sqrt(max(rate * (1 - rate), 1e-12) / n)
    return {"n": n, "win_rate": rate, "wins": int(np.sum(p == 1.0)), "ties": int(np.sum(p == 0.5)),
            "losses": int(np.sum(p == 0.0)), "ci95": [max(0.0, rate - half), min(1.0, rate + half)],
            "judge": judge.label}


def _scores(t: pa.Table | None, judge: Judge | None) -> np.ndarray | None:
    if t is None:
        return None
    if "score" not in t.column_names:
        if judge is None:
            raise ValueError("generations carry no 'score' column and no judge was given to score them")
        t = score_table(t, judge)
    return _finite(t.column("score"))


def evaluate_round(round: int, generations: pa.Table, *, judge: Judge | None = None,
                   previous: pa.Table | None = None, reference: pa.Table | None = None,
                   policy_path: str | None = None, reference_path: str | None = None,
                   win_judge: Judge | None = None, batch_size: int = 8) -> dict[str, Any]:
    """One JSON-able evaluation record for round `round`.

    `generations`, `previous`, `reference`: answers of this round's policy, the previous round's policy and the
    reference policy to the same prompts (scored already, or scored here with `judge`). KL needs both model
    paths; win rate uses `win_judge` (default `judge`) and the previous round's answers.
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
    wj = win_judge or judge
    if previous is not None and wj is not None:
        rec["win_rate"] = win_rate(generations, previous, wj)
    return rec


# ---------------------------------------------------------------- report


def _get(rec: dict[str, Any], *path: str) -> float | None:
    cur: Any = rec
    for p in path:
        if not isinstance(cur, dict) or cur.get(p) is None:
            return None
        cur = cur[p]
    return float(cur) if isinstance(cur, int | float) else None


def _curve_png(history: Sequence[dict[str, Any]], title: str, series: dict[str, tuple[str, ...]],
               band: tuple[tuple[str, ...], tuple[str, ...]] | None = None, hline: float | None = None) -> str:
    def draw(ax: Any) -> None:
        rounds = [r["round"] for r in history]
        for label, path in series.items():
            ys = [_get(r, *path) for r in history]
            ax.plot(rounds, [np.nan if y is None else y for y in ys], marker="o", label=label)
        if band is not None:
            lo = [_get(r, *band[0]) for r in history]
            hi = [_get(r, *band[1]) for r in history]
            ax.fill_between(rounds, [np.nan if v is None else v for v in lo],
                            [np.nan if v is None else v for v in hi], alpha=0.2, label="p10-p90")
        if hline is not None:
            ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_xticks(rounds)
        ax.legend(fontsize=8)

    return png_base64(draw, 5, 3.2, dpi=100)


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.4g}"


def render_report(history: Sequence[dict[str, Any]], title: str = "Iterative DPO rounds") -> str:
    """Self-contained HTML (inline PNG curves) from `evaluate_round` records, one per round."""
    history = sorted(history, key=lambda r: r["round"])
    charts = [
        _curve_png(history, "judge score", {"mean": ("score", "current", "mean"),
                                            "reference mean": ("score", "reference", "mean")},
                   band=(("score", "current", "p10"), ("score", "current", "p90"))),
        _curve_png(history, "KL(policy || reference)", {"KL per answer": ("kl", "kl")}, hline=0.0),
        _curve_png(history, "answer length (chars)", {"mean": ("length", "current", "mean_chars"),
                                                      "reference": ("length", "reference", "mean_chars")}),
        _curve_png(history, "win rate vs previous round", {"win rate": ("win_rate", "win_rate")}, hline=0.5),
    ]
    cols = [("score mean", ("score", "current", "mean")), ("Δ vs previous", ("score", "delta_mean_vs_previous")),
            ("Δ vs reference", ("score", "delta_mean_vs_reference")), ("KL", ("kl", "kl")),
            ("mean chars", ("length", "current", "mean_chars")),
            ("length ratio vs previous", ("length", "chars_ratio_vs_previous")),
            ("win rate", ("win_rate", "win_rate"))]
    head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in cols)
    body = "".join("<tr><td>{}</td>{}</tr>".format(
        r["round"], "".join(f"<td>{_fmt(_get(r, *p))}</td>" for _, p in cols)) for r in history)
    judges = sorted({str(r["judge"]) for r in history if r.get("judge")})
    imgs = "".join(f'<img alt="curve" src="data:image/png;base64,{c}">' for c in charts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{margin:4px}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>judge(s): {html.escape(', '.join(judges) or 'none')}</p>"
            f"<table><tr><th>round</th>{head}</tr>{body}</table><div>{imgs}</div></body></html>")


def write_report(history: Sequence[dict[str, Any]], path: str | Path, title: str = "Iterative DPO rounds") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(history, title), encoding="utf-8")
    return path
