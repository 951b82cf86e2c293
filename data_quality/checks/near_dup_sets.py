"""near_dup's shingle stores: per field, each distinct text's shingle set once, and exact set overlaps.

A `Field` keeps the sorted unique 32-bit shingle hashes of every distinct text of one column back to back
(texts are told apart by a 64-bit hash of their content). Overlaps of candidate pairs are counted per distinct
text pair (a sorted lookup of the smaller set's values in the larger one's), never per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pyarrow as pa

from data_quality.spill import PAGES, ArrayStore

from .text import mix64, shingles, sorted_unique, stable_argsort, tokens

if TYPE_CHECKING:  # annotations only: near_dup imports this module
    from .near_dup import NearDupConfig, TableTexts


def text_hashes(s: pl.Series) -> np.ndarray:
    """64-bit identity of each text (equal texts, equal hashes), the key distinct texts are grouped by."""
    return s.fill_null("").hash(0x7E57).to_numpy()


def column_hashes(col: pa.ChunkedArray | pa.Array, chunk: int = 50_000) -> np.ndarray:
    """`text_hashes` of a column, a chunk at a time: a whole column as a Polars Series would copy its text (the
    table may be a mapped stage). Hashing reads a mapped stage faster than the page returner's tick (seen at 2M
    rows: 0.8 GB of file pages within 0.1 s, the run's peak), so the pages go back after every chunk."""
    out = []
    for lo in range(0, max(len(col), 1), chunk):
        out.append(text_hashes(pl.Series(col.slice(lo, chunk))))
        PAGES.release()
    return np.concatenate(out)


def distinct(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each distinct value, inverse: the distinct index of every row), by one stable sort."""
    order = stable_argsort(h)
    hs = h[order]
    new = np.concatenate([[True], hs[1:] != hs[:-1]]) if h.size else np.zeros(0, bool)
    inv = np.empty(h.size, np.int64)
    inv[order] = np.cumsum(new) - 1
    first = order[new]
    # Number distinct texts by first appearance so the ids, like the rows, follow input order.
    rank = stable_argsort(first)
    relabel = np.empty_like(rank)
    relabel[rank] = np.arange(rank.size)
    return first[rank], relabel[inv]


# -- shingles and signatures, once per distinct text -------------------------------------------------------
_TAGS = {"prompt_text": 0x51ED27D3A8F3C1B5, "chosen": 0x2545F4914F6CDD1D, "rejected": 0x9E6C63D0676A9A99}
_LOW32 = np.uint64(0xFFFFFFFF)


def tagged(sh: np.ndarray, name: str) -> np.ndarray:
    """The 32-bit value a shingle hash has in the store of field `name` (fields tagged apart)."""
    return (mix64(sh ^ np.uint64(_TAGS[name])) >> np.uint64(32)).astype(np.uint32)


def shingle_sets(sh: np.ndarray, row: np.ndarray, n_texts: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values, sizes) from `shingles` of `n_texts` texts: each text's sorted unique 32-bit shingle hashes,
    tagged by field, back to back, and how many each text has."""
    return sets_of(row, tagged(sh, name), n_texts)


def sets_of(text: np.ndarray, values: np.ndarray, n_texts: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, sizes): the sorted unique `values` of each of `n_texts` texts (`text`: the text of each value)."""
    key = sorted_unique((text.astype(np.uint64) << np.uint64(32)) | values.astype(np.uint64))
    sizes = np.bincount((key >> np.uint64(32)).astype(np.int64), minlength=n_texts)
    return (key & _LOW32).astype(np.uint32), sizes


def segments(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Positions of the segments [start, start + length) one after another: how a store's texts are gathered."""
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))


