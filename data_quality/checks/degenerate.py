"""Degenerate pairs: empty answers, identical answers, answers that echo the prompt, too short or too long.

The bounds are in characters and in a token-ish unit (whitespace-separated words), so they need no tokenizer.
The first matching reason in the order below is the one recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from .base import CheckResult, Decision, apply

RULE = "degenerate"


@dataclass(frozen=True)
class DegenerateConfig:
    enabled: bool = True
    drop_identical: bool = True
    drop_prompt_echo: bool = True  # an answer equal to the prompt (case and whitespace folded)
    min_chars: int = 1  # shorter answers are treated as truncated
    max_chars: int | None = 32_000
    min_words: int = 0
    max_words: int | None = None


def _folded(arr: pa.ChunkedArray | pa.Array) -> pl.Series:
    return pl.Series(arr).str.replace_all(r"\s{2,}|[^\S ]", " ").str.strip_chars().str.to_lowercase()


def _np(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False))


def decide(table: pa.Table, cfg: DegenerateConfig) -> Decision:
    n = table.num_rows
    d = Decision.keep_all(n)
    if n == 0:
        return d
    sides = {s: pc.utf8_trim_whitespace(table.column(s)) for s in ("chosen", "rejected")}
    chars = {s: _np(pc.utf8_length(a)) for s, a in sides.items()}
    for s in sides:
        d.mark(chars[s] == 0, f"empty_{s}")
    if cfg.drop_identical:
        d.mark(_np(pc.equal(sides["chosen"], sides["rejected"])), "identical_answers")
    if cfg.drop_prompt_echo:
        # Folding is costly, so only answers whose length is close to the prompt's are compared.
        p_chars = _np(pc.utf8_length(table.column("prompt_text")))
        for s, a in sides.items():
            near = np.flatnonzero(np.abs(chars[s] - p_chars) <= 0.05 * p_chars + 2)
            if near.size:
                idx = pa.array(near)
                same = (_folded(pc.take(a, idx)) == _folded(pc.take(table.column("prompt_text"), idx))).to_numpy()
                echo = np.zeros(n, dtype=bool)
                echo[near[same]] = True
                d.mark(echo, f"{s}_repeats_prompt")
    words = {}
    if cfg.min_words or cfg.max_words is not None:
        words = {s: pl.Series(a).str.count_matches(r"\S+").to_numpy() for s, a in sides.items()}
    for s in sides:
        d.mark(chars[s] < cfg.min_chars, f"{s}_too_short")
        if cfg.min_words:
            d.mark(words[s] < cfg.min_words, f"{s}_too_short")
        if cfg.max_chars is not None:
            d.mark(chars[s] > cfg.max_chars, f"{s}_too_long")
        if cfg.max_words is not None:
            d.mark(words[s] > cfg.max_words, f"{s}_too_long")
    return d


def run(table: pa.Table, cfg: DegenerateConfig) -> CheckResult:
    return apply(table, decide(table, cfg), RULE, cfg)
