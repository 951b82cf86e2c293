"""Degenerate pairs: empty answers, identical answers, a chosen answer that echoes the prompt, too short or long.

Answers are compared by their normalisation keys (normalise.key_text), so an answer made only of zero-width
characters is empty and two answers that differ only in invisible whitespace are identical. A *rejected*
answer that echoes the prompt is kept: a model that repeats the question losing to one that answers it is a
valid, informative preference. It is counted (`rejected_echoes_prompt`), and length_bias gives it no weight
bonus. The bounds are in characters and in a token-ish unit (whitespace-separated words), so they need no
tokenizer. The first matching reason in the order below is the one recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from .base import CheckResult, Decision, apply
from .normalise import answer_key

RULE = "degenerate"


@dataclass(frozen=True)
class DegenerateConfig:
    enabled: bool = True
    drop_identical: bool = True
    drop_prompt_echo: bool = True  # a *chosen* answer equal to the prompt (case and whitespace folded)
    min_chars: int = 1  # shorter answers are treated as truncated
    max_chars: int | None = 32_000
    min_words: int = 0
    max_words: int | None = None


def _folded(arr: pa.ChunkedArray | pa.Array) -> pl.Series:
    return pl.Series(arr).str.replace_all(r"\s+", " ").str.strip_chars().str.to_lowercase()


def _np(arr: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(arr.to_numpy(zero_copy_only=False))


def echoes_prompt(table: pa.Table, side: str) -> np.ndarray:
    """Rows whose `side` answer is the prompt again (case and whitespace folded)."""
    n = table.num_rows
    a = table.column(side)
    chars = _np(pc.utf8_length(a))
    p_chars = _np(pc.utf8_length(table.column("prompt_text")))
    # Folding is costly, so only answers whose length is close to the prompt's are compared.
    near = np.flatnonzero(np.abs(chars - p_chars) <= 0.05 * p_chars + 2)
    echo = np.zeros(n, dtype=bool)
    if near.size:
        idx = pa.array(near)
        same = (_folded(pc.take(a, idx)) == _folded(pc.take(table.column("prompt_text"), idx))).to_numpy()
        echo[near[same]] = True
    return echo


def decide(table: pa.Table, cfg: DegenerateConfig) -> Decision:
    n = table.num_rows
    d = Decision.keep_all(n)
    if n == 0:
        return d
    keys = {s: answer_key(table, s) for s in ("chosen", "rejected")}
    chars = {s: _np(pc.utf8_length(a)) for s, a in keys.items()}
    for s in keys:
        d.mark(chars[s] == 0, f"empty_{s}")
    if cfg.drop_identical:
        d.mark(_np(pc.equal(keys["chosen"], keys["rejected"])), "identical_answers")
    if cfg.drop_prompt_echo:
        d.mark(echoes_prompt(table, "chosen"), "chosen_repeats_prompt")
    words = {}
    if cfg.min_words or cfg.max_words is not None:
        words = {s: pl.Series(a).str.count_matches(r"\S+").to_numpy() for s, a in keys.items()}
    for s in keys:
        d.mark(chars[s] < cfg.min_chars, f"{s}_too_short")
        if cfg.min_words:
            d.mark(words[s] < cfg.min_words, f"{s}_too_short")
        if cfg.max_chars is not None:
            d.mark(chars[s] > cfg.max_chars, f"{s}_too_long")
        if cfg.max_words is not None:
            d.mark(words[s] > cfg.max_words, f"{s}_too_long")
    d.stats = {"rejected_echoes_prompt": int((echoes_prompt(table, "rejected") & ~d.drop).sum())}
    return d


def run(table: pa.Table, cfg: DegenerateConfig) -> CheckResult:
    return apply(table, decide(table, cfg), RULE, cfg)
