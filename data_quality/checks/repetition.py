"""Repetition loops and runaway lengths: answers that run on (a sampler stuck in a loop, a runaway list).

Real data holds them: AlpacaEval rejected answers of 20,000+ characters that repeat "Hinweis Hinweis ...",
"*\\n*\\n*" or blank lines to the length limit. Two columnar measures per answer:
- the repeated fraction of its whitespace-token n-grams (1 - distinct / total), for answers of at least
  `min_tokens` tokens; symbols count as tokens, so "*\\n*\\n*" loops are seen too;
- the blank fraction (whitespace characters / characters), for answers of at least `min_blank_chars`.
- runaway length: at least `runaway_chars` characters and `runaway_ratio` times the other answer of the
  pair (AlpacaEval: 20,000 characters of drifting "supposedly supposedly ..." against a 77-character answer).
A chosen answer that loops or runs away is dropped (training would reward the loop). A rejected one is kept by default:
a looping model losing to a real answer is a valid preference. It is counted, and length_bias gives such
rows no weight bonus, so a 20,000-character loop cannot become the most up-weighted pair.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from .base import CheckResult, Decision, apply
from .text import shingles, sorted_unique

RULE = "repetition"


@dataclass(frozen=True)
class RepetitionConfig:
    enabled: bool = True
    ngram: int = 4
    min_chars: int = 1_000  # shorter answers are not judged: a loop worth the name runs long
    min_tokens: int = 150  # nor are answers with fewer whitespace tokens (short music notation, a small grid)
    max_repeated_fraction: float = 0.8  # at or above: a loop
    min_blank_chars: int = 2_000
    max_blank_fraction: float = 0.8
    runaway_chars: int = 8_000
    runaway_ratio: float = 8.0
    drop_rejected: bool = False

    def __post_init__(self) -> None:
        for name in ("max_repeated_fraction", "max_blank_fraction"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"repetition.{name} must be in (0, 1]")


_CHUNK_CHARS = 4_000_000  # characters of long answers measured at once: bounds the exploded tokens


def measures(arr: pa.Array | pa.ChunkedArray, cfg: RepetitionConfig) -> tuple[np.ndarray, np.ndarray]:
    """(repeated n-gram fraction, blank fraction) per text; NaN where the text is too short to judge.

    Only texts of at least `min_chars` characters are measured (a loop worth the name is long), which keeps
    the cost to the long tail of answers. They are measured a few million characters at a time: the token
    arrays of one chunk, reused from chunk to chunk, not of every long answer at once (real answers are long).
    """
    s = pl.Series(arr, dtype=pl.String).fill_null("")
    n = s.len()
    chars = s.str.len_chars().to_numpy().astype(np.int64)
    rep, blank = np.full(n, np.nan), np.full(n, np.nan)
    long = np.flatnonzero(chars >= cfg.min_chars)
    if long.size == 0:
        return rep, blank
    # chunks of `long` holding up to _CHUNK_CHARS characters each (at least one text)
    ends = np.cumsum(chars[long])
    cuts = np.unique(np.searchsorted(ends, np.arange(_CHUNK_CHARS, ends[-1], _CHUNK_CHARS)))
    for part in np.split(long, cuts[(cuts > 0) & (cuts < long.size)]):
        rep[part], blank[part] = _measure(s.gather(part), chars[part], cfg)
    return rep, blank


def _measure(sl: pl.Series, chars: np.ndarray, cfg: RepetitionConfig) -> tuple[np.ndarray, np.ndarray]:
    """`measures` of texts that are all long enough to be measured (`chars`: their lengths)."""
    rep, blank = np.full(sl.len(), np.nan), np.full(sl.len(), np.nan)
    spaced = sl.str.replace_many(["\n", "\t", "\r"], [" ", " ", " "])
    # Blank fraction: ASCII whitespace is what fills a runaway answer; unicode classes cost 3x more here.
    n_blank = (spaced.str.len_bytes() - spaced.str.replace_all(" ", "", literal=True).str.len_bytes()).to_numpy()
    ok = chars >= cfg.min_blank_chars
    blank[ok] = n_blank[ok] / chars[ok]
    lists = spaced.str.split(" ")
    flat = lists.explode()
    nonempty = (flat.str.len_bytes().fill_null(0) > 0).to_numpy()
    lens = lists.list.len().to_numpy().astype(np.int64)
    counts = np.bincount(np.repeat(np.arange(lens.size), lens)[nonempty], minlength=lens.size).astype(np.int64)
    tok = flat.filter(pl.Series(nonempty)).hash(0x5EED).to_numpy()
    h, row = shingles(tok, counts, cfg.ngram)
    total = np.bincount(row, minlength=counts.size)
    distinct = sorted_unique((row.astype(np.uint64) << np.uint64(40)) | (h >> np.uint64(24)))
    n_distinct = np.bincount((distinct >> np.uint64(40)).astype(np.int64), minlength=counts.size)
    judged = counts >= cfg.min_tokens
    rep[judged] = 1.0 - n_distinct[judged] / np.maximum(total[judged], 1)
    return rep, blank


def loops(arr: pa.Array | pa.ChunkedArray, cfg: RepetitionConfig) -> np.ndarray:
    rep, blank = measures(arr, cfg)
    with np.errstate(invalid="ignore"):
        return (rep >= cfg.max_repeated_fraction) | (blank >= cfg.max_blank_fraction)


def runaway(table: pa.Table, side: str, cfg: RepetitionConfig) -> np.ndarray:
    other = "rejected" if side == "chosen" else "chosen"
    mine = pl.Series(table.column(side)).str.len_chars().to_numpy()
    theirs = pl.Series(table.column(other)).str.len_chars().to_numpy()
    return (mine >= cfg.runaway_chars) & (mine >= cfg.runaway_ratio * theirs)


def flagged(table: pa.Table, cfg: RepetitionConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per side: (loop, runaway) masks."""
    return {s: (loops(table.column(s), cfg), runaway(table, s, cfg)) for s in ("chosen", "rejected")}


