"""Near-duplicate pairs across the data set and across sources, in near-linear time on real data.

A pair is a near-duplicate of an earlier kept pair when, by exact Jaccard of word shingles,
- the whole pair is >= `threshold` similar: the shingles of each field in `fields`, tagged by field, as one set
  (so the same words in the prompt and in an answer are not confused), and
- its chosen answers and its rejected answers are each >= `min_answer_jaccard` similar: two pairs sharing a
  prompt and one long answer but with different other answers are distinct training signals.

Real preference data is heavily shared (AlpacaEval: ~70 rows per prompt, one reference answer in most of them),
so everything is computed per *distinct text*, never per row: a text's shingles and MinHash signature once
(one-permutation MinHash with rotation densification), and a text pair's shingle intersection once. LSH bands
take rows from the chosen *and* the rejected signature, so rows sharing a prompt and one answer only meet when
their other answers agree too; a bucket links each member to its first `bucket_links` members only (linear in
the bucket, not quadratic). Candidates are verified exactly from per-field intersections (a sorted lookup of the
smaller set's shingles in the larger one's, batched over text pairs).

Drops are decided greedily in input order against *kept* rows only: a row is dropped as a duplicate of the
first kept row it was verified against, never through a chain (A~B and B~C never drop C against A).

Modules: near_dup_sets (shingle stores per distinct text, exact overlaps), near_dup_lsh (signatures, bands,
buckets, candidate pairs); this one holds the rule: verification, the greedy decision and the check itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from .base import CheckResult, Decision, apply
from .columns import take_rows
from .near_dup_lsh import (  # noqa: F401 - the stage functions the cluster executor and benchmarks call
    band_codes,
    band_groups,
    band_key,
    band_plan,
    candidates,
    choose_bands,
    decode_pairs,
    group_keys,
)
from .near_dup_sets import (  # noqa: F401
    Field,
    ShingleCache,
    column_hashes,
    distinct,
    field_overlap,
    intersections,
    text_hashes,
)
from .text import sorted_unique

RULE = "near_dup"
ANSWER_FIELDS = ("chosen", "rejected")


@dataclass(frozen=True)
class NearDupConfig:
    enabled: bool = True
    threshold: float = 0.8  # exact Jaccard of the field-tagged shingle sets at or above which pairs are duplicates
    ngram: int = 3
    num_perm: int = 64  # OPH bins per signature
    target_recall: float = 0.99  # candidate probability for a pair whose answers are each `threshold` similar
    fields: tuple[str, ...] = ("prompt_text", "chosen", "rejected")
    bucket_links: int = 3  # a bucket member is compared with this many earliest members of its bucket
    chunk_rows: int = 20_000  # distinct texts signed per batch (bounds the exploded-token memory)
    seed: int = 1
    # Also required of chosen and of rejected separately (seen on AlpacaEval: one GPT-4 answer against many
    # rejected ones makes whole pairs > 0.8 similar that are different preferences).
    min_answer_jaccard: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("near_dup.threshold must be in (0, 1]")
        if not 0.0 <= self.min_answer_jaccard <= 1.0:
            raise ValueError("near_dup.min_answer_jaccard must be in [0, 1]")
        bad = set(self.fields) - {"prompt_text", "chosen", "rejected"}
        if bad or not self.fields:
            raise ValueError(f"near_dup.fields: unknown {sorted(bad)}" if bad else "near_dup.fields is empty")
        if self.bucket_links < 1:
            raise ValueError("near_dup.bucket_links must be >= 1")


# -- text sources -------------------------------------------------------------------------------------------
class TableTexts:
    """Row texts of an in-memory pair table (the out-of-core engine provides the same two methods over Parquet)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.n = table.num_rows

    def hashes(self, field: str, chunk: int = 50_000) -> np.ndarray:
        return column_hashes(self.table.column(field), chunk)

    def texts(self, field: str, rows: np.ndarray) -> pl.Series:
        return pl.Series(take_rows(self.table.column(field), rows))


