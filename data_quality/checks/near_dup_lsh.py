"""near_dup's candidates: one-permutation MinHash per distinct text, LSH bands over both answers, buckets.

Signatures are computed per distinct text (or per distinct combination of a group's texts), densified by
rotation, folded into band keys; rows sharing a band key meet in a bucket, where each member is linked to the
first `bucket_links` members only (linear in the bucket). Every key is a function of a row's texts alone, so
any partition of the rows computes the keys the whole table would (the cluster executor relies on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .near_dup_sets import Field, distinct, mix32
from .text import mix64, sorted_unique, stable_argsort

if TYPE_CHECKING:  # annotations only: near_dup imports this module
    from .near_dup import NearDupConfig

_EMPTY32 = np.uint32(0xFFFFFFFF)
_DENSIFY_ROWS = 4096
_M = np.uint64(0x9E3779B97F4A7C15)


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
    if n > _DENSIFY_ROWS:  # a few thousand rows a pass: the scratch arrays stay in cache (2x faster)
        return np.concatenate([densify(raw[lo:lo + _DENSIFY_ROWS]) for lo in range(0, n, _DENSIFY_ROWS)])
    empty = raw == _EMPTY32
    if not empty.any():
        return raw.astype(np.uint64)
    # Next non-empty column at or right of each column: a reversed running minimum of the non-empty columns'
    # indices; past the row's last one, the circle wraps to its first non-empty column, k further on (3k where
    # a row has none).
    idx = np.int16 if 3 * k < 2**15 else np.int64  # narrow indices: this pass is memory-bound
    ar = np.arange(k, dtype=idx)
    nxt = np.minimum.accumulate(np.where(empty, idx(2 * k), ar)[:, ::-1], axis=1)[:, ::-1]
    nxt = np.where(nxt == 2 * k, nxt[:, :1] + idx(k), nxt)
    found = nxt < 2 * k  # a native bin finds itself at distance 0, keeping its value
    moved = np.take_along_axis(raw, np.where(found, nxt, 0) % k, axis=1).astype(np.uint64)
    moved += (nxt - ar).astype(np.uint64) << np.uint64(32)
    return np.where(found, moved, np.uint64(_EMPTY32))


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
    order = stable_argsort(key)  # stable: members of a bucket stay in row order
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
    code = np.zeros(0, np.uint64)
    for b in range(info["bands"]):  # the union grows band by band: most pairs recur in many bands
        code = sorted_unique(np.concatenate([code, band_codes(band_key(parts, b, n), ids, n, cfg.bucket_links)]))
    return decode_pairs(code, n), info
