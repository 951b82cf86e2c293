"""Contradicting labels: the same prompt with the same two answers, preferred one way and the other way.

Runs before exact dedup so repeated votes still count towards a majority. `drop_both` drops every row of a
contradicted pair; `keep_majority` keeps the majority direction (exact duplicates among it are left to the
dedup check) and drops the minority, and drops everything on a tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from .base import CheckResult, Decision, apply
from .normalise import answer_key

RULE = "contradictions"


@dataclass(frozen=True)
class ContradictionsConfig:
    enabled: bool = True
    policy: str = "drop_both"  # drop_both | keep_majority

    def __post_init__(self) -> None:
        if self.policy not in ("drop_both", "keep_majority"):
            raise ValueError(f"contradictions.policy must be drop_both or keep_majority, not {self.policy!r}")


def decide(table: pa.Table, cfg: ContradictionsConfig) -> Decision:
    n = table.num_rows
    d = Decision.keep_all(n)
    if n == 0:
        return d
    # Answers are compared by their normalisation keys, the same text that pair_id hashes.
    hc = pl.Series(answer_key(table, "chosen")).hash(11)
    hr = pl.Series(answer_key(table, "rejected")).hash(11)
    df = pl.DataFrame({
        "pid": pl.Series(table.column("prompt_id")), "lo": np.minimum(hc.to_numpy(), hr.to_numpy()),
        "hi": np.maximum(hc.to_numpy(), hr.to_numpy()), "fwd": (hc < hr).to_numpy(), "src": pl.Series(table.column("source")), "pair_id": pl.Series(table.column("pair_id")),
        "row": np.arange(n),
    })
    key = ["pid", "lo", "hi"]
    groups = df.group_by(key).agg(
        n_fwd=pl.col("fwd").sum(), n=pl.len(), sources=pl.col("src").n_unique(),
        first_fwd=pl.col("pair_id").filter(pl.col("fwd")).first(),
        first_bwd=pl.col("pair_id").filter(~pl.col("fwd")).first(),
    ).with_columns(n_bwd=pl.col("n") - pl.col("n_fwd")).filter((pl.col("n_fwd") > 0) & (pl.col("n_bwd") > 0))
    rows = df.join(groups, on=key, how="inner")
    row = rows.get_column("row").to_numpy()
    fwd = rows.get_column("fwd").to_numpy()
    n_fwd, n_bwd = rows.get_column("n_fwd").to_numpy(), rows.get_column("n_bwd").to_numpy()
    mask = np.zeros(n, dtype=bool)
    if cfg.policy == "drop_both":
        mask[row] = True
        d.mark(mask, "contradiction")
    else:
        tie = n_fwd == n_bwd
        minority = ~tie & np.where(fwd, n_fwd < n_bwd, n_bwd < n_fwd)
        mask[row[tie]] = True
        d.mark(mask, "contradiction_tie")
        mask[:] = False
        mask[row[minority]] = True
        d.mark(mask, "contradiction_minority")
        d.duplicate_of = np.full(n, None, dtype=object)
        winner = np.where(fwd, rows.get_column("first_bwd").to_numpy(), rows.get_column("first_fwd").to_numpy())
        d.duplicate_of[row[minority]] = winner[minority]
    d.stats = {"contradicted_pairs": groups.height, "rows_involved": int(row.size),
               "cross_source_pairs": int((groups.get_column("sources") > 1).sum())}
    return d


def run(table: pa.Table, cfg: ContradictionsConfig) -> CheckResult:
    return apply(table, decide(table, cfg), RULE, cfg)
