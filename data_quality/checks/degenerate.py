"""Degenerate pairs: empty answers, identical answers, answers that echo the prompt, too short or too long.

The bounds are in characters and in a token-ish unit (whitespace-separated words), so they need no tokenizer.
The first matching reason in the order below is the one recorded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


def _folded(arr: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.utf8_lower(pc.replace_substring_regex(pc.utf8_trim_whitespace(arr), r"\s+", " "))


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
        prompt = _folded(table.column("prompt_text"))
        for s, a in sides.items():
            d.mark(_np(pc.equal(_folded(a), prompt)), f"{s}_repeats_prompt")
    words = {}
    if cfg.min_words or cfg.max_words is not None:
        words = {s: _np(pc.count_substring_regex(a, r"\S+")) for s, a in sides.items()}
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
