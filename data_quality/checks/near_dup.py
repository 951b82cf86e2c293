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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from .base import CheckResult, Decision, apply
from .text import mix64, shingles, sorted_unique, tokens

RULE = "near_dup"
ANSWER_FIELDS = ("chosen", "rejected")
_EMPTY32 = np.uint32(0xFFFFFFFF)
_M = np.uint64(0x9E3779B97F4A7C15)
_HBITS = 42  # shingle hash bits kept for exact intersections (ids take the other 22)


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


def choose_bands(threshold: float, num_perm: int, target_recall: float, groups: int = 1) -> tuple[int, int]:
    """(bands, rows per signature): the most selective banding whose candidate probability is on target for a
    pair that is `threshold` similar in each of `groups` signatures (a band takes `rows` bins of each)."""
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if 1 - (1 - threshold ** (r * groups)) ** b >= target_recall:
            best = (b, r)
    return best


def band_groups(cfg: NearDupConfig) -> list[tuple[str, ...]]:
    """Signatures a band is made of: each answer alone when both must agree, else the tagged union of `fields`."""
    return [("chosen",), ("rejected",)] if cfg.min_answer_jaccard > 0 else [tuple(cfg.fields)]


# -- text sources -------------------------------------------------------------------------------------------
class TableTexts:
    """Row texts of an in-memory pair table (the out-of-core engine provides the same two methods over Parquet)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.n = table.num_rows

    def hashes(self, field: str) -> np.ndarray:
        return text_hashes(pl.Series(self.table.column(field)))

    def texts(self, field: str, rows: np.ndarray) -> pl.Series:
        return pl.Series(self.table.column(field).take(pa.array(rows)))


def text_hashes(s: pl.Series) -> np.ndarray:
    """64-bit identity of each text (equal texts, equal hashes), the key distinct texts are grouped by."""
    return s.fill_null("").hash(0x7E57).to_numpy()


def distinct(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each distinct value, inverse: the distinct index of every row), by one stable sort."""
    order = np.argsort(h, kind="stable")
    hs = h[order]
    new = np.concatenate([[True], hs[1:] != hs[:-1]]) if h.size else np.zeros(0, bool)
    inv = np.empty(h.size, np.int64)
    inv[order] = np.cumsum(new) - 1
    first = order[new]
    # Number distinct texts by first appearance so the ids, like the rows, follow input order.
    rank = np.argsort(first, kind="stable")
    relabel = np.empty_like(rank)
    relabel[rank] = np.arange(rank.size)
    return first[rank], relabel[inv]


# -- signatures ---------------------------------------------------------------------------------------------
def _field_tag(field: str) -> np.uint64:
    return np.uint64(hash_field(field))


def hash_field(field: str) -> int:
    return {"prompt_text": 0x51ED27D3A8F3C1B5, "chosen": 0x2545F4914F6CDD1D, "rejected": 0x9E6C63D0676A9A99}[field]


