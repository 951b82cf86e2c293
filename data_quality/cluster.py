"""The whole gate on a Dask cluster: rows live in partitions on the workers, never in one process.

Workers read row ranges of the snapshot's Parquet file (rows tagged with their input position POS) and keep them
as Arrow tables. Row-local checks run on each partition where it lies; prompt-local ones after a shuffle by
prompt-id hash (engine.shard_ids); global checks run the check's own functions in stages:
- repeated_answer: answer-hash frames shuffled by hash, each answer's group decided in one task;
- near_dup: per partition the shingle sets (`near_dup.Field`) and band keys; (band, key, POS) shuffled by key
  into buckets give candidate pairs as integer codes; `near_dup.greedy` runs on the driver and verifies each
  round's pairs on the workers from just those rows' shingle sets (`Field.take`, `Field.concat`, `check_pairs`);
- length_bias: row features per partition, fitted on the driver in POS order (the same floats in the same order
  as one process), each partition applying its slice of the weights.
The driver holds integers per row (positions, owners, candidate codes), length_bias's numeric columns and model
names, the pair ids named in `duplicate_of` and the few answers the statistics quote: never the table's text.
Kept rows come back as Arrow files it reads memory-mapped; rejects are gathered. The result equals the
in-memory run's: same kept table and content hash, rejects and statistics.
"""

from __future__ import annotations

import logging
import operator
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_quality import cluster_tasks as tasks
from data_quality import engine
from data_quality.checks import length_bias, near_dup, repeated_answer
from data_quality.checks.text import sorted_unique
from data_quality.engine import POS, EngineConfig, GateResult, Step
from data_quality.spill import Spill
from storage.schema import REJECTS_SCHEMA

_MERGE_BATCH = 8_192  # kept rows copied per step of the final in-order merge
_VERIFY_BATCH = 50_000  # candidate pairs per verification task (near_dup.check_pairs' own batch)


@contextmanager
def connect(cfg: EngineConfig) -> Iterator[Any]:
    """A client of the scheduler at `cfg.address`, or of a local cluster started (and closed) here."""
    from dask.distributed import Client, LocalCluster

    if cfg.address:
        with Client(cfg.address) as client:
            yield client
        return
    with LocalCluster(n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker, processes=cfg.processes,
                      dashboard_address=":0", worker_dashboard_address=":0", silence_logs=logging.ERROR) as lc, \
            Client(lc) as client:
        yield client


def run_cluster(source: pa.Table | str | Path, steps: Sequence[Step], config: dict[str, Any],
                cfg: EngineConfig) -> GateResult:
    # The kept partitions come back as Arrow files the driver reads memory-mapped (evictable pages, not its
    # heap): a folder the workers can write, here for a local cluster, `spill_dir` (shared) for a remote one.
    with connect(cfg) as client, tempfile.TemporaryDirectory(prefix="dpo-cluster-", dir=cfg.spill_dir) as tmp:
        spill = Path(tmp) if cfg.address is None or cfg.spill_dir else None
        return Gate(client, config, cfg, spill).run(source, steps)


