"""The gate engine: runs the gate's check list (data_quality.gate) in memory, out of core, or in shards.

Each check is written once, over an Arrow table. The engine decides where the rows live while it runs:
- `memory`: the whole table, one check after another (small inputs; fastest).
- `out_of_core`: rows are staged in Arrow IPC files on disk and opened memory-mapped (zero-copy: text stays
  in evictable file pages). Steps are grouped, in order, into phases by the scope the gate declares: a *local*
  phase (row- or prompt-local checks) splits the rows by a hash of the current prompt_id into spill partitions
  and runs them one at a time, so memory follows a partition, not the table; a *global* phase (near_dup,
  length_bias, any check of unknown scope) runs on the memory-mapped table, one step at a time, and a step that
  exposes its decision (Step.decide) has it applied a batch at a time straight into the next stage and its
  rejects file. Pages a check read from a stage are handed back to the page cache (`PageReturner`), and a
  stage's file is unlinked once mapped, so neither RSS nor disk holds every stage until the end.
- `sharded`: the same phases over in-memory shards, with hooks that let a flow put shards on a task runner
  (Prefect/Dask).
- `cluster` (data_quality.cluster): every phase on a Dask cluster, rows in partitions on the workers, global
  checks as key-partitioned shuffles; the driver holds integers per row, never the text.
Every executor keeps the input order (a position column restores it after a split), so "keep the first of a
group" decisions, the kept table and its content hash are those of the in-memory run.
`auto` picks `memory` when the input's in-memory size times a working factor fits the memory budget.
"""

from __future__ import annotations

import mmap
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_quality.checks.base import CheckResult, Decision, apply
from data_quality.checks.tables import stats_tables
from storage.schema import PAIR_SCHEMA, REJECTS_SCHEMA, conform

POS = "__gate_pos"
EXECUTORS = ("auto", "memory", "out_of_core", "cluster")
_BATCH = 50_000
_READ_BUFFER = 8 << 20  # Parquet input read through an 8 MiB buffer, page by page
_SIZE_SAMPLE = 10_000  # rows read to estimate the Arrow size of a Parquet input
_WORK_FACTOR = 7  # peak RSS of an in-memory run / Arrow size of its input (bench_scale, AlpacaEval copies: ~6.8)
# A local-phase partition holds budget / _PART_FACTOR of Arrow input: the hungriest local check (repetition)
# peaked at ~5x its partition's Arrow size on top of the process (435k AlpacaEval-copy rows, 3 partitions:
# +2 GB for 145k rows), so 20 leaves room for the process and the stages' recently touched pages.
_PART_FACTOR = 20
_PAGE_RETURN_S = 0.2  # how often touched pages of the memory-mapped stages go back to the page cache


@dataclass(frozen=True)
class EngineConfig:
    executor: str = "auto"  # auto | memory | out_of_core | cluster (never chosen by auto)
    memory_budget_mb: int = 3_000  # auto switches to out_of_core above it; sizes the spill partitions
    # out_of_core: partitions of local phases, 0 = from the budget; cluster: row partitions, 0 = 2 per worker thread
    partitions: int = 0
    spill_dir: str | None = None  # where out-of-core stages live (default: the system temp dir)
    # cluster (data_quality.cluster): a running Dask scheduler ("tcp://host:8786"), or None to start a local
    # cluster of `n_workers` worker processes (threads when `processes` is false) for the run
    address: str | None = None
    n_workers: int = 2
    threads_per_worker: int = 1
    processes: bool = True

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"engine.executor must be one of {list(EXECUTORS)}, not {self.executor!r}")
        if self.memory_budget_mb < 1:
            raise ValueError("engine.memory_budget_mb must be >= 1")
        if self.partitions < 0:
            raise ValueError("engine.partitions must be >= 0")
        if self.n_workers < 1 or self.threads_per_worker < 1:
            raise ValueError("engine.n_workers and engine.threads_per_worker must be >= 1")


@dataclass(frozen=True)
class Step:
    name: str
    fn: Callable[[pa.Table], CheckResult]
    scope: str  # row | prompt | global
    rewrites_prompt_id: bool = False
    # The check's decision alone (fn == apply(table, decide(table), rule, params)): lets the out-of-core engine
    # write kept rows and rejects batch by batch instead of taking every dropped row's text into the heap.
    decide: Callable[[pa.Table], Decision] | None = None
    rule: str = ""
    params: Any = None