def text_shingles_tagged(texts: pl.Series, field: str, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hashes tagged by field, text index) of each text."""
    h, row = shingles(*tokens(texts), ngram)
    return mix64(h ^ _field_tag(field)), row


def raw_signatures(texts: pl.Series, field: str, cfg: NearDupConfig) -> np.ndarray:
    """(len(texts), num_perm) uint32 one-permutation MinHash bins, _EMPTY32 where a bin got no shingle."""
    k = cfg.num_perm
    h, row = text_shingles_tagged(texts, field, cfg.ngram)
    h = h ^ np.uint64(cfg.seed * 0x9E3779B97F4A7C15 % 2**64)
    bins = (((h >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32)).astype(np.int64)
    sig = np.full(texts.len() * k, _EMPTY32, dtype=np.uint32)
    np.minimum.at(sig, row * k + bins, np.minimum(h & np.uint64(0xFFFFFFFF), np.uint64(0xFFFFFFFE)).astype(np.uint32))
    return sig.reshape(-1, k)


def densify(raw: np.ndarray) -> np.ndarray:
    """Rotation densification: an empty bin takes the next non-empty bin to its right (circularly), offset by the
    distance so borrowed values never equal native ones; rows without any shingle stay all-empty (uint64)."""
    n, k = raw.shape
    sig = raw.astype(np.uint64).ravel()
    empty = np.uint64(_EMPTY32)
    pending = np.flatnonzero(sig == empty)
    if pending.size:
        native = sig.copy()
        row_base, col = pending - pending % k, pending % k
        for dist in range(1, k):  # one step per round over the still-empty slots only; runs are short
            src = native[row_base + (col + dist) % k]
            found = src != empty
            sig[pending[found]] = src[found] + (np.uint64(dist) << np.uint64(32))
            keep = ~found
            pending, row_base, col = pending[keep], row_base[keep], col[keep]
            if not pending.size:
                break
    return sig.reshape(n, k)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 keys: the `rows` bins of each band folded together, then mixed."""
    n = sig.shape[0]
    blocks = sig[:, : bands * rows].reshape(n, bands, rows)
    with np.errstate(over="ignore"):
        acc = np.broadcast_to(np.arange(1, bands + 1, dtype=np.uint64), (n, bands)).copy()
        for r in range(rows):
            acc = (acc ^ blocks[:, :, r]) * _M
        return mix64(acc)


class _Field:
    """One field's distinct texts: first row of each, and each row's distinct index."""

    def __init__(self, src: TableTexts, name: str) -> None:
        self.name = name
        self.first, self.inv = distinct(src.hashes(name))


def _group_keys(src: TableTexts, fields: dict[str, _Field], group: tuple[str, ...], cfg: NearDupConfig,
                bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, index): band keys (uint32, distinct x bands) and the key row of every pair row for one signature.

    A one-field group is signed per distinct text; a union of fields per distinct combination of its texts.
    """
    if len(group) == 1:
        f = fields[group[0]]
        ids, index = np.arange(f.first.size), f.inv
        rows_of = f.first
    else:
        combo = np.zeros(src.n, np.uint64)
        for name in group:
            combo = mix64(combo ^ fields[name].inv.astype(np.uint64) * _M)
        rows_of, index = distinct(combo)
        ids = np.arange(rows_of.size)
    keys = np.empty((ids.size, bands), np.uint32)
    for lo in range(0, ids.size, cfg.chunk_rows):
        sel = rows_of[lo:lo + cfg.chunk_rows]
        raw = None
        for name in group:
            f = fields[name]
            part = raw_signatures(src.texts(name, f.first[f.inv[sel]]), name, cfg)
            raw = part if raw is None else np.minimum(raw, part)
        keys[lo:lo + sel.size] = band_keys(densify(raw), bands, rows).astype(np.uint32)
    return keys, index


def bucket_pairs(key: np.ndarray, links: int) -> np.ndarray:
    """(m, 2) row pairs (i < j): every row with each of the first `links` rows of its bucket (equal keys)."""
    order = np.argsort(key, kind="stable")  # stable: members of a bucket stay in row order
    srt = key[order]
    start = np.flatnonzero(np.concatenate([[True], srt[1:] != srt[:-1]]))
    size = np.diff(np.concatenate([start, [srt.size]]))
    pos = np.arange(srt.size) - np.repeat(start, size)  # position of each row inside its bucket
    out = []
    for p in range(min(links, int(size.max()) if size.size else 0)):
        anchor = np.repeat(start + p, size)
        later = pos > p
        out.append(np.stack([order[anchor[later]], order[later]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def candidates(src: TableTexts, fields: dict[str, _Field], cfg: NearDupConfig) -> tuple[np.ndarray, dict]:
    groups = band_groups(cfg)
    bands, rows = choose_bands(cfg.threshold, cfg.num_perm, cfg.target_recall, len(groups))
    parts = [_group_keys(src, fields, g, cfg, bands, rows) for g in groups]
    n = src.n
    codes = []
    for b in range(bands):
        key = np.zeros(n, np.uint64)
        for keys, index in parts:
            key = mix64(key ^ keys[index, b].astype(np.uint64))
        pairs = bucket_pairs(key, cfg.bucket_links)
        codes.append(sorted_unique(pairs[:, 0].astype(np.uint64) * np.uint64(n) + pairs[:, 1].astype(np.uint64)))
    code = sorted_unique(np.concatenate(codes)) if codes else np.zeros(0, np.uint64)
    cand = np.stack([(code // np.uint64(n)).astype(np.int64), (code % np.uint64(n)).astype(np.int64)], axis=1)
    return cand, {"bands": bands, "rows_per_band": rows, "band_signatures": ["+".join(g) for g in groups]}


# -- exact verification -------------------------------------------------------------------------------------
def _shingle_table(src: TableTexts, f: _Field, ids: np.ndarray, cfg: NearDupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(sorted keys local_id << 42 | hash, set size per id) of the distinct texts `ids` (sorted)."""
    keys, sizes = [], np.zeros(ids.size, np.int64)
    for lo in range(0, ids.size, cfg.chunk_rows):
        sel = ids[lo:lo + cfg.chunk_rows]
        h, row = text_shingles_tagged(src.texts(f.name, f.first[sel]), f.name, cfg.ngram)
        k = sorted_unique(((row + lo).astype(np.uint64) << np.uint64(_HBITS)) | (h >> np.uint64(64 - _HBITS)))
        sizes[lo:lo + sel.size] = np.bincount((k >> np.uint64(_HBITS)).astype(np.int64) - lo, minlength=sel.size)
        keys.append(k)
    return (np.concatenate(keys) if keys else np.zeros(0, np.uint64)), sizes


