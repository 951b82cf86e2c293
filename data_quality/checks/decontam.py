"""Decontamination: drop pairs whose prompt or answers contain a substantial part of an evaluation prompt.

Overlap is measured against the length of the evaluation item, so a generic phrase cannot contaminate: a
text is contaminated by eval item e when it holds at least `min_fraction` of e's distinct word n-grams, or
shares one long n-gram (`long_ngram` consecutive words) with it. On HH-RLHF against AlpacaEval the old rule
("any shared 8-gram") flagged "can you help me figure out how to ..." - 1 of the 6 8-grams of
"Can you help me figure out how to sew a button on a shirt?", far from the item. An eval item shorter than
`ngram` words contributes its whole word sequence, which then only matches a text of that same short form.
Each drop names the eval item it matched in `duplicate_of` as "eval:<index>" (0-based, in file order).

N-grams are hashed word shingles over the same lower-cased `\\w+` tokens as near-dup (checks.text).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from .base import CheckResult, Decision, apply
from .columns import take_rows
from .near_dup_sets import ShingleCache, column_hashes, distinct
from .text import iter_shingle_levels, shingles, sorted_unique, tokens

RULE = "decontam"
PROMPT_KEYS = ("prompt", "instruction", "question")
_MASK = np.uint64((1 << 22) - 1)


@dataclass(frozen=True)
class DecontamConfig:
    enabled: bool = True
    ngram: int = 8
    min_fraction: float = 0.5  # of an eval item's distinct n-grams found in one text
    long_ngram: int | None = 13  # one shared run of this many words is contamination on its own
    fields: tuple[str, ...] = ("prompt_text", "chosen", "rejected")
    chunk_rows: int = 20_000

    def __post_init__(self) -> None:
        bad = set(self.fields) - {"prompt_text", "chosen", "rejected"}
        if bad:
            raise ValueError(f"decontam.fields: unknown {sorted(bad)}")
        if not 0.0 < self.min_fraction <= 1.0:
            raise ValueError("decontam.min_fraction must be in (0, 1]")
        if self.long_ngram is not None and self.long_ngram <= self.ngram:
            raise ValueError("decontam.long_ngram must be larger than decontam.ngram (or null)")


def read_eval_prompts(path: str | Path) -> list[str]:
    """Eval prompts from text lines, JSONL or a JSON array (optionally gzipped).

    JSON records are strings or objects with a `prompt`, `instruction` or `question` key (AlpacaEval's own
    eval set uses `instruction`). Anything else raises ValueError naming the file, and the row where known.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"eval prompts file {path}: cannot read it ({exc})") from None
    stripped = text.lstrip()
    if name.endswith(".jsonl"):
        records = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    records.append((i + 1, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"eval prompts file {path}, line {i + 1}: not JSON ({exc.msg})") from None
        where = "line"
    elif name.endswith(".json") or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"eval prompts file {path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if not isinstance(data, list):
            raise ValueError(f"eval prompts file {path}: expected a JSON array of prompts, got {type(data).__name__}")
        records, where = list(enumerate(data)), "item"
    else:
        return [line for line in text.splitlines() if line.strip()]
    return [_prompt_of(rec, path, where, i) for i, rec in records]


def _prompt_of(rec: object, path: Path, where: str, i: int) -> str:
    if isinstance(rec, str):
        return rec
    if isinstance(rec, dict):
        for k in PROMPT_KEYS:
            if isinstance(rec.get(k), str):
                return rec[k]
        raise ValueError(f"eval prompts file {path}, {where} {i}: no string field among {list(PROMPT_KEYS)} "
                         f"(keys: {sorted(rec)[:10]})")
    raise ValueError(f"eval prompts file {path}, {where} {i}: expected a string or an object, "
                     f"got {type(rec).__name__}")


@dataclass
class EvalIndex:
    """The eval items' n-grams: (hash, item) sorted by hash, each item's n-gram count, and the long n-grams."""
    h: np.ndarray
    item: np.ndarray
    size: np.ndarray
    long: np.ndarray
    bitmap: np.ndarray
    long_bitmap: np.ndarray


def eval_index(eval_prompts: Sequence[str], cfg: DecontamConfig) -> EvalIndex:
    tok, counts = tokens(list(eval_prompts))
    h, item = shingles(tok, counts, cfg.ngram)
    pairs = pl.DataFrame({"h": h, "item": item}).unique().sort("h")
    size = np.bincount(pairs.get_column("item").to_numpy(), minlength=len(eval_prompts))
    long = np.zeros(0, np.uint64)
    if cfg.long_ngram:
        lh, lrow = shingles(tok, counts, cfg.long_ngram)
        long = sorted_unique(lh[counts[lrow] >= cfg.long_ngram])  # shorter items have no long n-gram
    bitmap = np.zeros(1 << 22, dtype=bool)
    bitmap[(pairs.get_column("h").to_numpy() & _MASK).astype(np.int64)] = True
    long_bitmap = np.zeros(1 << 22, dtype=bool)
    long_bitmap[(long & _MASK).astype(np.int64)] = True
    return EvalIndex(pairs.get_column("h").to_numpy(), pairs.get_column("item").to_numpy(), size, long, bitmap,
                     long_bitmap)


def _fraction_matches(h: np.ndarray, row: np.ndarray, ix: EvalIndex, cfg: DecontamConfig, out: np.ndarray) -> None:
    """Texts holding `min_fraction` of an eval item's `ngram`-grams name that item in `out` (h, row: the
    texts' `ngram`-shingles)."""
    # A bitmap on the low hash bits rules out almost every shingle with one cache-friendly lookup.
    maybe = np.flatnonzero(ix.bitmap[(h & _MASK).astype(np.int64)])
    if maybe.size:
        hits = pl.DataFrame({"h": h[maybe], "row": row[maybe]}).unique()
        ref = pl.DataFrame({"h": ix.h, "item": ix.item})
        per = hits.join(ref, on="h").group_by("row", "item").len()
        per = per.with_columns(frac=per.get_column("len").to_numpy() / ix.size[per.get_column("item").to_numpy()])
        # Ties (two eval items equally covered) go to the lower index: group_by's row order is not fixed.
        bad = (per.filter(pl.col("frac") >= cfg.min_fraction).sort(["frac", "item"], descending=[True, False])
               .unique("row", keep="first", maintain_order=True))
        out[bad.get_column("row").to_numpy()] = bad.get_column("item").to_numpy()


def _long_matches(lh: np.ndarray, lrow: np.ndarray, tok: np.ndarray, counts: np.ndarray, ix: EvalIndex,
                  cfg: DecontamConfig, out: np.ndarray) -> None:
    """Texts not yet named that share one `long_ngram`-gram with the eval set name an item in `out`."""
    maybe = np.flatnonzero(ix.long_bitmap[(lh & _MASK).astype(np.int64)])  # as above: few survive
    lh, lrow = lh[maybe], lrow[maybe]
    pos = np.minimum(np.searchsorted(ix.long, lh), ix.long.size - 1)
    hit = ix.long[pos] == lh
    # A long shared run also shares n-grams with its item: the item sharing most of them is named.
    rows = np.unique(lrow[hit])
    starts = np.cumsum(counts) - counts
    for r in rows[out[rows] < 0]:  # rare: rows with a long shared run but under min_fraction
        out[r] = _item_of_row(tok[starts[r]:starts[r] + counts[r]], ix, cfg)


def _item_of_row(tok: np.ndarray, ix: EvalIndex, cfg: DecontamConfig) -> int:
    """The eval item sharing the most n-grams with one text's tokens."""
    h, _ = shingles(tok, np.array([tok.size]), cfg.ngram)
    pos = np.minimum(np.searchsorted(ix.h, h), ix.h.size - 1)
    items = ix.item[pos[ix.h[pos] == h]]
    return int(np.bincount(items).argmax()) if items.size else 0


def field_matches(col: pa.ChunkedArray, ix: EvalIndex, cfg: DecontamConfig, name: str,
                  cache: ShingleCache | None = None) -> np.ndarray:
    """Per row: the eval item its text in `col` is contaminated by, or -1. Each distinct text is tokenised
    once (shared prompts and answers are common), a chunk of texts at a time (bounds the exploded tokens);
    `cache` gets every text's near-dup shingles, computed in the same pass as the n-grams."""
    h = column_hashes(col)
    first, inv = distinct(h)
    item = np.empty(first.size, np.int64)
    share = cache is not None and cache.wants(name)
    ks = {cfg.ngram} | ({cfg.long_ngram} if ix.long.size and cfg.long_ngram else set())
    ks |= {cache.ngram} if share else set()
    for lo in range(0, first.size, cfg.chunk_rows):
        rows = first[lo:lo + cfg.chunk_rows]
        tok, counts = tokens(take_rows(col, rows))
        out = np.full(rows.size, -1, dtype=np.int64)
        # Shortest first, each level used and dropped before the next is made (long_ngram > ngram: the long
        # rule only names texts the fraction rule left).
        for k, (sh, row) in iter_shingle_levels(tok, counts, sorted(ks)):
            if share and k == cache.ngram:
                cache.add(name, h[rows], sh, row)
            if k == cfg.ngram:
                _fraction_matches(sh, row, ix, cfg, out)
            if ix.long.size and k == cfg.long_ngram:
                _long_matches(sh, row, tok, counts, ix, cfg, out)
            del sh, row
        item[lo:lo + rows.size] = out
    return item[inv]


def decide(table: pa.Table, cfg: DecontamConfig, eval_prompts: Sequence[str] | None,
           cache: ShingleCache | None = None) -> Decision:
    n = table.num_rows
    d = Decision.keep_all(n)
    if not eval_prompts or n == 0:
        d.stats = {"eval_prompts": len(eval_prompts or ()), "eval_ngrams": 0}
        return d
    ix = eval_index(eval_prompts, cfg)
    item = {f: field_matches(table.column(f), ix, cfg, f, cache) for f in cfg.fields}
    d.duplicate_of = np.full(n, None, dtype=object)
    for f in cfg.fields:
        new = (item[f] >= 0) & ~d.drop
        d.duplicate_of[new] = [f"eval:{i}" for i in item[f][new]]
        d.mark(item[f] >= 0, "contaminated_prompt" if f == "prompt_text" else f"contaminated_{f}")
    d.stats = {"eval_prompts": len(eval_prompts), "eval_ngrams": int(ix.h.size),
               "contaminated_by_field": {f: int((b >= 0).sum()) for f, b in item.items()}}
    return d


def run(table: pa.Table, cfg: DecontamConfig, eval_prompts: Sequence[str] | None = None) -> CheckResult:
    return apply(table, decide(table, cfg, eval_prompts), RULE, cfg)
