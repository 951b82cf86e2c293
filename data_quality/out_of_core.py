"""The out-of-core executor of the gate engine (data_quality.engine): rows are staged in Arrow IPC files
(data_quality.spill) and opened memory-mapped. Local phases split the rows by prompt into spill partitions and
run them one at a time; global steps run on the memory-mapped table, one at a time, and a step that exposes its
decision has it applied a batch at a time straight into the next stage and its rejects file."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data_quality.checks.base import Decision, apply
from data_quality.engine import (
    POS,
    EngineConfig,
    GateResult,
    Step,
    finish,
    merge_stats,
    plan,
    run_steps,
    shard_ids,
    sorted_rejects,
)
from data_quality.spill import Spill, parking
from storage.schema import PAIR_SCHEMA, REJECTS_SCHEMA, conform

_BATCH = 50_000
_READ_BUFFER = 8 << 20  # Parquet input read through an 8 MiB buffer, page by page
# A local-phase partition holds budget / _PART_FACTOR of Arrow input: the hungriest local check (repetition)
# peaked at ~5x its partition's Arrow size on top of the process (435k AlpacaEval-copy rows, 3 partitions:
# +2 GB for 145k rows), so 20 leaves room for the process and the stages' recently touched pages.
_PART_FACTOR = 20


def _source_batches(source: pa.Table | str | Path) -> Iterator[pa.Table]:
    if isinstance(source, pa.Table):
        for lo in range(0, source.num_rows, _BATCH):
            yield source.slice(lo, _BATCH)
        return
    # pre_buffer would keep every row group's I/O buffers alive while iterating: memory grows with the file; and
    # unbuffered, a column chunk is read whole (a snapshot's row groups hold ~1M rows: GBs of text at once).
    for b in parquet_file(source).iter_batches(batch_size=_BATCH):
        yield pa.Table.from_batches([b])


def parquet_file(path: str | Path) -> pq.ParquetFile:
    return pq.ParquetFile(str(path), pre_buffer=False, buffer_size=_READ_BUFFER)


def _with_pos_schema() -> pa.Schema:
    return PAIR_SCHEMA.append(pa.field(POS, pa.int64(), nullable=False))


def run_out_of_core(source: pa.Table | str | Path, steps: Sequence[Step], config: dict[str, Any],
                    cfg: EngineConfig) -> GateResult:
    """Spilled, memory-mapped stages; local phases one partition at a time (see the module docstring)."""
    by_name = {s.name: s for s in steps}
    with tempfile.TemporaryDirectory(prefix="dpo-gate-", dir=cfg.spill_dir) as tmp, parking(Path(tmp)):
        spill = Spill(Path(tmp))
        schema = _with_pos_schema()
        n_in, nbytes = 0, 0

        def staged() -> Iterator[pa.RecordBatch]:
            nonlocal n_in, nbytes
            for t in _source_batches(source):
                t = conform(t).append_column(POS, pa.array(np.arange(n_in, n_in + t.num_rows, dtype=np.int64)))
                n_in += t.num_rows
                nbytes += t.nbytes
                yield from t.cast(schema).to_batches()
        cur = spill.stage(spill.write("input", staged(), schema))
        parts = cfg.partitions or partitions_for(nbytes, cfg.memory_budget_mb)
        rejects: list[pa.Table] = []
        per_check: dict[str, dict[str, Any]] = {}
        for phase in plan(steps):
            names = phase.names
            if phase.sharded and parts > 1:
                cur, rej, st = _local_phase(cur, [by_name[n] for n in names], parts, spill)
                rejects += rej
                per_check.update(st)
            else:
                for n in names:  # one step at a time, each writing its kept rows and rejects to the spill
                    cur, rej, st = _whole_step(cur, by_name[n], spill, schema)
                    rejects.append(rej)
                    per_check[n] = {**st, **({"shards": 1} if phase.sharded else {})}
            pa.default_memory_pool().release_unused()
        # The folder is removed on return; the memory-mapped files stay readable until the tables are released
        # (POSIX unlink semantics), so the kept rows and rejects are handed back without a copy.
        return finish(n_in, cur, rejects, per_check, config, "out_of_core")


def partitions_for(nbytes: int, budget_mb: int) -> int:
    """Local-phase partitions for an input of `nbytes` (Arrow) under the budget (see _PART_FACTOR)."""
    return max(1, int(np.ceil(_PART_FACTOR * nbytes / (budget_mb * 2**20))))


def decision_stats(n: int, d: Decision) -> dict[str, Any]:
    """The statistics `apply` records for a decision over n rows, without splitting a table."""
    dropped = d.counts() if d.drop.any() else {}
    return {"rows_in": n, **d.stats, "rows_out": int(n - d.drop.sum()), "dropped": dropped}


def _whole_step(cur: pa.Table, step: Step, spill: Spill, schema: pa.Schema
                ) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """One step on the whole (memory-mapped) table; kept rows and rejects go to spill files.

    With the step's decision at hand, the split is applied batch by batch with the check's own `apply`, so
    neither the rejects' text nor a copy of the kept rows is ever whole in the heap; the rows and their order
    are those of `apply` on the whole table.
    """
    pa.default_memory_pool().release_unused()
    t0, c0 = time.perf_counter(), time.process_time()
    if step.decide is None:
        res = step.fn(cur)
        stats = res.stats
        kept = res.kept if res.kept is cur else spill.stage(spill.write("kept", _conformed(res.kept, schema), schema))
        rej = spill.stage(spill.write(f"rejects-{step.name}", _conformed(res.rejects), REJECTS_SCHEMA))
        del res
    else:
        d = step.decide(cur)
        stats = decision_stats(cur.num_rows, d)
        kept, rej = cur, REJECTS_SCHEMA.empty_table()
        if d.drop.any():
            kept, rej = _split_streamed(cur, d, step, spill, schema)
        del d
    pa.default_memory_pool().release_unused()
    stats = {**stats, "seconds": round(time.perf_counter() - t0, 4), "cpu_seconds": round(time.process_time() - c0, 4)}
    return kept, rej, stats


def _split_streamed(cur: pa.Table, d: Decision, step: Step, spill: Spill, schema: pa.Schema
                    ) -> tuple[pa.Table, pa.Table]:
    kp, rp = spill.path("kept"), spill.path(f"rejects-{step.name}")
    with pa.OSFile(str(kp), "wb") as ks, pa.ipc.new_file(ks, schema) as kw, \
            pa.OSFile(str(rp), "wb") as rs, pa.ipc.new_file(rs, REJECTS_SCHEMA) as rw:
        for lo in range(0, cur.num_rows, _BATCH):
            hi = min(lo + _BATCH, cur.num_rows)
            dup = d.duplicate_of[lo:hi] if d.duplicate_of is not None else None
            part = apply(cur.slice(lo, hi - lo), Decision(d.drop[lo:hi], d.reason[lo:hi], dup), step.rule,
                         step.params)
            for b in part.kept.select(schema.names).cast(schema).to_batches():
                if b.num_rows:
                    kw.write_batch(b)
            for b in conform(part.rejects, REJECTS_SCHEMA).to_batches():
                if b.num_rows:
                    rw.write_batch(b)
    return spill.stage(kp), spill.stage(rp)


def _conformed(t: pa.Table, schema: pa.Schema = REJECTS_SCHEMA) -> Iterator[pa.RecordBatch]:
    for lo in range(0, t.num_rows, _BATCH):
        part = t.slice(lo, _BATCH)
        part = conform(part, REJECTS_SCHEMA) if schema is REJECTS_SCHEMA else part.select(schema.names).cast(schema)
        yield from part.to_batches()


def _local_phase(cur: pa.Table, steps: Sequence[Step], parts: int, spill: Spill
                 ) -> tuple[pa.Table, list[pa.Table], dict[str, dict[str, Any]]]:
    """Split by prompt into spill partitions, run each alone, merge back in input order."""
    schema = cur.schema
    paths = [spill.path(f"part{k}") for k in range(parts)]
    sinks = [pa.OSFile(str(p), "wb") for p in paths]
    writers = [pa.ipc.new_file(s, schema) for s in sinks]
    for b in cur.to_batches(max_chunksize=_BATCH):
        sid = shard_ids(b.column(b.schema.get_field_index("prompt_id")), parts)
        for k in np.unique(sid):
            writers[k].write_batch(b.filter(pa.array(sid == k)))
    for w, s in zip(writers, sinks, strict=True):
        w.close()
        s.close()
    kept, rejects, stats = [], {s.name: [] for s in steps}, {s.name: [] for s in steps}
    for p in paths:
        out = run_steps(spill.stage(p), steps)
        kept.append(spill.stage(spill.write("kept-part", _conformed(out.kept, schema), schema)))
        for s in steps:
            rejects[s.name].append(out.rejects[s.name])
            stats[s.name].append(out.stats[s.name])
        del out  # else this partition's rows stay in the heap while the next one runs
        pa.default_memory_pool().release_unused()
    cur = spill.stage(spill.write("merged", _merge_by_position(kept), schema))
    rej = [spill.stage(spill.write(f"rejects-{s.name}", _conformed(sorted_rejects(pa.concat_tables(
        [conform(r, REJECTS_SCHEMA) for r in rejects[s.name]]))), REJECTS_SCHEMA)) for s in steps]
    return cur, rej, {s.name: merge_stats(stats[s.name]) for s in steps}


def _merge_by_position(parts: Sequence[pa.Table]) -> Iterator[pa.RecordBatch]:
    """The rows of `parts` (each in ascending POS) in POS order, a batch at a time: the rows of one range of
    positions are a slice of every part, so a batch is put together from slices (a take over the whole merged
    table would first concatenate each of its columns)."""
    pos = [np.asarray(p.column(POS).to_numpy()) for p in parts]
    every = np.sort(np.concatenate(pos)) if pos else np.zeros(0, np.int64)
    for lo in range(0, every.size, _BATCH):
        first, last = every[lo], every[min(lo + _BATCH, every.size) - 1]
        cuts = [(int(np.searchsorted(q, first)), int(np.searchsorted(q, last, side="right"))) for q in pos]
        batch = pa.concat_tables([p.slice(a, b - a) for p, (a, b) in zip(parts, cuts, strict=True) if b > a])
        yield from batch.take(pa.array(np.argsort(batch.column(POS).to_numpy(), kind="stable"))).to_batches()