def intersections(keys: np.ndarray, sizes: np.ndarray, a: np.ndarray, b: np.ndarray,
                  batch_elems: int = 4_000_000) -> np.ndarray:
    """|S_a & S_b| for local text ids a, b: each element of the smaller set is looked up in the larger one."""
    starts = np.concatenate([[0], np.cumsum(sizes)])
    small = np.where(sizes[a] <= sizes[b], a, b)
    large = np.where(sizes[a] <= sizes[b], b, a)
    out = np.zeros(a.size, np.int64)
    mask = np.uint64((1 << _HBITS) - 1)
    lo = 0
    while lo < a.size:  # batches bound the gathered elements
        cum = np.cumsum(sizes[small[lo:]])
        hi = lo + max(1, int(np.searchsorted(cum, batch_elems)))
        s, g = small[lo:hi], large[lo:hi]
        ln = sizes[s]
        pair = np.repeat(np.arange(hi - lo), ln)
        elem = np.repeat(starts[s] - (np.cumsum(ln) - ln), ln) + np.arange(int(ln.sum()))
        query = (g[pair].astype(np.uint64) << np.uint64(_HBITS)) | (keys[elem] & mask)
        at = np.minimum(np.searchsorted(keys, query), max(keys.size - 1, 0))
        hit = keys[at] == query if keys.size else np.zeros(0, bool)
        out[lo:hi] = np.bincount(pair[hit], minlength=hi - lo)
        lo = hi
    return out


def field_overlap(src: TableTexts, f: _Field, cand: np.ndarray, cfg: NearDupConfig) -> tuple[np.ndarray, np.ndarray]:
    """(intersection, union) of the field's shingle sets for every candidate pair, computed once per text pair.

    Identical texts need no lookup. Two different texts without shingles (emoji-only answers) have union 0
    and intersection 0: they are not called similar.
    """
    ta, tb = f.inv[cand[:, 0]], f.inv[cand[:, 1]]
    ids = sorted_unique(np.concatenate([ta, tb]))
    keys, sizes = _shingle_table(src, f, ids, cfg)
    la, lb = np.searchsorted(ids, ta), np.searchsorted(ids, tb)
    inter = sizes[la].copy()
    diff = np.flatnonzero(ta != tb)
    if diff.size:
        code = la[diff].astype(np.uint64) << np.uint64(32) | lb[diff].astype(np.uint64)
        uniq, back = np.unique(code, return_inverse=True)
        ua, ub = (uniq >> np.uint64(32)).astype(np.int64), (uniq & np.uint64(0xFFFFFFFF)).astype(np.int64)
        inter[diff] = intersections(keys, sizes, ua, ub)[back]
    union = sizes[la] + sizes[lb] - inter
    same = ta == tb
    inter[same], union[same] = np.maximum(sizes[la][same], 1), np.maximum(sizes[la][same], 1)
    return inter, union


