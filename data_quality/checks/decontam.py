"""Decontamination: drop pairs whose prompt or answers share word n-grams with user-supplied eval prompts.

N-grams are hashed word shingles over the same lower-cased `\\w+` tokens as near-dup. An eval prompt shorter
than n tokens contributes its whole token sequence, which then only matches a text of the same short form.
Given the near-dup config, the same tokenising pass also yields the near-dup band keys of every row, so the
gate reads the text once for both checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from . import near_dup
from .base import CheckResult, Decision, apply
from .text import concat_tokens, shingles, sorted_unique, text_shingles, tokens

RULE = "decontam"
_MASK = np.uint64((1 << 22) - 1)


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


def _contaminated(tok: np.ndarray, counts: np.ndarray, ref: np.ndarray, bitmap: np.ndarray,
                  cfg: DecontamConfig) -> np.ndarray:
    h, row = shingles(tok, counts, cfg.ngram)
    hit = np.zeros(h.size, dtype=bool)
    # A bitmap on the low hash bits rules out almost every shingle with one cache-friendly lookup;
    # only the few that pass are confirmed by binary search.
    maybe = np.flatnonzero(bitmap[(h & _MASK).astype(np.int64)])
    pos = np.minimum(np.searchsorted(ref, h[maybe]), ref.size - 1)
    hit[maybe] = ref[pos] == h[maybe]
    if cfg.min_matches <= 1:
        return np.bincount(row[hit], minlength=counts.size) > 0
    distinct = sorted_unique((row[hit].astype(np.uint64) << np.uint64(40)) | (h[hit] >> np.uint64(24)))
    return np.bincount((distinct >> np.uint64(40)).astype(np.int64), minlength=counts.size) >= cfg.min_matches


def decide(table: pa.Table, cfg: DecontamConfig, eval_prompts: Sequence[str] | None,
           near_dup_cfg: near_dup.NearDupConfig | None = None) -> Decision:
    n = table.num_rows
    d = Decision.keep_all(n)
    if not eval_prompts or n == 0:
        d.stats = {"eval_prompts": len(eval_prompts or ()), "eval_ngrams": 0}
        return d
    ref = eval_ngrams(eval_prompts, cfg.ngram)
    bitmap = np.zeros(1 << 22, dtype=bool)
    bitmap[(ref & _MASK).astype(np.int64)] = True
    bad = {f: np.zeros(n, dtype=bool) for f in cfg.fields}
    fields = list(dict.fromkeys(cfg.fields + (near_dup_cfg.fields if near_dup_cfg else ())))
    keys = valid = None
    for lo in range(0, n, cfg.chunk_rows):  # chunks bound the exploded-token memory
        part = table.slice(lo, cfg.chunk_rows)
        toks = {f: tokens(part.column(f)) for f in fields}
        for f in cfg.fields:
            bad[f][lo:lo + part.num_rows] = _contaminated(*toks[f], ref, bitmap, cfg)
        if near_dup_cfg is not None:
            k, v = near_dup.keys_from_tokens(*concat_tokens([toks[f] for f in near_dup_cfg.fields]), near_dup_cfg)
            if keys is None:
                keys, valid = np.empty((n, k.shape[1]), np.uint64), np.empty(n, bool)
            keys[lo:lo + part.num_rows], valid[lo:lo + part.num_rows] = k, v
    for f in cfg.fields:
        d.mark(bad[f], "contaminated_prompt" if f == "prompt_text" else f"contaminated_{f}")
    if keys is not None:
        d.extra["near_dup_keys"] = (keys, valid)
    d.stats = {"eval_prompts": len(eval_prompts), "eval_ngrams": int(ref.size),
               "contaminated_by_field": {f: int(b.sum()) for f, b in bad.items()}}
    return d


def run(table: pa.Table, cfg: DecontamConfig, eval_prompts: Sequence[str] | None = None) -> CheckResult:
    return apply(table, decide(table, cfg, eval_prompts), RULE, cfg)
