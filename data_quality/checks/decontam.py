"""Decontamination: drop pairs whose prompt or answers share word n-grams with user-supplied eval prompts.

N-grams are the same hashed word shingles as near-dup (lower-cased `\\w+` tokens). An eval prompt shorter
than n tokens contributes its whole token sequence, which then only matches a text of the same short form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .base import CheckResult, Decision, apply
from .text import sorted_unique, text_shingles

RULE = "decontam"


@dataclass(frozen=True)
class DecontamConfig:
    enabled: bool = True
    ngram: int = 8
    min_matches: int = 1  # distinct shared n-grams that make a text contaminated
    fields: tuple[str, ...] = ("prompt_text", "chosen", "rejected")
    chunk_rows: int = 20_000

    def __post_init__(self) -> None:
        bad = set(self.fields) - {"prompt_text", "chosen", "rejected"}
        if bad:
            raise ValueError(f"decontam.fields: unknown {sorted(bad)}")


def eval_ngrams(eval_prompts: Sequence[str], ngram: int) -> np.ndarray:
    h, _ = text_shingles(list(eval_prompts), ngram)
    return sorted_unique(h)


def decide(table: pa.Table, cfg: DecontamConfig, eval_prompts: Sequence[str] | None) -> Decision:
    n = table.num_rows
    d = Decision.keep_all(n)
    if not eval_prompts or n == 0:
        d.stats = {"eval_prompts": len(eval_prompts or ()), "eval_ngrams": 0}
        return d
    ref = eval_ngrams(eval_prompts, cfg.ngram)
    per_field = {}
    for f in cfg.fields:
        bad = np.zeros(n, dtype=bool)
        for lo in range(0, n, cfg.chunk_rows):  # chunks bound the exploded-token memory
            bad[lo:lo + cfg.chunk_rows] = _contaminated(table.column(f).slice(lo, cfg.chunk_rows), ref, cfg)
        per_field[f] = int(bad.sum())
        d.mark(bad, "contaminated_prompt" if f == "prompt_text" else f"contaminated_{f}")
    d.stats = {"eval_prompts": len(eval_prompts), "eval_ngrams": int(ref.size), "contaminated_by_field": per_field}
    return d


_MASK = np.uint64((1 << 22) - 1)


def _bitmap(ref: np.ndarray) -> np.ndarray:
    bits = np.zeros(1 << 22, dtype=bool)
    bits[(ref & _MASK).astype(np.int64)] = True
    return bits


def _contaminated(texts: pa.ChunkedArray, ref: np.ndarray, cfg: DecontamConfig) -> np.ndarray:
    n = len(texts)
    h, row = text_shingles(texts, cfg.ngram)
    hit = np.zeros(h.size, dtype=bool)
    if ref.size:
        # A bitmap on the low hash bits rules out almost every shingle with one cache-friendly lookup;
        # only the few that pass are confirmed by binary search.
        maybe = np.flatnonzero(_bitmap(ref)[(h & _MASK).astype(np.int64)])
        pos = np.minimum(np.searchsorted(ref, h[maybe]), ref.size - 1)
        hit[maybe] = ref[pos] == h[maybe]
    # Distinct matching n-grams per row: unique (row, hash) pairs among the hits.
    pairs = np.unique(np.stack([row[hit], h[hit].view(np.int64)], axis=1), axis=0) if hit.any() \
        else np.zeros((0, 2), np.int64)
    return np.bincount(pairs[:, 0], minlength=n) >= cfg.min_matches


def run(table: pa.Table, cfg: DecontamConfig, eval_prompts: Sequence[str] | None = None) -> CheckResult:
    return apply(table, decide(table, cfg, eval_prompts), RULE, cfg)