class Gate:
    """One run's driver: futures of the partitions, and the phases in order."""

    def __init__(self, client: Any, config: dict[str, Any], cfg: EngineConfig, spill: Path | None = None) -> None:
        self.client, self.config, self.spill = client, config, spill
        self.spill_stage = Spill(spill or Path("."))  # names the files under `spill`
        self.threads = max(1, sum(client.nthreads().values()))
        self.n_parts = cfg.partitions or 2 * self.threads

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args, pure=False)

    def run(self, source: pa.Table | str | Path, steps: Sequence[Step]) -> GateResult:
        parts, n_in = self.load(source)
        by_name = {s.name: s for s in steps}
        rejects: list[pa.Table] = []
        per_check: dict[str, dict[str, Any]] = {}
        for phase in engine.plan(steps):
            local = [by_name[n] for n in phase.names]
            if phase.sharded:
                if any(s.scope == "prompt" for s in local):  # rows of a prompt must meet: shuffle by prompt
                    parts = self.shuffle(parts, tasks.split_by_prompt)
                outs = [self.submit(engine.run_steps, p, local) for p in parts]
                parts = [self.submit(getattr, o, "kept") for o in outs]
                got = self.client.gather([self.submit(getattr, o, "stats") for o in outs])
                for n in phase.names:
                    rej = self.files([self.submit(tasks.step_rejects, o, n) for o in outs])
                    keys = [(k, "ascending") for k in ("source", "source_row", "pair_id")]  # as engine.sorted_rejects
                    rejects.append(self.ordered(rej, pc.sort_indices(pa.concat_tables(rej), sort_keys=keys)))
                    per_check[n] = engine.merge_stats([st[n] for st in got])
                continue
            for s in local:
                if s.name not in GLOBAL:
                    raise ValueError(f"gate check {s.name!r} is global and has no cluster form; run it with "
                                     "engine.executor = memory or out_of_core")
                t0 = time.perf_counter()
                parts, rej, st = GLOBAL[s.name](self, parts, self.config[s.name])
                rejects.append(rej)
                per_check[s.name] = {**st, "seconds": round(time.perf_counter() - t0, 4)}
        res = engine.finish(n_in, self.kept(parts), rejects, per_check, self.config, "cluster")
        res.stats["cluster"] = {"workers": len(self.client.nthreads()), "threads": self.threads,
                                "partitions": self.n_parts}
        return res

    def kept(self, parts: list[Any]) -> pa.Table:
        """The kept rows in input order."""
        files = self.files(parts)
        return self.ordered(files, np.argsort(np.concatenate([t.column(POS).to_numpy() for t in files]), kind="stable"))

    def files(self, futures: list[Any]) -> list[pa.Table]:
        """Tables on the workers as Arrow files the driver opens memory-mapped; gathered without a spill folder."""
        if self.spill is None:
            return self.client.gather(futures)
        paths = [str(self.spill_stage.path("part")) for _ in futures]
        return [Spill.open(Path(p)) for p in self.client.gather(
            [self.submit(tasks.write_ipc, f, p) for f, p in zip(futures, paths, strict=True)])]

    def ordered(self, tables: list[pa.Table], order: Any) -> pa.Table:
        """The rows of `tables` (one after another) in `order`; with a spill folder copied a batch at a time into
        one more file, so the driver's heap holds one batch, not the rows."""
        merged = pa.concat_tables(tables, promote_options="permissive")
        if self.spill is None:
            return merged.take(order)
        order = np.asarray(order)

        def batches() -> Iterator[pa.RecordBatch]:
            for lo in range(0, order.size, _MERGE_BATCH):
                yield from merged.take(pa.array(order[lo:lo + _MERGE_BATCH])).to_batches()
                pa.default_memory_pool().release_unused()  # else the allocator keeps every batch's pages
        return self.spill_stage.open(self.spill_stage.write("ordered", batches(), merged.schema))

    def load(self, source: pa.Table | str | Path) -> tuple[list[Any], int]:
        """Row ranges as partitions; the workers read a Parquet file themselves (it must be reachable there)."""
        if isinstance(source, pa.Table):
            n = source.num_rows
            bounds = tasks.ranges(n, self.n_parts)
            tables = [tasks.with_pos(source.slice(lo, hi - lo), lo) for lo, hi in bounds]
            return self.client.scatter(tables), n
        path = str(Path(source).resolve())
        n = pq.ParquetFile(path).metadata.num_rows
        return [self.submit(tasks.read_range, path, lo, hi) for lo, hi in tasks.ranges(n, self.n_parts)], n

    def shuffle(self, parts: list[Any], split: Callable[[pa.Table, int], list[pa.Table]]) -> list[Any]:
        """All-to-all: piece k of every partition goes to new partition k (rows in input order again)."""
        pieces = [self.submit(split, p, self.n_parts) for p in parts]
        return [self.submit(tasks.concat_by_pos, *[self.submit(operator.getitem, pc_, k) for pc_ in pieces])
                for k in range(self.n_parts)]

    def positions(self, parts: list[Any]) -> list[np.ndarray]:
        return self.client.gather([self.submit(tasks.positions, p) for p in parts])

    def apply_rows(self, parts: list[Any], pos: list[np.ndarray], drop_pos: np.ndarray, other_pos: np.ndarray,
                   reason: str, rule: str, cfg: Any) -> tuple[list[Any], pa.Table, int]:
        """Drop the rows at `drop_pos` (sorted), each naming the pair id of the row at `other_pos`; the pair ids
        are looked up in the partitions that own those rows, worker to worker."""
        owner = Owners(pos).of(other_pos)
        lookups = {p: self.submit(tasks.column_at, parts[p], np.unique(other_pos[owner == p]), "pair_id")
                   for p in np.unique(owner)}
        outs = []
        for q, part in enumerate(parts):
            mine = np.isin(drop_pos, pos[q])
            need = [lookups[p] for p in np.unique(owner[mine])]
            outs.append(self.submit(tasks.apply_rows, part, drop_pos[mine], other_pos[mine], reason, rule, cfg, *need))
        return self.collect(outs) + (int(drop_pos.size),)

    def collect(self, outs: list[Any]) -> tuple[list[Any], pa.Table]:
        """Kept partitions (left on the workers) and the rejects of a global step, in input order."""
        drop_pos = self.client.gather([self.submit(operator.itemgetter(2), o) for o in outs])
        rejects = self.files([self.submit(tasks.conformed_rejects, o) for o in outs])
        order = np.argsort(np.concatenate(drop_pos), kind="stable")
        return [self.submit(operator.itemgetter(0), o) for o in outs], self.ordered(rejects, order)