def any_flag(f: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    return np.logical_or.reduce([m for pair in f.values() for m in pair])


# Rows with a loop or runaway on either side under the default measures, carried from this check to length_bias
# (which gives them no weight bonus) so it does not measure every long answer again. `conform` drops the column.
FLAGS_COLUMN = "_repetition_flagged"


def default_flags(table: pa.Table) -> np.ndarray:
    """`any_flag` of the default measures: the carried column when this check left one, else measured now."""
    if FLAGS_COLUMN in table.column_names:
        return table.column(FLAGS_COLUMN).to_numpy(zero_copy_only=False).astype(bool)
    return any_flag(flagged(table, RepetitionConfig()))


def decide(table: pa.Table, cfg: RepetitionConfig, f: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
           ) -> Decision:
    n = table.num_rows
    d = Decision.keep_all(n)
    if n == 0:
        return d
    f = flagged(table, cfg) if f is None else f
    d.mark(f["chosen"][0], "chosen_repetition_loop")
    d.mark(f["chosen"][1], "chosen_runaway_length")
    if cfg.drop_rejected:
        d.mark(f["rejected"][0], "rejected_repetition_loop")
        d.mark(f["rejected"][1], "rejected_runaway_length")
    bad_rejected = f["rejected"][0] | f["rejected"][1]
    d.stats = {"chosen_loops": int(f["chosen"][0].sum()), "chosen_runaway": int(f["chosen"][1].sum()),
               "rejected_loops": int(f["rejected"][0].sum()), "rejected_runaway": int(f["rejected"][1].sum()),
               "rejected_flagged_kept": int((bad_rejected & ~d.drop).sum())}
    return d


def run(table: pa.Table, cfg: RepetitionConfig) -> CheckResult:
    f = flagged(table, cfg)
    # Only flags of the default measures are carried: length_bias asks for those, whatever this check's settings.
    # An empty partition carries the column too, so partitions keep one schema.
    if dataclasses.replace(cfg, enabled=True, drop_rejected=False) == RepetitionConfig():
        flags = pa.array(any_flag(f), pa.bool_())
        at = table.schema.get_field_index(FLAGS_COLUMN)
        table = table.set_column(at, FLAGS_COLUMN, flags) if at >= 0 else table.append_column(FLAGS_COLUMN, flags)
    return apply(table, decide(table, cfg, f), RULE, cfg)
