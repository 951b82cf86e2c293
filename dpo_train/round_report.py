"""The HTML report of iterative rounds: a table and curves over rounds, every estimate with its standard error.

Built from the `evaluate_round` records alone (JSON), so it can be rebuilt from the catalog at any time.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from storage.figures import png_base64

Path_ = tuple[str, ...]
# A plotted/tabulated estimate: (label, value path, standard-error path or None)
Series = tuple[str, Path_, Path_ | None]

CHARTS: list[tuple[str, list[Series], float | None]] = [
    ("judge reward (mean ± s.e.)", [("policy", ("score", "current", "mean"), ("score", "current", "stderr")),
                                    ("reference", ("score", "reference", "mean"), ("score", "reference", "stderr"))],
     None),
    ("KL(policy || reference), nats per answer",
     [("exact per position", ("kl", "kl"), ("kl", "stderr")),
      ("Monte Carlo", ("kl", "kl_mc"), ("kl", "kl_mc_stderr"))], 0.0),
    ("win rate", [("vs previous round", ("win_rate", "win_rate"), ("win_rate", "stderr")),
                  ("vs reference", ("win_rate_vs_reference", "win_rate"), ("win_rate_vs_reference", "stderr"))],
     0.5),
    ("answer length (tokens)", [("mean", ("length", "current", "mean_tokens"),
                                 ("length", "current", "mean_tokens_stderr"))], None),
    ("how answers stop", [("truncated (length)", ("length", "current", "truncated_fraction"),
                           ("length", "current", "truncated_fraction_stderr")),
                          ("EOS", ("length", "current", "eos_fraction"), ("length", "current", "eos_fraction_stderr"))],
     None),
    ("diversity", [("distinct-1", ("diversity", "distinct_1"), None), ("distinct-2", ("diversity", "distinct_2"), None),
                   ("pairwise similarity", ("diversity", "pairwise_similarity"),
                    ("diversity", "pairwise_similarity_stderr"))], None),
]

TABLE: list[Series] = [
    ("reward", ("score", "current", "mean"), ("score", "current", "stderr")),
    ("Δ reward vs reference", ("score", "delta_mean_vs_reference"), ("score", "delta_stderr_vs_reference")),
    ("KL", ("kl", "kl"), ("kl", "stderr")),
    ("KL (Monte Carlo)", ("kl", "kl_mc"), ("kl", "kl_mc_stderr")),
    ("win vs previous", ("win_rate", "win_rate"), ("win_rate", "stderr")),
    ("win vs reference", ("win_rate_vs_reference", "win_rate"), ("win_rate_vs_reference", "stderr")),
    ("mean tokens", ("length", "current", "mean_tokens"), ("length", "current", "mean_tokens_stderr")),
    ("truncated", ("length", "current", "truncated_fraction"), None),
    ("EOS", ("length", "current", "eos_fraction"), None),
    ("distinct-2", ("diversity", "distinct_2"), None),
    ("self-similarity", ("diversity", "pairwise_similarity"), None),
]


def get(rec: dict[str, Any], path: Path_ | None) -> float | None:
    cur: Any = rec
    for p in path or ():
        if not isinstance(cur, dict) or cur.get(p) is None:
            return None
        cur = cur[p]
    return float(cur) if path and isinstance(cur, int | float) else None


def fmt(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.4g} ± {se:.2g}" if se is not None else f"{value:.4g}"


def _chart(history: Sequence[dict[str, Any]], title: str, series: list[Series], hline: float | None) -> str:
    def draw(ax: Any) -> None:
        rounds = np.array([r["round"] for r in history], dtype=float)
        for k, (label, path, se_path) in enumerate(series):
            ys = np.array([np.nan if (v := get(r, path)) is None else v for r in history])
            if np.all(np.isnan(ys)):
                continue
            err = np.array([get(r, se_path) or 0.0 for r in history])
            # Small x offsets keep overlapping error bars apart.
            ax.errorbar(rounds + 0.04 * (k - (len(series) - 1) / 2), ys, yerr=err, marker="o", capsize=3,
                        label=label)
        if hline is not None:
            ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("round")
        ax.set_xticks(rounds)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)

    return png_base64(draw, 5, 3.2, dpi=100)


def render_report(history: Sequence[dict[str, Any]], title: str = "Iterative DPO rounds") -> str:
    """Self-contained HTML (inline PNG curves with error bars) from `evaluate_round` records, one per round."""
    history = sorted(history, key=lambda r: r["round"])
    imgs = "".join(f'<img alt="{html.escape(t)}" src="data:image/png;base64,{_chart(history, t, s, h)}">'
                   for t, s, h in CHARTS)
    head = "".join(f"<th>{html.escape(c)}</th>" for c, _, _ in TABLE)
    body = "".join("<tr><td>{}</td>{}</tr>".format(
        r["round"], "".join(f"<td>{fmt(get(r, p), get(r, se))}</td>" for _, p, se in TABLE)) for r in history)
    judges = sorted({str(r["judge"]) for r in history if r.get("judge")})
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{margin:4px}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>judge(s): {html.escape(', '.join(judges) or 'none')}. "
            "Every estimate is mean ± standard error; KL is measured on the sampled token ids.</p>"
            f"<table><tr><th>round</th>{head}</tr>{body}</table><div>{imgs}</div></body></html>")


def write_report(history: Sequence[dict[str, Any]], path: str | Path, title: str = "Iterative DPO rounds") -> Path:
    import os
    import uuid

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(render_report(history, title), encoding="utf-8")
    os.replace(tmp, path)
    return path
