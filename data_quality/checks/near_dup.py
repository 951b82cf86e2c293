"""Near-duplicate pairs across the data set and across sources: MinHash + LSH banding + exact verification.

Signatures use one-permutation MinHash (OPH) with rotation densification: each shingle is hashed once and
falls into one of `num_perm` bins, a bin keeps its minimum, and empty bins borrow from the next non-empty
bin. Collision probability per bin equals the Jaccard similarity, like k-permutation MinHash, at the cost of
one hash per shingle instead of `num_perm` (a numpy `minimum.at` over the flat shingle array). Bands and rows
are chosen so that a pair at exactly the threshold becomes a candidate with probability >= `target_recall`;
every candidate is then checked by exact Jaccard of the shingle sets, which keeps precision. Clusters are
the connected components of verified pairs; the first row of a cluster (input order) is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from .base import CheckResult, Decision, apply
from .text import mix64, shingles, sorted_unique, text_shingles, tokens

RULE = "near_dup"
_EMPTY = np.iinfo(np.uint64).max
_M = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class NearDupConfig:
    enabled: bool = True
    threshold: float = 0.8  # exact Jaccard of word shingles at or above which pairs are duplicates
    ngram: int = 3
    num_perm: int = 64  # OPH bins; 64 gives 12 bands x 5 rows at 0.8
    target_recall: float = 0.99  # candidate probability at J == threshold
    fields: tuple[str, ...] = ("prompt_text", "chosen", "rejected")
    max_bucket: int = 64  # larger LSH buckets are linked as a star, not all pairs
    chunk_rows: int = 5_000
    seed: int = 1
    # Also required of chosen and of rejected separately: two pairs that share a prompt and a long chosen
    # answer but have different rejected answers are distinct training signals, though their concatenated
    # text can be >= threshold similar (seen on AlpacaEval: one GPT-4 answer against many rejected ones).
    min_answer_jaccard: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("near_dup.threshold must be in (0, 1]")
        if not 0.0 <= self.min_answer_jaccard <= 1.0:
            raise ValueError("near_dup.min_answer_jaccard must be in [0, 1]")
        bad = set(self.fields) - {"prompt_text", "chosen", "rejected"}
        if bad:
            raise ValueError(f"near_dup.fields: unknown {sorted(bad)}")


def choose_bands(threshold: float, num_perm: int, target_recall: float) -> tuple[int, int]:
    """(bands, rows): the most selective banding whose candidate probability at the threshold is on target."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if 1 - (1 - threshold**r) ** b >= target_recall:
            best = (b, r)
    return best


def pair_text(table: pa.Table, fields: tuple[str, ...]) -> pl.Series:
    cols = [pl.Series(f, table.column(f)) for f in fields]
    return pl.DataFrame(cols).select(pl.concat_str(list(fields), separator="\n")).to_series()


def signatures(texts: pl.Series, cfg: NearDupConfig) -> np.ndarray:
    """(rows, num_perm) uint64 OPH signatures; rows without shingles are all _EMPTY."""
    return signatures_from_tokens(*tokens(texts), cfg)