@dataclass
class GateResult:
    kept: pa.Table  # PAIR_SCHEMA, with `weight`
    rejects: pa.Table  # REJECTS_SCHEMA
    stats: dict[str, Any]  # JSON-able
    tables: dict[str, pa.Table]  # per-check statistics for the catalog
    input_rows: int = 0


@dataclass
class Phase:
    sharded: bool
    names: list[str] = field(default_factory=list)


@dataclass
class PhaseOutput:
    """Kept rows (with the position column), rejects per check, and stats per check."""

    kept: pa.Table
    rejects: dict[str, pa.Table]
    stats: dict[str, dict[str, Any]]


# -- planning -----------------------------------------------------------------------------------------------
def plan(steps: Sequence[Step]) -> list[Phase]:
    """Consecutive local steps share a phase; a prompt-local step after one that rewrites prompt ids re-shards."""
    phases: list[Phase] = []
    rewrites = {s.name for s in steps if s.rewrites_prompt_id}
    for s in steps:
        local = s.scope in ("row", "prompt")
        cur = phases[-1] if phases else None
        reshard = s.scope == "prompt" and cur is not None and any(n in rewrites for n in cur.names)
        if cur is not None and cur.sharded == local and not reshard:
            cur.names.append(s.name)
        else:
            phases.append(Phase(sharded=local, names=[s.name]))
    return phases


def shard_ids(prompt_ids: pa.ChunkedArray | pa.Array, n_shards: int) -> np.ndarray:
    """Shard of each row from its prompt_id (an xxh3 hex digest, so its leading bits are uniform)."""
    if n_shards <= 1:
        return np.zeros(len(prompt_ids), dtype=np.int64)
    head = pc.utf8_slice_codeunits(prompt_ids, 0, 8).to_numpy(zero_copy_only=False)
    digits = np.asarray(head, dtype="S8").view(np.uint8).reshape(-1, 8).astype(np.uint64)
    digits = np.where(digits >= ord("a"), digits - 87, digits - 48)
    value = (digits << (np.arange(7, -1, -1, dtype=np.uint64) * 4)).sum(axis=1)
    return (value % np.uint64(n_shards)).astype(np.int64)


# -- running steps ------------------------------------------------------------------------------------------
def run_steps(table: pa.Table, steps: Sequence[Step]) -> PhaseOutput:
    """The steps, in order, on one table (the whole input, a partition, or a shard)."""
    rejects: dict[str, pa.Table] = {}
    stats: dict[str, dict[str, Any]] = {}
    pool = pa.default_memory_pool()
    for s in steps:
        # Arrow keeps freed pages and Polars allocates apart; without this the two caches add up.
        pool.release_unused()
        t0, c0 = time.perf_counter(), time.process_time()
        res = s.fn(table)
        table = res.kept
        rejects[s.name] = res.rejects
        stats[s.name] = {**res.stats, "seconds": round(time.perf_counter() - t0, 4),
                         "cpu_seconds": round(time.process_time() - c0, 4)}
    return PhaseOutput(table, rejects, stats)


