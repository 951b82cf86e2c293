"""The functions the cluster gate (data_quality.cluster) sends to its workers: each runs on one partition or
one shuffle piece, takes and returns Arrow tables or NumPy arrays, and holds no state between calls.

Kept apart from the driver's orchestration so each module reads in one sitting; the checks' logic stays in the
checks (near_dup, repeated_answer, length_bias): these only cut, tag and route their inputs and outputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_quality import engine
from data_quality.checks import length_bias, near_dup, repeated_answer
from data_quality.checks.base import CheckResult, Decision, apply
from data_quality.checks.text import sorted_unique
from data_quality.engine import POS, PhaseOutput
from storage.schema import REJECTS_SCHEMA, conform


def ranges(n: int, k: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, max(1, min(k, n)) + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def with_pos(t: pa.Table, start: int) -> pa.Table:
    return conform(t).append_column(POS, pa.array(np.arange(start, start + t.num_rows, dtype=np.int64)))


def read_range(path: str, lo: int, hi: int) -> pa.Table:
    """Rows [lo, hi) of a Parquet file, reading only the row groups that hold them."""
    f = pq.ParquetFile(path, pre_buffer=False)
    parts, start = [], 0
    for g in range(f.metadata.num_row_groups):
        m = f.metadata.row_group(g).num_rows
        if start < hi and start + m > lo:
            t = f.read_row_group(g)
            parts.append(t.slice(max(lo - start, 0), min(hi, start + m) - max(lo, start)))
        start += m
    return with_pos(pa.concat_tables(parts) if parts else f.schema_arrow.empty_table(), lo)


def write_ipc(t: pa.Table, path: str) -> str:
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, t.schema) as w:
        w.write_table(t)
    return path


def positions(t: pa.Table) -> np.ndarray:
    return t.column(POS).to_numpy()


def step_rejects(o: PhaseOutput, name: str) -> pa.Table:
    return conform(o.rejects[name], REJECTS_SCHEMA)


def conformed_rejects(out: tuple[pa.Table, pa.Table, np.ndarray]) -> pa.Table:
    return conform(out[1], REJECTS_SCHEMA)


def split_by_prompt(t: pa.Table, k: int) -> list[pa.Table]:
    sid = engine.shard_ids(t.column("prompt_id"), k)
    return [t.take(pa.array(np.flatnonzero(sid == i))) for i in range(k)]


def concat_by_pos(*tables: pa.Table) -> pa.Table:
    t = pa.concat_tables(tables, promote_options="permissive")
    return t.take(pc.sort_indices(t.column(POS)))


def column_at(t: pa.Table, rows: np.ndarray, name: str) -> tuple[np.ndarray, list[Any]]:
    """Values of one column at the given input positions (pair ids, the few texts statistics quote)."""
    return rows, t.column(name).take(pa.array(np.searchsorted(positions(t), rows))).to_pylist()


def apply_rows(t: pa.Table, drop_pos: np.ndarray, other_pos: np.ndarray, reason: str, rule: str, cfg: Any,
                *lookups: tuple[np.ndarray, np.ndarray]) -> tuple[pa.Table, pa.Table, np.ndarray]:
    pos = positions(t)
    idx = np.searchsorted(pos, drop_pos)
    d = Decision.keep_all(t.num_rows)
    d.mark(np.isin(np.arange(t.num_rows), idx), reason)
    d.duplicate_of = np.full(t.num_rows, None, dtype=object)
    if idx.size:
        lp = np.concatenate([lk[0] for lk in lookups])
        ids = np.array([i for lk in lookups for i in lk[1]], dtype=object)
        order = np.argsort(lp, kind="stable")
        d.duplicate_of[idx] = ids[order][np.searchsorted(lp[order], other_pos)]
    res: CheckResult = apply(t, d, rule, cfg)
    return res.kept, res.rejects, pos[idx]


def answer_pieces(t: pa.Table, k: int) -> list[tuple[pl.DataFrame, pl.DataFrame]]:
    return repeated_answer.bucket_frames(t, positions(t), k)


def nd_prepare(t: pa.Table, cfg: Any) -> dict[str, Any]:
    src = near_dup.TableTexts(t)
    return {"pos": positions(t), "source": pl.Series(t.column("source")).hash(0).to_numpy(),
            "fields": {name: near_dup.Field(src, name, cfg) for name in near_dup.field_names(cfg)}}


def nd_key_pieces(prep: dict[str, Any], cfg: Any, k: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(band, key, position) of every row and band, split by key into k pieces: a bucket lands in one piece."""
    pos = prep["pos"]
    parts, info = near_dup.group_keys(prep["fields"], pos.size, cfg)
    key = np.concatenate([near_dup.band_key(parts, b, pos.size) for b in range(info["bands"])])
    band, ids = np.repeat(np.arange(info["bands"], dtype=np.int16), pos.size), np.tile(pos, info["bands"])
    dest = key % np.uint64(k)
    return [(band[dest == i], key[dest == i], ids[dest == i]) for i in range(k)]


def nd_bucket(space: int, links: int, *pieces: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Candidate codes of the buckets whose keys hash here, band by band, members in position order."""
    band, key, ids = (np.concatenate(c) for c in zip(*pieces, strict=True))
    order = np.lexsort((ids, band))
    band, key, ids = band[order], key[order], ids[order]
    cuts = np.flatnonzero(np.diff(band)) + 1
    codes = [near_dup.band_codes(k_, i_, space, links) for k_, i_ in zip(np.split(key, cuts), np.split(ids, cuts),
                                                                         strict=True) if k_.size]
    return sorted_unique(np.concatenate(codes)) if codes else np.zeros(0, np.uint64)


def nd_export(prep: dict[str, Any], rows: np.ndarray) -> tuple[np.ndarray, dict[str, near_dup.Field]]:
    local = np.searchsorted(prep["pos"], rows)
    return rows, {name: f.take(local) for name, f in prep["fields"].items()}


def nd_verify(pairs: np.ndarray, cfg: Any, *exports: tuple[np.ndarray, dict[str, near_dup.Field]]
               ) -> tuple[np.ndarray, np.ndarray]:
    rows = np.concatenate([e[0] for e in exports])
    fields = {name: near_dup.Field.concat([e[1][name] for e in exports]) for name in exports[0][1]}
    order = np.argsort(rows, kind="stable")
    return near_dup.check_pairs(fields, order[np.searchsorted(rows[order], pairs)], cfg)


def nd_meta(prep: dict[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    return {name: f.text_hash for name, f in prep["fields"].items()}, prep["source"]


def lb_features(t: pa.Table, cfg: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return positions(t), length_bias.features(t, cfg)


def lb_apply(t: pa.Table, weights: np.ndarray, keep: np.ndarray, cfg: Any) -> tuple[pa.Table, pa.Table, np.ndarray]:
    res = length_bias.apply_weights(t, weights, keep, {}, cfg)
    drop = ~keep if cfg.mode != "stats" else np.zeros(keep.size, bool)
    return res.kept, res.rejects, positions(t)[drop]