def in_text_order(row: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`values` of `shingles` output grouped by text: `shingles` gives the whole shingles in text order, then
    one shingle per text shorter than k (also in order); those are merged in, in one pass, not sorted."""
    down = np.flatnonzero(row[1:] < row[:-1])
    if not down.size:
        return values
    cut = int(down[0]) + 1
    return np.insert(values[:cut], np.searchsorted(row[:cut], row[cut:]), values[cut:])


class ShingleCache:
    """Shingles of texts an earlier check already tokenised, kept for near_dup by text identity.

    decontam reads the same fields as near_dup and tokenises them the same way (checks.text.tokens); tokenising
    is most of either check's time. With a cache, decontam adds each distinct text's near-dup shingles as it
    goes (unsorted: signatures do not need sets) and near_dup takes them instead of tokenising again, then
    sorts exact sets for its candidates' texts only (`Field.exact_for`). Only the fields near_dup bands are kept (it
    shingles every text of those; a field it only verifies, just the candidates' texts). Only the in-memory
    executor shares one: it runs both checks over the whole table in one process. near_dup takes a field's
    shingles once, which frees them.
    """

    def __init__(self, ngram: int, fields: Sequence[str]) -> None:
        self.ngram, self.fields = ngram, frozenset(fields) & set(_TAGS)
        self._parts: dict[str, tuple[list[np.ndarray], list[np.ndarray], ArrayStore]] = {}

    def wants(self, name: str) -> bool:
        return name in self.fields

    def add(self, name: str, text_hash: np.ndarray, sh: np.ndarray, row: np.ndarray) -> None:
        """The `ngram`-shingles (checks.text.shingles) of the texts with these identities."""
        if name in self.fields:
            hashes, sizes, values = self._parts.setdefault(name, ([], [], ArrayStore(np.uint32)))
            hashes.append(text_hash)
            sizes.append(np.bincount(row, minlength=text_hash.size))
            values.append(in_text_order(row, tagged(sh, name)))

    def take(self, name: str, text_hash: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(values, sizes) of the texts `text_hash`, in that order, if the cache holds all of them; the field's
        shingles leave the cache either way."""
        if name not in self._parts:
            return None
        hashes, parts, store = self._parts.pop(name)
        h, sizes, values = np.concatenate(hashes), np.concatenate(parts), store.finish()
        order = stable_argsort(h)
        at = order[np.minimum(np.searchsorted(h, text_hash, sorter=order), max(h.size - 1, 0))]
        if not h.size or not np.array_equal(h[at], text_hash):
            return None
        if np.array_equal(at, np.arange(h.size)):  # the same texts in the same order: no copy
            return values, sizes
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        return values[segments(offsets[at], sizes[at])], sizes[at]


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

    def __init__(self, src: TableTexts, name: str, cfg: NearDupConfig, rows: np.ndarray | None = None,
                 cache: ShingleCache | None = None) -> None:
        """`rows`: only these rows' texts get shingles (the others keep an empty set and must not be looked up),
        for a field that only verifies candidates and is not banded. `cache`: shingles an earlier check of the
        run made from the same tokens, used when it holds every text needed (else the texts are tokenised); the
        Field is then raw, not `exact` until `exact_for`."""
        h = src.hashes(name)
        first, inv = distinct(h)
        ids = np.arange(first.size)
        if rows is not None:
            need = np.zeros(first.size, bool)
            need[inv[rows]] = True
            ids = ids[need]
        known = cache.take(name, h[first[ids]]) if cache is not None and cache.ngram == cfg.ngram else None
        if known is not None:  # every text was tokenised by an earlier check of this run (not yet as sets)
            values_of, sizes = known
            full = np.zeros(first.size, np.int64)
            full[ids] = sizes
            self._set(name, h[first], first, inv, values_of, full, exact=False)
            return
        # The store of every distinct text's shingles is the check's largest array (~1 KB a text): out of core
        # it lives in a spill file, read back memory-mapped (data_quality.spill.ArrayStore).
        values, sizes = ArrayStore(np.uint32), np.zeros(first.size, np.int64)
        for lo in range(0, ids.size, cfg.chunk_rows):
            part = ids[lo:lo + cfg.chunk_rows]  # ascending: values stay in text-id order
            v, sizes[part] = shingle_sets(*shingles(*tokens(src.texts(name, first[part])), cfg.ngram), part.size, name)
            values.append(v)
        self._set(name, h[first], first, inv, values.finish(), sizes)

    def _set(self, name: str, text_hash: np.ndarray, first: np.ndarray, inv: np.ndarray, values: np.ndarray,
             sizes: np.ndarray, exact: bool = True) -> None:
        self.name, self.text_hash, self.first, self.inv = name, text_hash, first, inv
        self.values, self.sizes = values, sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        # False: each text's shingles as they came (repeats, any order), enough for signatures; overlaps need
        # the sets of `exact_for`.
        self.exact = exact

    def exact_for(self, rows: np.ndarray, chunk: int = 20_000) -> Field:
        """This Field with the sets of the texts of `rows` (the others empty: not to be looked up)."""
        if self.exact:
            return self
        ids = sorted_unique(self.inv[rows]) if rows.size else np.zeros(0, np.int64)
        values, sizes = ArrayStore(np.uint32), np.zeros(self.sizes.size, np.int64)
        for lo in range(0, ids.size, chunk):
            part = ids[lo:lo + chunk]
            v, pos = self.gather(part)
            v, sizes[part] = sets_of(pos, v, part.size)
            values.append(v)
        f = Field.__new__(Field)
        f._set(self.name, self.text_hash, self.first, self.inv, values.finish(), sizes)
        return f

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
        if not self.exact:
            raise ValueError(f"near_dup field {self.name}: take() needs the exact sets (exact_for)")
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
        return self.values[segments(self.offsets[ids], ln)], np.repeat(np.arange(ids.size), ln)


# -- exact overlaps ----------------------------------------------------------------------------------------
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
    if not f.exact:
        raise ValueError(f"near_dup field {f.name}: overlaps need the exact sets (exact_for)")
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