def merge_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts add up across partitions; anything else survives only where every partition agrees."""
    out: dict[str, Any] = {}
    dropped: list[str] = []
    for key in parts[0]:
        merged = _merge_value(key, [p.get(key) for p in parts])
        if merged is _UNMERGEABLE:
            dropped.append(key)
        else:
            out[key] = merged
    out["shards"] = len(parts)
    if dropped:
        out["not_merged_across_shards"] = sorted(dropped)
    return out


_UNMERGEABLE = object()


def _merge_value(key: str, vals: list[Any]) -> Any:
    if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        return sum(vals)
    if key in ("seconds", "cpu_seconds") and all(isinstance(v, int | float) for v in vals):
        return round(sum(vals), 4)
    if all(isinstance(v, dict) for v in vals):
        keys = sorted({k for v in vals for k in v})
        if all(isinstance(v.get(k, 0), int) and not isinstance(v.get(k, 0), bool) for v in vals for k in keys):
            return {k: sum(v.get(k, 0) for v in vals) for k in keys}
    if all(v == vals[0] for v in vals):
        return vals[0]
    return _UNMERGEABLE


def sorted_rejects(t: pa.Table) -> pa.Table:
    # Partitions interleave rejects; order them by provenance so every executor gives the same table.
    return t.sort_by([("source", "ascending"), ("source_row", "ascending"), ("pair_id", "ascending")])


def finish(n_in: int, kept: pa.Table, rejects: Sequence[pa.Table], per_check: dict[str, dict[str, Any]],
           config: dict[str, Any], executor: str) -> GateResult:
    kept = conform(kept.drop_columns([POS]) if POS in kept.column_names else kept)
    parts = [conform(r, REJECTS_SCHEMA) for r in rejects if r.num_rows]
    all_rejects = pa.concat_tables(parts) if parts else REJECTS_SCHEMA.empty_table()
    if kept.num_rows + all_rejects.num_rows != n_in:  # the accounting invariant; a bug if it ever fires
        raise AssertionError(f"gate lost rows: {n_in} in, {kept.num_rows} kept + {all_rejects.num_rows} rejected")
    drops = {f"{n}:{reason}": c for n, st in per_check.items() for reason, c in st.get("dropped", {}).items()}
    stats = {"input_rows": n_in, "kept": kept.num_rows, "rejected": all_rejects.num_rows,
             "drops_by_reason": drops, "checks": per_check, "config": config, "executor": executor}
    return GateResult(kept, all_rejects, stats, stats_tables(stats), n_in)


# -- executors ----------------------------------------------------------------------------------------------
def run_in_memory(table: pa.Table, steps: Sequence[Step], config: dict[str, Any]) -> GateResult:
    n_in = table.num_rows
    out = run_steps(conform(table), steps)
    rejects = [out.rejects[s.name] for s in steps]
    return finish(n_in, out.kept, rejects, out.stats, config, "memory")


ShardMap = Callable[[list[pa.Table], list[str]], list[PhaseOutput]]
PhaseRun = Callable[[pa.Table, list[str]], PhaseOutput]


def run_sharded(table: pa.Table, steps: Sequence[Step], config: dict[str, Any], n_shards: int, *,
                map_shards: ShardMap | None = None, run_global: PhaseRun | None = None) -> GateResult:
    """In-memory shards; `map_shards`/`run_global` let a flow put the work on a task runner (Prefect/Dask).

    Without them every shard runs here, one after the other: same result, no parallelism.
    """
    by_name = {s.name: s for s in steps}

    def local_map(shards: list[pa.Table], names: list[str]) -> list[PhaseOutput]:
        return [run_steps(s, [by_name[n] for n in names]) for s in shards]

    def local_global(t: pa.Table, names: list[str]) -> PhaseOutput:
        return run_steps(t, [by_name[n] for n in names])

    n_in = table.num_rows
    cur = add_positions(table)
    rejects: list[pa.Table] = []
    per_check: dict[str, dict[str, Any]] = {}
    for phase in plan(steps):
        if phase.sharded:
            sid = shard_ids(cur.column("prompt_id"), n_shards)
            outs = (map_shards or local_map)([cur.filter(pa.array(sid == s)) for s in range(n_shards)], phase.names)
            kept = pa.concat_tables([o.kept for o in outs])
            cur = kept.take(pc.sort_indices(kept.column(POS)))
            for n in phase.names:
                rejects.append(sorted_rejects(pa.concat_tables([o.rejects[n] for o in outs])))
                per_check[n] = merge_stats([o.stats[n] for o in outs])
        else:
            out = (run_global or local_global)(cur, phase.names)
            cur = out.kept
            rejects += [out.rejects[n] for n in phase.names]
            per_check.update(out.stats)
    return finish(n_in, cur, rejects, per_check, config, "sharded")


def add_positions(pairs: pa.Table) -> pa.Table:
    return conform(pairs).append_column(POS, pa.array(np.arange(pairs.num_rows, dtype=np.int64)))


class _Spill:
    """Arrow IPC files under one temporary folder, read back memory-mapped (zero-copy)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def path(self, stem: str) -> Path:
        self.count += 1
        return self.root / f"{self.count:04d}-{stem}.arrow"

    def write(self, stem: str, batches: Iterator[pa.RecordBatch] | Sequence[pa.RecordBatch],
              schema: pa.Schema) -> Path:
        p = self.path(stem)
        with pa.OSFile(str(p), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            for b in batches:
                if b.num_rows:
                    w.write_batch(b)
        return p

    @staticmethod
    def open(p: Path) -> pa.Table:
        # Mapped by Python's mmap (not pa.memory_map) so the pages a check touched can be handed back (madvise);
        # the Arrow buffers keep the mapping alive, and it leaves the page returner when they are gone.
        with open(p, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        PAGES.add(mm)
        return pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mm))).read_all()

    def stage(self, p: Path) -> pa.Table:
        """`open`, then unlink the file: nothing opens a stage twice, so its disk space goes back as soon as its
        table is released (POSIX keeps a mapped file's data until it is unmapped), not at the end of the run."""
        t = self.open(p)
        p.unlink()
        return t