def signatures_from_tokens(tok: np.ndarray, counts: np.ndarray, cfg: NearDupConfig) -> np.ndarray:
    k = cfg.num_perm
    n = counts.size
    h, row = shingles(tok, counts, cfg.ngram)
    # Shingle hashes are already mixed (uniform bits), so xor-ing a seed is enough to pick another permutation.
    h = h ^ np.uint64(cfg.seed * 0x9E3779B97F4A7C15 % 2**64)
    bins = (((h >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32)).astype(np.int64)
    sig = np.full(n * k, _EMPTY, dtype=np.uint64)
    np.minimum.at(sig, row * k + bins, h & np.uint64(0xFFFFFFFF))
    # Rotation densification: an empty bin takes the next non-empty bin to its right (circularly), offset
    # by the distance so borrowed values never equal native ones. Only empty slots are visited, one step
    # of distance per round; runs of empty bins are short, so there are few rounds.
    pending = np.flatnonzero(sig == _EMPTY)
    if pending.size:
        native = sig.copy()
        row_base = pending - pending % k
        col = pending % k
        for dist in range(1, k):
            src = native[row_base + (col + dist) % k]
            found = src != _EMPTY
            sig[pending[found]] = src[found] + (np.uint64(dist) << np.uint64(32))
            keep = ~found
            pending, row_base, col = pending[keep], row_base[keep], col[keep]
            if not pending.size:
                break
    return sig.reshape(n, k)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 bucket keys: the `rows` values of each band folded together, then mixed."""
    n = sig.shape[0]
    blocks = sig[:, : bands * rows].reshape(n, bands, rows)
    with np.errstate(over="ignore"):
        acc = np.broadcast_to(np.arange(1, bands + 1, dtype=np.uint64), (n, bands)).copy()
        for r in range(rows):
            acc = (acc ^ blocks[:, :, r]) * _M
        return mix64(acc)


def chunk_band_keys(texts: pl.Series, cfg: NearDupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(band keys (n, bands), has-shingles mask) for a batch of texts."""
    return keys_from_tokens(*tokens(texts), cfg)


def keys_from_tokens(tok: np.ndarray, counts: np.ndarray, cfg: NearDupConfig) -> tuple[np.ndarray, np.ndarray]:
    """Band keys from already-tokenised pair texts (lets another check share one tokenising pass)."""
    bands, rows = choose_bands(cfg.threshold, cfg.num_perm, cfg.target_recall)
    sig = signatures_from_tokens(tok, counts, cfg)
    return band_keys(sig, bands, rows), sig[:, 0] != _EMPTY


def shingle_sets40(texts: pl.Series, ngram: int) -> np.ndarray:
    """Sorted unique (row << 40 | 40-bit shingle hash) keys: each row's shingle set, ready to merge."""
    h, r = text_shingles(texts, ngram)
    return sorted_unique((r.astype(np.uint64) << np.uint64(40)) | (h >> np.uint64(24)))


def candidates(keys: np.ndarray, valid: np.ndarray, max_bucket: int) -> np.ndarray:
    """Candidate pairs (i < j) sharing a bucket in any band, as an (m, 2) int64 array."""
    out = []
    rows_all = np.flatnonzero(valid)
    for b in range(keys.shape[1]):
        col = keys[rows_all, b]
        order = np.argsort(col, kind="stable")
        srt, rows = col[order], rows_all[order]
        brk = np.flatnonzero(np.diff(srt) != 0) + 1
        starts = np.concatenate([[0], brk])
        sizes = np.diff(np.concatenate([starts, [srt.size]]))
        multi = sizes > 1
        st, sz = starts[multi], sizes[multi]
        small = sz <= max_bucket
        # All pairs inside small buckets: element p pairs with every later element of its bucket.
        el_start = np.repeat(st[small], sz[small])
        el = el_start + (np.arange(el_start.size) - np.repeat(np.cumsum(sz[small]) - sz[small], sz[small]))
        later = np.repeat(st[small] + sz[small], sz[small]) - el - 1
        left = np.repeat(el, later)
        right = left + 1 + (np.arange(left.size) - np.repeat(np.cumsum(later) - later, later))
        out.append(np.stack([rows[left], rows[right]], axis=1))
        # Big buckets (boilerplate) are linked to their first element only.
        big_st, big_sz = st[~small], sz[~small]
        if big_st.size:
            first = np.repeat(big_st, big_sz - 1)
            other = first + 1 + (np.arange(first.size) - np.repeat(np.cumsum(big_sz - 1) - (big_sz - 1), big_sz - 1))
            out.append(np.stack([rows[first], rows[other]], axis=1))
    if not out:
        return np.zeros((0, 2), np.int64)
    pairs = np.sort(np.concatenate(out), axis=1)
    n = max(int(keys.shape[0]), 1)
    code = sorted_unique(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([code // n, code % n], axis=1)


def exact_jaccard(pairs: np.ndarray, get_texts: Callable[[np.ndarray], pl.Series], ngram: int,
                  batch_elems: int = 4_000_000) -> np.ndarray:
    """Exact Jaccard of the shingle sets (40-bit hashes) of each candidate pair."""
    if pairs.size == 0:
        return np.zeros(0)
    rows = sorted_unique(pairs.ravel())
    key = shingle_sets40(get_texts(rows), ngram)
    local = (key >> np.uint64(40)).astype(np.int64)
    vals = key & np.uint64((1 << 40) - 1)
    starts = np.searchsorted(local, np.arange(rows.size))
    sizes = np.bincount(local, minlength=rows.size)
    a, b = np.searchsorted(rows, pairs[:, 0]), np.searchsorted(rows, pairs[:, 1])
    out = np.zeros(len(pairs))
    lo = 0
    while lo < len(pairs):  # batches bound the gathered elements, so memory stays flat
        cum = np.cumsum(sizes[a[lo:]] + sizes[b[lo:]])
        hi = lo + max(1, int(np.searchsorted(cum, batch_elems)))
        pa_, pb_ = a[lo:hi], b[lo:hi]
        seg_rows = np.stack([pa_, pb_], axis=1).ravel()
        seg_len = sizes[seg_rows]
        tag = np.repeat(np.arange(hi - lo, dtype=np.uint64).repeat(2), seg_len)
        offs = np.repeat(starts[seg_rows] - (np.cumsum(seg_len) - seg_len), seg_len) + np.arange(seg_len.sum())
        merged = np.sort((tag << np.uint64(40)) | vals[offs])
        same = merged[1:] == merged[:-1]
        inter = np.bincount((merged[1:][same] >> np.uint64(40)).astype(np.int64), minlength=hi - lo)
        union = sizes[pa_] + sizes[pb_] - inter
        out[lo:hi] = np.divide(inter, union, out=np.ones(hi - lo), where=union > 0)
        lo = hi
    return out


ANSWER_FIELDS = ("chosen", "rejected")


def answers_agree(edges: np.ndarray, field_texts: Callable[[np.ndarray, str], pl.Series],
                  cfg: NearDupConfig) -> np.ndarray:
    """Edges whose chosen and rejected answers are each >= cfg.min_answer_jaccard similar (exact Jaccard)."""
    if edges.size == 0 or cfg.min_answer_jaccard <= 0.0:
        return edges
    keep = np.ones(len(edges), dtype=bool)
    for name in ANSWER_FIELDS:
        keep &= exact_jaccard(edges, lambda rows, f=name: field_texts(rows, f), cfg.ngram) >= cfg.min_answer_jaccard
    return edges[keep]


def components(edges: np.ndarray, n: int) -> np.ndarray:
    """Connected-component label per row = smallest row index in its component (min-label propagation)."""
    labels = np.arange(n, dtype=np.int64)
    if edges.size == 0:
        return labels
    a, b = edges[:, 0], edges[:, 1]
    while True:
        m = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, m)
        np.minimum.at(labels, b, m)
        labels = labels[labels]  # pointer jumping shortens chains
        if np.array_equal(labels, before):
            return labels


def find_clusters(texts: pl.Series, cfg: NearDupConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """(label per row, verified pairs (m, 2), stats) for a text column, signed in chunks of rows."""
    return cluster_rows(texts.len(), lambda lo, hi: texts.slice(lo, hi - lo), texts.gather, cfg)


def cluster_rows(n: int, chunk: Callable[[int, int], pl.Series], rows_text: Callable[[np.ndarray], pl.Series],
                 cfg: NearDupConfig, precomputed: tuple[np.ndarray, np.ndarray] | None = None,
                 field_texts: Callable[[np.ndarray, str], pl.Series] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Clusters of `n` texts given by `chunk(lo, hi)`; only candidate rows are fetched again to verify.

    `precomputed` = (band keys, valid) for exactly these rows, when an earlier pass already tokenised them.
    """
    bands, rows = choose_bands(cfg.threshold, cfg.num_perm, cfg.target_recall)
    if precomputed is not None:
        keys, valid = precomputed
    else:
        keys = np.empty((n, bands), dtype=np.uint64)
        valid = np.ones(n, dtype=bool)
        for lo in range(0, n, cfg.chunk_rows):
            k, v = chunk_band_keys(chunk(lo, min(n, lo + cfg.chunk_rows)), cfg)
            keys[lo:lo + len(v)], valid[lo:lo + len(v)] = k, v
    cand = candidates(keys, valid, cfg.max_bucket)
    del keys
    jac = exact_jaccard(cand, rows_text, cfg.ngram)
    edges = cand[jac >= cfg.threshold]
    similar_text = len(edges)
    if field_texts is not None:
        edges = answers_agree(edges, field_texts, cfg)
    labels = components(edges, n)
    stats = {"bands": bands, "rows_per_band": rows, "candidates": int(len(cand)), "verified_pairs": int(len(edges)),
             "different_answers": int(similar_text - len(edges)),
             "candidate_precision": float(len(edges) / len(cand)) if len(cand) else None}
    return labels, edges, stats


def decide(table: pa.Table, cfg: NearDupConfig,
           precomputed: tuple[np.ndarray, np.ndarray] | None = None) -> Decision:
    n = table.num_rows
    d = Decision.keep_all(n)
    if n == 0:
        return d
    # Pair texts are built a chunk at a time, never for the whole table at once.
    labels, _, stats = cluster_rows(n, lambda lo, hi: pair_text(table.slice(lo, hi - lo), cfg.fields),
                                    lambda rows: pair_text(table.take(pa.array(rows)), cfg.fields), cfg, precomputed,
                                    field_texts=lambda rows, f: pl.Series(table.column(f).take(pa.array(rows))))
    dup = labels != np.arange(n)
    d.mark(dup, "near_duplicate")
    ids = np.asarray(table.column("pair_id").to_numpy(zero_copy_only=False), dtype=object)
    d.duplicate_of = np.where(dup, ids[labels], None).astype(object)
    sizes = np.bincount(labels, minlength=n)
    sizes = sizes[sizes > 1]
    src = pl.DataFrame({"label": labels, "src": pl.Series(table.column("source"))})
    cross = src.group_by("label").agg(pl.col("src").n_unique().alias("k")).filter(pl.col("k") > 1).height
    size_values, size_counts = np.unique(sizes, return_counts=True)
    stats.update(clusters=int(sizes.size), rows_in_clusters=int(sizes.sum()), cross_source_clusters=int(cross),
                 cluster_sizes={str(int(s)): int(c) for s, c in zip(size_values, size_counts, strict=True)},
                 max_cluster=int(sizes.max()) if sizes.size else 0)
    d.stats = stats
    return d


def run(table: pa.Table, cfg: NearDupConfig, precomputed: tuple[np.ndarray, np.ndarray] | None = None) -> CheckResult:
    return apply(table, decide(table, cfg, precomputed), RULE, cfg)
