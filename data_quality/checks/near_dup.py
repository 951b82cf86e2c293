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

from collections.abc import Callable, Sequence
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


# -- shingles and signatures, once per distinct text -------------------------------------------------------
_TAGS = {"prompt_text": 0x51ED27D3A8F3C1B5, "chosen": 0x2545F4914F6CDD1D, "rejected": 0x9E6C63D0676A9A99}
_LOW32 = np.uint64(0xFFFFFFFF)


def mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 finaliser on uint32 (wrapping on purpose): a seeded permutation of shingle hashes."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


class Field:
    """One field's distinct texts (first row of each, each row's distinct id, each text's 64-bit identity) and
    their shingle sets: sorted unique 32-bit hashes (tagged by field), back to back. Each distinct text is
    tokenised exactly once. A Field can also be cut to some rows (`take`) and put back together from such
    pieces (`concat`, texts made one by their identity): how the cluster executor moves only the shingles a
    verification needs between workers."""

    def __init__(self, src: TableTexts, name: str, cfg: NearDupConfig) -> None:
        h = src.hashes(name)
        first, inv = distinct(h)
        values, sizes = [], np.zeros(first.size, np.int64)
        tag = np.uint64(_TAGS[name])
        for lo in range(0, first.size, cfg.chunk_rows):
            sel = first[lo:lo + cfg.chunk_rows]
            sh, row = shingles(*tokens(src.texts(name, sel)), cfg.ngram)
            key = sorted_unique((row.astype(np.uint64) << np.uint64(32)) | (mix64(sh ^ tag) >> np.uint64(32)))
            sizes[lo:lo + sel.size] = np.bincount((key >> np.uint64(32)).astype(np.int64), minlength=sel.size)
            values.append((key & _LOW32).astype(np.uint32))
        self._set(name, h[first], first, inv, np.concatenate(values) if values else np.zeros(0, np.uint32), sizes)

    def _set(self, name: str, text_hash: np.ndarray, first: np.ndarray, inv: np.ndarray, values: np.ndarray,
             sizes: np.ndarray) -> None:
        self.name, self.text_hash, self.first, self.inv = name, text_hash, first, inv
        self.values, self.sizes = values, sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])

    @classmethod
    def of(cls, name: str, text_hash: np.ndarray, inv: np.ndarray, values: np.ndarray, sizes: np.ndarray) -> Field:
        """A Field from its parts; distinct ids must follow first appearance in `inv` (as `distinct` numbers them)."""
        f = cls.__new__(cls)
        first = np.full(text_hash.size, inv.size, np.int64)
        np.minimum.at(first, inv, np.arange(inv.size))
        f._set(name, text_hash, first, inv, values, sizes)
        return f

    def take(self, rows: np.ndarray) -> Field:
        """The Field of these rows only (their texts' shingles, nothing else)."""
        first, inv = distinct(self.inv[rows])
        texts = self.inv[rows][first]
        return Field.of(self.name, self.text_hash[texts], inv, self.gather(texts)[0], self.sizes[texts])

    @staticmethod
    def concat(parts: Sequence[Field]) -> Field:
        """Rows of the parts one after another; a text in several parts (same identity) becomes one text."""
        h = np.concatenate([p.text_hash for p in parts])
        whole = Field.of(parts[0].name, h, np.arange(h.size), np.concatenate([p.values for p in parts]),
                         np.concatenate([p.sizes for p in parts]))
        first, same = distinct(h)
        base = np.cumsum([0] + [p.text_hash.size for p in parts])[:-1]
        rows = np.concatenate([p.inv + b for p, b in zip(parts, base, strict=True)])
        return whole.take(first[same[rows]])

    def gather(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values of the texts `ids` back to back, text position per value)."""
        ln = self.sizes[ids]
        pos = np.repeat(np.arange(ids.size), ln)
        return self.values[np.repeat(self.offsets[ids] - (np.cumsum(ln) - ln), ln) + np.arange(int(ln.sum()))], pos


def raw_signatures(fields: Sequence[Field], ids: Sequence[np.ndarray], cfg: NearDupConfig) -> np.ndarray:
    """(m, num_perm) uint32 one-permutation MinHash bins of the union of the given texts of each field
    (row j: text ids[f][j] of every field f), _EMPTY32 where a bin got no shingle."""
    k, m = cfg.num_perm, ids[0].size
    sig = np.full(m * k, _EMPTY32, dtype=np.uint32)
    seed = np.uint32(cfg.seed * 0x9E3779B9 % 2**32)
    for f, sel in zip(fields, ids, strict=True):
        vals, pos = f.gather(sel)
        x = mix32(vals ^ seed)
        bins = ((x.astype(np.uint64) * np.uint64(k)) >> np.uint64(32)).astype(np.int64)
        np.minimum.at(sig, pos * k + bins, np.minimum(x, np.uint32(0xFFFFFFFE)))
    return sig.reshape(m, k)


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


def _group_keys(fields: dict[str, Field], group: tuple[str, ...], n: int, cfg: NearDupConfig,
                bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(keys, index): band keys (uint32, one row per signed unit) and the key row of every pair row.

    A one-field group is signed per distinct text; a union of fields per distinct combination of its texts.
    """
    if len(group) == 1:
        index = fields[group[0]].inv
        units = np.arange(fields[group[0]].first.size)
        text_ids = [units]
    else:
        combo = np.zeros(n, np.uint64)
        for name in group:
            combo = mix64(combo ^ fields[name].inv.astype(np.uint64) * _M)
        rep_rows, index = distinct(combo)
        text_ids = [fields[name].inv[rep_rows] for name in group]
    m = text_ids[0].size
    keys = np.empty((m, bands), np.uint32)
    for lo in range(0, m, cfg.chunk_rows):
        raw = raw_signatures([fields[g] for g in group], [t[lo:lo + cfg.chunk_rows] for t in text_ids], cfg)
        keys[lo:lo + raw.shape[0]] = band_keys(densify(raw), bands, rows).astype(np.uint32)
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


