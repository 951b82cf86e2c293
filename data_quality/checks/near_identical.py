"""Chosen and rejected nearly identical: the pair carries almost no preference signal.

Similarity is rapidfuzz's normalised Indel similarity (`fuzz.ratio`) or a token-set variant, computed
pairwise in C with `process.cpdist`. The cutoff lets rapidfuzz skip most of the work for clearly different
answers, so the full similarity distribution for the report is taken on a fixed-size sample instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from rapidfuzz import fuzz, process, utils

from .base import CheckResult, Decision, apply, histogram

RULE = "near_identical"
SCORERS: dict[str, Callable[..., float]] = {
    "ratio": fuzz.ratio,
    "token_sort_ratio": fuzz.token_sort_ratio,
    "token_set_ratio": fuzz.token_set_ratio,
}


@dataclass(frozen=True)
class NearIdenticalConfig:
    enabled: bool = True
    max_similarity: float = 0.95  # drop when similarity >= this (0..1)
    scorer: str = "ratio"
    fold_case_punct: bool = True  # compare lower-cased text without punctuation ("Thanks!" == "thanks.")
    sample_for_stats: int = 5_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scorer not in SCORERS:
            raise ValueError(f"near_identical.scorer must be one of {sorted(SCORERS)}, not {self.scorer!r}")
        if not 0.0 < self.max_similarity <= 1.0:
            raise ValueError("near_identical.max_similarity must be in (0, 1]")


def similarity(chosen: list[str], rejected: list[str], scorer: str = "ratio",
               cutoff: float | None = None, fold: bool = True) -> np.ndarray:
    """Pairwise similarity in [0, 1]; with a cutoff, values below it come back as 0."""
    if not chosen:
        return np.zeros(0)
    scores = process.cpdist(chosen, rejected, scorer=SCORERS[scorer], workers=1,
                            processor=utils.default_process if fold else None,
                            score_cutoff=None if cutoff is None else cutoff * 100.0, dtype=np.float32)
    return np.asarray(scores, dtype=np.float64) / 100.0


def decide(table: pa.Table, cfg: NearIdenticalConfig) -> Decision:
    n = table.num_rows
    sim = np.zeros(n)
    step = 20_000  # Python strings for one chunk at a time keep the peak memory flat
    for lo in range(0, n, step):
        part = table.slice(lo, step)
        sim[lo:lo + part.num_rows] = similarity(part.column("chosen").to_pylist(), part.column("rejected").to_pylist(),
                                                cfg.scorer, cutoff=cfg.max_similarity, fold=cfg.fold_case_punct)
    d = Decision.keep_all(n)
    d.mark(sim >= cfg.max_similarity, "near_identical_answers")
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.choice(n, size=min(n, cfg.sample_for_stats), replace=False)) if n else np.zeros(0, int)
    picked = table.take(pa.array(sample, pa.int64()))
    sample_sim = similarity(picked.column("chosen").to_pylist(), picked.column("rejected").to_pylist(), cfg.scorer,
                            fold=cfg.fold_case_punct)
    d.stats = {
        "near_identical": int(d.drop.sum()),
        "similarity_sample_size": int(sample.size),
        "similarity_hist": histogram(sample_sim, bins=20, value_range=(0.0, 1.0)),
        "similarity_mean_sample": float(sample_sim.mean()) if sample.size else None,
    }
    return d


def run(table: pa.Table, cfg: NearIdenticalConfig) -> CheckResult:
    return apply(table, decide(table, cfg), RULE, cfg)