class PageReturner:
    """Hands the touched pages of the read-only stage mappings back to the page cache, every `interval` s.

    A memory-mapped stage keeps every page a check has read in the process's resident set (file pages, but
    counted in RSS and in the kernel's view of the process), so a scan over a 5 GB stage would hold 5 GB.
    MADV_DONTNEED on a read-only shared file mapping only drops this process's page-table entries: the data
    stays in the page cache (evictable) and a later read faults it back in, unchanged. So it is safe at any
    moment, also while a check reads the same pages, and RSS then holds the heap plus recently read pages.
    The thread runs while some mapping is alive.
    """

    def __init__(self, interval: float = _PAGE_RETURN_S) -> None:
        self.interval = interval
        self.maps: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, mm: mmap.mmap) -> None:
        with self.lock:
            self.maps.add(mm)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="dpo-gate-pages", daemon=True)
                self.thread.start()

    def release(self) -> None:
        for mm in list(self.maps):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (ValueError, OSError):  # closed meanwhile
                pass

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            with self.lock:
                if not self.maps:
                    self.thread = None
                    return
            self.release()


PAGES = PageReturner()


def _source_batches(source: pa.Table | str | Path) -> Iterator[pa.Table]:
    if isinstance(source, pa.Table):
        for lo in range(0, source.num_rows, _BATCH):
            yield source.slice(lo, _BATCH)
        return
    # pre_buffer would keep every row group's I/O buffers alive while iterating: memory grows with the file; and
    # unbuffered, a column chunk is read whole (a snapshot's row groups hold ~1M rows: GBs of text at once).
    for b in _parquet(source).iter_batches(batch_size=_BATCH):
        yield pa.Table.from_batches([b])


def _parquet(path: str | Path) -> pq.ParquetFile:
    return pq.ParquetFile(str(path), pre_buffer=False, buffer_size=_READ_BUFFER)


def _with_pos_schema() -> pa.Schema:
    return PAIR_SCHEMA.append(pa.field(POS, pa.int64(), nullable=False))


def run_out_of_core(source: pa.Table | str | Path, steps: Sequence[Step], config: dict[str, Any],
                    cfg: EngineConfig) -> GateResult:
    """Spilled, memory-mapped stages; local phases one partition at a time (see the module docstring)."""
    by_name = {s.name: s for s in steps}
    with tempfile.TemporaryDirectory(prefix="dpo-gate-", dir=cfg.spill_dir) as tmp:
        spill = _Spill(Path(tmp))
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


def _whole_step(cur: pa.Table, step: Step, spill: _Spill, schema: pa.Schema
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


def _split_streamed(cur: pa.Table, d: Decision, step: Step, spill: _Spill, schema: pa.Schema
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


def _local_phase(cur: pa.Table, steps: Sequence[Step], parts: int, spill: _Spill
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


def choose_executor(source: pa.Table | str | Path, cfg: EngineConfig) -> str:
    if cfg.executor != "auto":
        return cfg.executor
    return "memory" if _WORK_FACTOR * arrow_size(source) <= cfg.memory_budget_mb * 2**20 else "out_of_core"


def arrow_size(source: pa.Table | str | Path) -> int:
    """Bytes the input takes as Arrow in memory; for Parquet, estimated from its first rows (Parquet's own sizes
    count dictionary-encoded text, far smaller than the decoded strings when answers repeat). Not from a whole
    row group: a snapshot's first row group holds ~1M rows, GBs once decoded."""
    if isinstance(source, pa.Table):
        return source.nbytes
    f = _parquet(source)
    if f.metadata.num_rows == 0:
        return 0
    first = next(f.iter_batches(batch_size=_SIZE_SAMPLE))
    return int(first.nbytes / max(first.num_rows, 1) * f.metadata.num_rows)


def execute(source: pa.Table | str | Path, steps: Sequence[Step], config: dict[str, Any],
            cfg: EngineConfig | None = None) -> GateResult:
    """Run `steps` over a pair table or a Parquet file of pairs with the executor `cfg` asks for."""
    cfg = cfg or EngineConfig()
    kind = choose_executor(source, cfg)
    if kind == "memory":
        table = source if isinstance(source, pa.Table) else pq.read_table(str(source))
        return run_in_memory(table, steps, config)
    if kind == "cluster":
        # Imported on demand: dask.distributed takes a second to import, and only this executor needs it.
        from data_quality.cluster import run_cluster

        return run_cluster(source, steps, config, cfg)
    return run_out_of_core(source, steps, config, cfg)