def _ratio(i: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.divide(i, u, out=np.zeros(i.size), where=u > 0)


def verify(src: TableTexts, fields: dict[str, _Field], cand: np.ndarray, cfg: NearDupConfig) -> dict[str, np.ndarray]:
    """Exact Jaccard per candidate: whole pair (tagged union of `fields`) and each answer field."""
    over = {name: field_overlap(src, f, cand, cfg) for name, f in fields.items()}
    out = {"whole": _ratio(sum(over[f][0] for f in cfg.fields), sum(over[f][1] for f in cfg.fields))}
    for name in ANSWER_FIELDS:
        if name in over:
            out[name] = _ratio(*over[name])
    return out


# -- greedy decisions ---------------------------------------------------------------------------------------
def greedy(edges: np.ndarray, n: int) -> np.ndarray:
    """Representative per row (-1 = kept): in input order, a row is dropped against the first *kept* earlier row
    it is verified similar to; rows dropped never represent anyone, so there are no chains."""
    rep = np.full(n, -1, np.int64)
    if edges.size == 0:
        return rep
    order = np.lexsort((edges[:, 0], edges[:, 1]))
    a, b = edges[order, 0].tolist(), edges[order, 1].tolist()
    dropped = bytearray(n)
    for x, y in zip(a, b, strict=True):  # a < b, sorted by b: every edge into a is settled before a is read
        if not dropped[y] and not dropped[x]:
            dropped[y] = 1
            rep[y] = x
    return rep


def find_duplicates(src: TableTexts, cfg: NearDupConfig) -> tuple[np.ndarray, dict]:
    """(representative row per row, -1 where kept; stats) for the rows of `src`."""
    names = list(dict.fromkeys(cfg.fields + (ANSWER_FIELDS if cfg.min_answer_jaccard > 0 else ())))
    fields = {name: _Field(src, name) for name in names}
    cand, stats = candidates(src, fields, cfg)
    sim = verify(src, fields, cand, cfg) if len(cand) else {"whole": np.zeros(0)}
    similar = sim["whole"] >= cfg.threshold
    ok = similar.copy()
    if cfg.min_answer_jaccard > 0:
        for name in ANSWER_FIELDS:
            ok &= sim[name] >= cfg.min_answer_jaccard
    rep = greedy(cand[ok], src.n)
    stats.update(distinct_texts={name: int(f.first.size) for name, f in fields.items()},
                 candidates=int(len(cand)), verified_pairs=int(ok.sum()),
                 different_answers=int((similar & ~ok).sum()),
                 candidate_precision=float(ok.mean()) if len(cand) else None)
    return rep, stats


def decide(table: pa.Table, cfg: NearDupConfig) -> Decision:
    n = table.num_rows
    d = Decision.keep_all(n)
    if n == 0:
        return d
    rep, stats = find_duplicates(TableTexts(table), cfg)
    dup = rep >= 0
    d.mark(dup, "near_duplicate")
    ids = np.asarray(table.column("pair_id").to_numpy(zero_copy_only=False), dtype=object)
    d.duplicate_of = np.where(dup, ids[np.maximum(rep, 0)], None).astype(object)
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


def run(table: pa.Table, cfg: NearDupConfig) -> CheckResult:
    return apply(table, decide(table, cfg), RULE, cfg)