# -- exact verification -------------------------------------------------------------------------------------
def _ratio(i: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.divide(i, u, out=np.zeros(i.size), where=u > 0)


def verify(fields: dict[str, Field], pairs: np.ndarray, cfg: NearDupConfig) -> dict[str, np.ndarray]:
    """Exact Jaccard per pair of rows: whole pair (tagged union of `fields`) and each answer field."""
    over = {name: field_overlap(f, pairs) for name, f in fields.items()}
    out = {"whole": _ratio(sum(over[f][0] for f in cfg.fields), sum(over[f][1] for f in cfg.fields))}
    for name in ANSWER_FIELDS:
        if name in over:
            out[name] = _ratio(*over[name])
    return out


# -- greedy decisions ---------------------------------------------------------------------------------------
_UNKNOWN, _KEPT, _DROPPED = 0, 1, 2


def check_pairs(fields: dict[str, Field], pairs: np.ndarray, cfg: NearDupConfig, batch: int = 50_000) -> tuple[np.ndarray, np.ndarray]:
    """(duplicate, whole-similar) per pair: the rule checked exactly, in batches of pairs (bounded memory)."""
    dup, similar = np.zeros(len(pairs), bool), np.zeros(len(pairs), bool)
    for lo in range(0, len(pairs), batch):
        sim = verify(fields, pairs[lo:lo + batch], cfg)
        ok = sim["whole"] >= cfg.threshold
        similar[lo:lo + batch] = ok
        if cfg.min_answer_jaccard > 0:
            for name in ANSWER_FIELDS:
                ok = ok & (sim[name] >= cfg.min_answer_jaccard)
        dup[lo:lo + batch] = ok
    return dup, similar


def greedy(cand: np.ndarray, n: int, check: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
           ) -> tuple[np.ndarray, dict]:
    """Representative per row (-1 = kept) from candidate pairs (a < b), checking as few pairs as possible.

    A row with no earlier candidate is kept. In rounds, every undecided row is checked against its first
    candidate that is already *kept*: a match drops it against that row; a row whose candidates are all dropped
    or failed is kept. Dropped rows never represent anyone, so a drop always names a kept row it was verified
    against (no chains). The smallest undecided row can always move, so the rounds end.
    """
    rep = np.full(n, -1, np.int64)
    state = np.full(n, _KEPT, np.int8)
    order = np.lexsort((cand[:, 0], cand[:, 1])) if len(cand) else np.zeros(0, np.int64)
    a, b = cand[order, 0], cand[order, 1]
    state[b] = _UNKNOWN
    alive = np.ones(a.size, bool)
    stats = {"checked_pairs": 0, "verified_pairs": 0, "different_answers": 0, "rounds": 0}
    while alive.any():
        idx = np.flatnonzero(alive)
        sa = state[a[idx]]
        dead = (sa == _DROPPED) | (state[b[idx]] != _UNKNOWN)
        alive[idx[dead]] = False
        idx, sa = idx[~dead], sa[~dead]
        ready = idx[sa == _KEPT]
        first = ready[np.concatenate([[True], b[ready][1:] != b[ready][:-1]])] if ready.size else ready
        if first.size:
            dup, similar = check(np.stack([a[first], b[first]], axis=1))
            alive[first] = False
            state[b[first[dup]]] = _DROPPED
            rep[b[first[dup]]] = a[first[dup]]
            stats["checked_pairs"] += int(first.size)
            stats["verified_pairs"] += int(dup.sum())
            stats["different_answers"] += int((similar & ~dup).sum())
        waiting = np.zeros(n, bool)
        waiting[b[alive]] = True
        state[(state == _UNKNOWN) & ~waiting] = _KEPT
        stats["rounds"] += 1
    return rep, stats


def field_names(cfg: NearDupConfig) -> list[str]:
    return list(dict.fromkeys(cfg.fields + (ANSWER_FIELDS if cfg.min_answer_jaccard > 0 else ())))


def find_duplicates(src: TableTexts, cfg: NearDupConfig, cache: ShingleCache | None = None
                    ) -> tuple[np.ndarray, dict]:
    """(representative row per row, -1 where kept; stats) for the rows of `src`."""
    banded = {name for group in band_groups(cfg) for name in group}
    fields = {name: Field(src, name, cfg, cache=cache) for name in field_names(cfg) if name in banded}
    cand, stats = candidates(fields, src.n, cfg)
    # A field only verification reads (the prompt, when bands are made of the answers) is shingled for the
    # candidates' texts only: most rows of a large set are never a candidate. Shingles taken from the cache
    # become sets for those texts only, likewise.
    need = sorted_unique(cand.ravel()) if len(cand) else np.zeros(0, np.int64)
    fields = {name: (fields[name] if name in banded else Field(src, name, cfg, rows=need, cache=cache)).exact_for(need)
              for name in field_names(cfg)}
    rep, gstats = greedy(cand, src.n, lambda pairs: check_pairs(fields, pairs, cfg))
    return rep, summary(stats, {name: int(f.first.size) for name, f in fields.items()}, len(cand), gstats)


def summary(stats: dict, distinct_texts: dict[str, int], n_cand: int, gstats: dict) -> dict:
    stats.update(distinct_texts=distinct_texts, candidates=int(n_cand), **gstats,
                 candidate_precision=gstats["verified_pairs"] / gstats["checked_pairs"]
                 if gstats["checked_pairs"] else None)
    return stats


def decide(table: pa.Table, cfg: NearDupConfig, cache: ShingleCache | None = None) -> Decision:
    n = table.num_rows
    d = Decision.keep_all(n)
    if n == 0:
        return d
    rep, stats = find_duplicates(TableTexts(table), cfg, cache)
    dup = rep >= 0
    d.mark(dup, "near_duplicate")
    d.duplicate_of = np.full(n, None, dtype=object)  # pair ids of the named rows only, not of every row
    d.duplicate_of[dup] = take_rows(table.column("pair_id"), rep[dup]).to_numpy(zero_copy_only=False)
    stats.update(cluster_stats(rep, table.column("source")))
    d.stats = stats
    return d


def cluster_stats(rep: np.ndarray, source: pa.ChunkedArray | pa.Array | Sequence[str]) -> dict:
    """A cluster is a kept row and the rows dropped against it."""
    dup = rep >= 0
    label = np.where(dup, rep, np.arange(rep.size))
    sizes = np.bincount(label, minlength=rep.size)
    sizes = sizes[sizes > 1]
    frame = pl.DataFrame({"label": label, "src": pl.Series(source)}).filter(pl.col("label").is_in(label[dup]))
    cross = frame.group_by("label").agg(pl.col("src").n_unique().alias("k")).filter(pl.col("k") > 1).height
    values, counts = np.unique(sizes, return_counts=True)
    return {"clusters": int(sizes.size), "rows_in_clusters": int(sizes.sum()), "cross_source_clusters": int(cross),
            "cluster_sizes": {str(int(s)): int(c) for s, c in zip(values, counts, strict=True)},
            "max_cluster": int(sizes.max()) if sizes.size else 0}


def run(table: pa.Table, cfg: NearDupConfig, cache: ShingleCache | None = None) -> CheckResult:
    return apply(table, decide(table, cfg, cache), RULE, cfg)

