"""Margin checks: a score margin or label confidence too small to learn from, and a per-prompt pair cap.

Rows without the evidence (no scores, no preference_prob) pass: absence of a margin is not a small margin.
Under the cap the pairs with the largest margin are kept (input order breaks ties).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from .base import CheckResult, Decision, apply, histogram

RULE = "margins"


@dataclass(frozen=True)
class MarginsConfig:
    enabled: bool = True
    min_score_margin: float | None = 0.0  # keep only chosen_score - rejected_score > this
    min_preference_prob: float | None = 0.55  # keep only preference_prob >= this
    max_pairs_per_prompt: int | None = None


def margin_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(score margin, preference_prob) as float arrays with NaN where missing."""
    def col(name: str) -> np.ndarray:
        return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
    return col("chosen_score") - col("rejected_score"), col("preference_prob")


def decide(table: pa.Table, cfg: MarginsConfig) -> Decision:
    n = table.num_rows
    margin, prob = margin_arrays(table)
    d = Decision.keep_all(n)
    if cfg.min_score_margin is not None:
        d.mark(np.isfinite(margin) & ~(margin > cfg.min_score_margin), "low_score_margin")
    if cfg.min_preference_prob is not None:
        d.mark(np.isfinite(prob) & (prob < cfg.min_preference_prob), "low_preference_prob")
    if cfg.max_pairs_per_prompt is not None and n:
        # Rank survivors within their prompt by margin (score margin, else confidence), largest first.
        strength = np.where(np.isfinite(margin), margin, np.where(np.isfinite(prob), prob - 0.5, 0.0))
        alive = np.flatnonzero(~d.drop)
        df = pl.DataFrame({"pid": pl.Series(table.column("prompt_id")).gather(alive),
                           "s": -strength[alive], "row": alive})
        df = df.sort(["pid", "s", "row"]).with_columns(k=pl.int_range(pl.len()).over("pid"))
        over = np.zeros(n, dtype=bool)
        over[df.filter(pl.col("k") >= cfg.max_pairs_per_prompt).get_column("row").to_numpy()] = True
        d.mark(over, "prompt_cap")
    d.stats = {
        "score_margin_rows": int(np.isfinite(margin).sum()),
        "preference_prob_rows": int(np.isfinite(prob).sum()),
        "score_margin_hist": histogram(margin, bins=30),
        "preference_prob_hist": histogram(prob, bins=20, value_range=(0.0, 1.0)),
    }
    return d


def run(table: pa.Table, cfg: MarginsConfig) -> CheckResult:
    return apply(table, decide(table, cfg), RULE, cfg)