def group_keys(fields: dict[str, Field], n: int, cfg: NearDupConfig) -> tuple[list, dict]:
    """Band keys of every band signature (see `_group_keys`), and how the bands were chosen."""
    groups, bands, rows, info = band_plan(cfg)
    return [_group_keys(fields, g, n, cfg, bands, rows) for g in groups], info


def band_plan(cfg: NearDupConfig) -> tuple[list[tuple[str, ...]], int, int, dict]:
    groups = band_groups(cfg)
    bands, rows = choose_bands(cfg.threshold, cfg.num_perm, cfg.target_recall, len(groups))
    return groups, bands, rows, {"bands": bands, "rows_per_band": rows,
                                 "band_signatures": ["+".join(g) for g in groups]}


def band_key(parts: list, b: int, n: int) -> np.ndarray:
    """uint64 key of band `b` for every row: a function of the row's texts only, so any partition of the rows
    computes the same key for a row as the whole table does."""
    key = np.zeros(n, np.uint64)
    for keys, index in parts:
        key = mix64(key ^ keys[index, b].astype(np.uint64))
    return key


def band_codes(key: np.ndarray, ids: np.ndarray, n: int, links: int) -> np.ndarray:
    """Sorted unique codes a * n + b of the candidate pairs (ids a < b) one band's buckets give; `ids` ascending
    (bucket members are taken in id order) and holding every member of each bucket present in `key`."""
    pairs = bucket_pairs(key, links)
    return sorted_unique(ids[pairs[:, 0]].astype(np.uint64) * np.uint64(n) + ids[pairs[:, 1]].astype(np.uint64))


def decode_pairs(code: np.ndarray, n: int) -> np.ndarray:
    return np.stack([(code // np.uint64(n)).astype(np.int64), (code % np.uint64(n)).astype(np.int64)], axis=1)


def candidates(fields: dict[str, Field], n: int, cfg: NearDupConfig) -> tuple[np.ndarray, dict]:
    parts, info = group_keys(fields, n, cfg)
    ids = np.arange(n)
    codes = [band_codes(band_key(parts, b, n), ids, n, cfg.bucket_links) for b in range(info["bands"])]
    code = sorted_unique(np.concatenate(codes)) if codes else np.zeros(0, np.uint64)
    return decode_pairs(code, n), info


# -- exact verification -------------------------------------------------------------------------------------
def intersections(f: Field, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|S_a & S_b| for text ids a, b: each value of the smaller set is looked up in the larger one (only the
    larger sets of the batch are laid out as one sorted key array; no per-pair merge sort)."""
    if a.size == 0:
        return np.zeros(0, np.int64)
    small = np.where(f.sizes[a] <= f.sizes[b], a, b)
    large = np.where(f.sizes[a] <= f.sizes[b], b, a)
    lg = sorted_unique(large)
    lv, lpos = f.gather(lg)
    keys = (lpos.astype(np.uint64) << np.uint64(32)) | lv  # sorted: by text, values sorted within a text
    sv, spos = f.gather(small)
    query = (np.searchsorted(lg, large)[spos].astype(np.uint64) << np.uint64(32)) | sv
    at = np.minimum(np.searchsorted(keys, query), max(keys.size - 1, 0))
    hit = keys[at] == query if keys.size else np.zeros(query.size, bool)
    return np.bincount(spos[hit], minlength=a.size)


def field_overlap(f: Field, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intersection, union) of the field's shingle sets for pairs of rows, computed once per text pair.

    Identical texts need no lookup. Two different texts without shingles (emoji-only answers) have union 0
    and intersection 0: they are not called similar.
    """
    ta, tb = f.inv[pairs[:, 0]], f.inv[pairs[:, 1]]
    inter = f.sizes[ta].copy()
    diff = np.flatnonzero(ta != tb)
    if diff.size:
        code = ta[diff].astype(np.uint64) << np.uint64(32) | tb[diff].astype(np.uint64)
        uniq, back = np.unique(code, return_inverse=True)
        ua, ub = (uniq >> np.uint64(32)).astype(np.int64), (uniq & _LOW32).astype(np.int64)
        inter[diff] = intersections(f, ua, ub)[back]
    union = f.sizes[ta] + f.sizes[tb] - inter
    same = ta == tb
    inter[same] = union[same] = np.maximum(f.sizes[ta][same], 1)
    return inter, union


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


def find_duplicates(src: TableTexts, cfg: NearDupConfig) -> tuple[np.ndarray, dict]:
    """(representative row per row, -1 where kept; stats) for the rows of `src`."""
    fields = {name: Field(src, name, cfg) for name in field_names(cfg)}
    cand, stats = candidates(fields, src.n, cfg)
    rep, gstats = greedy(cand, src.n, lambda pairs: check_pairs(fields, pairs, cfg))
    return rep, summary(stats, {name: int(f.first.size) for name, f in fields.items()}, len(cand), gstats)


def summary(stats: dict, distinct_texts: dict[str, int], n_cand: int, gstats: dict) -> dict:
    stats.update(distinct_texts=distinct_texts, candidates=int(n_cand), **gstats,
                 candidate_precision=gstats["verified_pairs"] / gstats["checked_pairs"]
                 if gstats["checked_pairs"] else None)
    return stats


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

