"""Answers in the wrong script, where the user sets the one the data must be in.

A Unicode script (Latin, Cyrillic, Han, Arabic, ...) is checked by the share of an answer's letters that
belong to it (Polars' Rust regex `\\p{Script}` classes, no per-row Python). A chosen answer with at least
`min_letters` letters of which less than `min_fraction` are in the expected script is dropped: training on
it teaches the wrong language. A rejected answer in the wrong script is kept (a model that switches language
losing is a valid preference) and counted. Prompts that are themselves mostly in another script are left
alone: a translation request ("in French", "in Chinese") is the user's business, not an error. Off unless
`expected` is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from .base import CheckResult, Decision, apply

RULE = "script"


@dataclass(frozen=True)
class ScriptConfig:
    enabled: bool = True
    expected: str | None = None  # a Unicode script name as in \p{...}: "Latin", "Cyrillic", "Han", ...
    min_fraction: float = 0.5  # of an answer's letters that must be in the expected script
    min_letters: int = 20  # shorter answers (a name, a formula) are not judged

    def __post_init__(self) -> None:
        if self.expected is not None:
            try:
                pl.Series(["a"]).str.count_matches(rf"\p{{{self.expected}}}")
            except pl.exceptions.ComputeError:
                raise ValueError(f"script.expected: {self.expected!r} is not a Unicode script name "
                                 "(e.g. Latin, Cyrillic, Greek, Han, Arabic, Devanagari)") from None
        if not 0.0 < self.min_fraction <= 1.0:
            raise ValueError("script.min_fraction must be in (0, 1]")


def script_fraction(arr: pa.Array | pa.ChunkedArray, script: str) -> tuple[np.ndarray, np.ndarray]:
    """(letters, fraction of letters in `script`) per text; the fraction is NaN for a text with no letters.

    Pure-ASCII texts (bytes == characters: most of an English data set) skip the unicode classes: their
    letters are all Latin (for Latin, their character count stands in for the letter count).
    """
    s = pl.Series(arr, dtype=pl.String).fill_null("")
    ascii_ = (s.str.len_bytes() == s.str.len_chars()).to_numpy()
    letters = np.zeros(s.len())
    inside = np.zeros(s.len())
    rest = np.flatnonzero(~ascii_)
    if ascii_.any() and script == "Latin":  # all its letters are Latin: the fraction is 1, whatever the count
        letters[ascii_] = inside[ascii_] = s.filter(pl.Series(ascii_)).str.len_bytes().to_numpy()
    elif ascii_.any():
        letters[ascii_] = s.filter(pl.Series(ascii_)).str.count_matches("[A-Za-z]").to_numpy()
    if rest.size:
        r = s.gather(rest)
        letters[rest] = r.str.count_matches(r"\p{L}").to_numpy()
        inside[rest] = r.str.count_matches(rf"\p{{{script}}}").to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return letters, np.where(letters > 0, inside / letters, np.nan)


def wrong_script(table: pa.Table, side: str, cfg: ScriptConfig) -> np.ndarray:
    assert cfg.expected is not None
    letters, frac = script_fraction(table.column(side), cfg.expected)
    _, p_frac = script_fraction(table.column("prompt_text"), cfg.expected)
    prompt_ok = ~(p_frac < cfg.min_fraction)  # NaN (no letters) counts as fine
    return (letters >= cfg.min_letters) & (frac < cfg.min_fraction) & prompt_ok


def decide(table: pa.Table, cfg: ScriptConfig) -> Decision:
    n = table.num_rows
    d = Decision.keep_all(n)
    if n == 0 or cfg.expected is None:
        return d
    d.mark(wrong_script(table, "chosen", cfg), "chosen_wrong_script")
    d.stats = {"expected": cfg.expected, "rejected_wrong_script": int(wrong_script(table, "rejected", cfg).sum())}
    return d


def run(table: pa.Table, cfg: ScriptConfig) -> CheckResult:
    return apply(table, decide(table, cfg), RULE, cfg)
