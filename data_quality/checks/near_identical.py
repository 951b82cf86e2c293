"""Chosen and rejected nearly identical: the pair carries almost no preference signal.

Compared is what a reader sees: the normalisation keys (unicode form and invisible whitespace folded, see
normalise.key_text), with case, punctuation, symbols and emoji intact. Folding case and punctuation made
answers with no letters or digits (emoji, ASCII art) empty, hence "identical", and erased the point of
case-sensitive tasks; on AlpacaEval that was 155 of 226 drops. Numbers, with their sign, must also agree:
"-5" vs "5" or "12 units" vs "8 units" are different answers however similar the strings.

Similarity is rapidfuzz's normalised Indel similarity (`fuzz.ratio`) or a token-set variant, computed
pairwise in C with `process.cpdist`. The cutoff lets rapidfuzz skip most of the work for clearly different
answers, so the full similarity distribution for the report is taken on a fixed-size sample instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from rapidfuzz import fuzz, process

from .base import CheckResult, Decision, apply, histogram
from .normalise import answer_key

RULE = "near_identical"
SCORERS: dict[str, Callable[..., float]] = {
    "ratio": fuzz.ratio,
    "token_sort_ratio": fuzz.token_sort_ratio,
    "token_set_ratio": fuzz.token_set_ratio,
}
NUMBER = r"[-+\u2212]?\d+(?:[.,]\d+)*"


@dataclass(frozen=True)
class NearIdenticalConfig:
    enabled: bool = True
    max_similarity: float = 0.95  # drop when similarity >= this (0..1)
    scorer: str = "ratio"
    sample_for_stats: int = 5_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scorer not in SCORERS:
            raise ValueError(f"near_identical.scorer must be one of {sorted(SCORERS)}, not {self.scorer!r}")
        if not 0.0 < self.max_similarity <= 1.0:
            raise ValueError("near_identical.max_similarity must be in (0, 1]")


def similarity(chosen: list[str], rejected: list[str], scorer: str = "ratio",
               cutoff: float | None = None) -> np.ndarray:
    """Pairwise similarity in [0, 1] of the texts as given; with a cutoff, values below it come back as 0."""
    if not chosen:
        return np.zeros(0)
    scores = process.cpdist(chosen, rejected, scorer=SCORERS[scorer], workers=1, processor=None,
                            score_cutoff=None if cutoff is None else cutoff * 100.0, dtype=np.float32)
    return np.asarray(scores, dtype=np.float64) / 100.0


def could_reach(chosen: pa.Array | pa.ChunkedArray, rejected: pa.Array | pa.ChunkedArray,
                cutoff: float) -> np.ndarray:
    """Rows whose `ratio` similarity can reach `cutoff`. It is 1 - d / (a + b) for the Indel distance d of texts of
    a and b characters, and d >= |a - b|: a pair whose lengths differ more than that allows is below the cutoff
    without comparing a character (most pairs of real answers)."""
    a, b = (pc.utf8_length(x).to_numpy(zero_copy_only=False).astype(np.int64) for x in (chosen, rejected))
    total = a + b
    # 1 - |a - b| / (a + b) >= cutoff without a division, with a hair of slack against rounding
    return (total == 0) | (np.abs(a - b) <= (1.0 - cutoff) * total + 1e-6)


def same_numbers(chosen: pa.Array | pa.ChunkedArray, rejected: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Rows whose answers state the same numbers, signs included, in the same order."""
    def nums(a: pa.Array | pa.ChunkedArray) -> pl.Series:
        return pl.Series(a).str.replace_all("\u2212", "-").str.extract_all(NUMBER).list.join("|")
    return (nums(chosen) == nums(rejected)).fill_null(True).to_numpy()


def decide(table: pa.Table, cfg: NearIdenticalConfig) -> Decision:
    n = table.num_rows
    sim = np.zeros(n)
    step = 20_000  # Python strings for one chunk at a time keep the peak memory flat
    for lo in range(0, n, step):
        part = table.slice(lo, step)
        kc, kr = answer_key(part, "chosen"), answer_key(part, "rejected")
        # With `ratio`, only rows whose lengths allow the cutoff become Python strings (the token scorers have
        # no such bound); the others score 0, as below a cutoff.
        at = np.flatnonzero(could_reach(kc, kr, cfg.max_similarity)) if cfg.scorer == "ratio" else \
            np.arange(part.num_rows)
        s, pick = np.zeros(part.num_rows), pa.array(at)
        s[at] = similarity(kc.take(pick).to_pylist(), kr.take(pick).to_pylist(), cfg.scorer, cutoff=cfg.max_similarity)
        close = s >= cfg.max_similarity
        if close.any():  # the number test runs only on the few candidates
            idx = pa.array(np.flatnonzero(close))
            s[np.flatnonzero(close)[~same_numbers(kc.take(idx), kr.take(idx))]] = 0.0
        sim[lo:lo + part.num_rows] = s
    d = Decision.keep_all(n)
    d.mark(sim >= cfg.max_similarity, "near_identical_answers")
    rng = np.random.default_rng(cfg.seed)
    sample = np.sort(rng.choice(n, size=min(n, cfg.sample_for_stats), replace=False)) if n else np.zeros(0, int)
    picked = table.take(pa.array(sample, pa.int64()))
    sample_sim = similarity(answer_key(picked, "chosen").to_pylist(), answer_key(picked, "rejected").to_pylist(),
                            cfg.scorer)
    d.stats = {
        "near_identical": int(d.drop.sum()),
        "similarity_sample_size": int(sample.size),
        "similarity_hist": histogram(sample_sim, bins=20, value_range=(0.0, 1.0)),
        "similarity_mean_sample": float(sample_sim.mean()) if sample.size else None,
    }
    return d


def run(table: pa.Table, cfg: NearIdenticalConfig) -> CheckResult:
    return apply(table, decide(table, cfg), RULE, cfg)