# -- global checks on the cluster ----------------------------------------------------------------------------
def _step_stats(n: int, stats: dict[str, Any], reason: str, dropped: int) -> dict[str, Any]:
    """What `base.apply` records for a step over the whole table."""
    return {"rows_in": n, **stats, "rows_out": n - dropped, "dropped": {reason: dropped} if dropped else {}}


def _config(cls: type, d: dict[str, Any]) -> Any:
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class Owners:
    """Which partition holds each input position (driver side: two integer arrays)."""

    def __init__(self, pos: list[np.ndarray]) -> None:
        allpos, label = np.concatenate(pos), np.repeat(np.arange(len(pos)), [p.size for p in pos])
        order = np.argsort(allpos, kind="stable")
        self.sorted, self.label = allpos[order], label[order]

    def of(self, rows: np.ndarray) -> np.ndarray:
        return self.label[np.searchsorted(self.sorted, rows)]


def repeated_answer_step(g: Gate, parts: list[Any], d: dict[str, Any]) -> tuple[list[Any], pa.Table, dict]:
    cfg = _config(repeated_answer.RepeatedAnswerConfig, d)
    pos = g.positions(parts)
    n = sum(p.size for p in pos)
    stats: dict[str, Any] = {}
    drop = np.zeros(0, np.int64), np.zeros(0, np.int64)
    if n:
        pieces = [g.submit(tasks.answer_pieces, p, g.n_parts) for p in parts]
        got = g.client.gather([g.submit(repeated_answer.decide_bucket, cfg, *[g.submit(operator.getitem, pc_, k)
                                                                               for pc_ in pieces])
                               for k in range(g.n_parts)])
        rows = pl.concat([b[0] for b in got]).sort("row")
        drop = rows.get_column("row").to_numpy(), rows.get_column("other").to_numpy()
        stats = {"chosen_repeated_rows": rows.height, "rejected_repeated_rows": sum(b[1] for b in got)}
        owners = Owners(pos)
        for i, side in ((2, "chosen"), (3, "rejected")):
            heads = repeated_answer.heads(pl.concat([b[i] for b in got]), cfg)
            top = heads.get_column("row").to_numpy()
            own = owners.of(top)
            texts: dict[int, str] = {}
            for r, t in g.client.gather([g.submit(tasks.column_at, parts[p], top[own == p], side)
                                         for p in np.unique(own)]):
                texts.update(zip(r.tolist(), t, strict=True))
            stats[f"top_{side}"] = repeated_answer.top_entries([texts[int(r)] for r in top], heads)
    reason = "chosen_repeated_across_prompts"
    parts, rej, k = g.apply_rows(parts, pos, *drop, reason, repeated_answer.RULE, cfg)
    return parts, rej, _step_stats(n, stats, reason, k)


