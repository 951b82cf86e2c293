"""Exact duplicates of whole pairs (after normalisation): keep the first, name it in `duplicate_of`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from .base import CheckResult, Decision, apply

RULE = "dedup"


@dataclass(frozen=True)
class DedupConfig:
    enabled: bool = True


def decide(table: pa.Table, cfg: DedupConfig) -> Decision:
    n = table.num_rows
    ids = pl.Series("pair_id", table.column("pair_id"))
    first = ids.is_first_distinct().to_numpy()
    d = Decision.keep_all(n)
    d.mark(~first, "exact_duplicate")
    # The kept row has the same pair_id by construction, so the duplicate points at that id.
    d.duplicate_of = np.where(d.drop, ids.to_numpy(), None).astype(object)
    n_dup = int((~first).sum())
    d.stats = {"duplicates": n_dup, "distinct_pairs": n - n_dup}
    return d


def run(table: pa.Table, cfg: DedupConfig) -> CheckResult:
    return apply(table, decide(table, cfg), RULE, cfg)