def near_dup_step(g: Gate, parts: list[Any], d: dict[str, Any]) -> tuple[list[Any], pa.Table, dict]:
    cfg = _config(near_dup.NearDupConfig, d)
    pos = g.positions(parts)
    n = sum(p.size for p in pos)
    reason = "near_duplicate"
    if n == 0:
        return parts, REJECTS_SCHEMA.empty_table(), _step_stats(0, {}, reason, 0)
    preps = [g.submit(tasks.nd_prepare, p, cfg) for p in parts]
    space = int(max(int(p.max()) for p in pos if p.size)) + 1  # candidate codes a * space + b, by position
    pieces = [g.submit(tasks.nd_key_pieces, pr, cfg, g.n_parts) for pr in preps]
    codes = g.client.gather([g.submit(tasks.nd_bucket, space, cfg.bucket_links,
                                      *[g.submit(operator.getitem, pc_, k) for pc_ in pieces])
                             for k in range(g.n_parts)])
    present = np.sort(np.concatenate(pos))
    cand = np.searchsorted(present, near_dup.decode_pairs(sorted_unique(np.concatenate(codes)), space))
    owners = Owners(pos)

    def check(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Verify on the workers: each chunk joins just the shingle sets of its rows, exported by their owners."""
        at = present[pairs]
        size = max(1, min(_VERIFY_BATCH, -(-len(at) // g.threads)))
        futures = []
        for lo in range(0, len(at), size):
            chunk = at[lo:lo + size]
            rows = sorted_unique(chunk.ravel())
            own = owners.of(rows)
            exports = [g.submit(tasks.nd_export, preps[p], rows[own == p]) for p in np.unique(own)]
            futures.append(g.submit(tasks.nd_verify, chunk, cfg, *exports))
        got = g.client.gather(futures)
        return np.concatenate([x[0] for x in got]), np.concatenate([x[1] for x in got])

    rep, gstats = near_dup.greedy(cand, n, check)
    meta = g.client.gather([g.submit(tasks.nd_meta, pr) for pr in preps])
    distinct = {name: int(sorted_unique(np.concatenate([m[0][name] for m in meta])).size)
                for name in near_dup.field_names(cfg)}
    order = np.argsort(np.concatenate(pos), kind="stable")
    stats = near_dup.summary(dict(near_dup.band_plan(cfg)[3]), distinct, len(cand), gstats)
    stats.update(near_dup.cluster_stats(rep, np.concatenate([m[1] for m in meta])[order]))
    dup = rep >= 0
    parts, rej, k = g.apply_rows(parts, pos, present[dup], present[rep[dup]], reason, near_dup.RULE, cfg)
    return parts, rej, _step_stats(n, stats, reason, k)


def length_bias_step(g: Gate, parts: list[Any], d: dict[str, Any]) -> tuple[list[Any], pa.Table, dict]:
    cfg = _config(length_bias.LengthBiasConfig, d)
    got = g.client.gather([g.submit(tasks.lb_features, p, cfg) for p in parts])
    order = np.argsort(np.concatenate([p for p, _ in got]), kind="stable")
    # The fit sees the features in input order: the same floats summed in the same order as in one process.
    feats = {k: np.concatenate([f[k] for _, f in got])[order] for k in got[0][1]}
    weights, keep, stats = length_bias.decide_features(feats, cfg)
    back = np.split(np.argsort(order), np.cumsum([p.size for p, _ in got])[:-1])  # each partition's rows
    parts, rej = g.collect([g.submit(tasks.lb_apply, part, weights[b], keep[b], cfg) for part, b in zip(parts, back,
                                                                                                  strict=True)])
    dropped = int((~keep).sum()) if cfg.mode != "stats" else 0
    return parts, rej, _step_stats(order.size, stats, "length_balance_subsample", dropped)


GLOBAL: dict[str, Callable[[Gate, list[Any], dict[str, Any]], tuple[list[Any], pa.Table, dict]]] = {
    "repeated_answer": repeated_answer_step, "near_dup": near_dup_step, "length_bias": length_bias_step}


# -- worker tasks (module functions: a worker imports this module, nothing is pickled by value) ---------------
