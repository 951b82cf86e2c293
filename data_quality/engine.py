"""The gate engine: runs the gate's check list (data_quality.gate) in memory, out of core, or in shards.

This module holds the parts every executor shares (steps, phases, merging, the accounting in `finish`) and the
in-memory and sharded executors; `out_of_core` and `cluster` are executors of their own, and `executors.execute`
picks one.

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

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_quality.checks.base import CheckResult, Decision
from data_quality.checks.tables import stats_tables
from storage.schema import REJECTS_SCHEMA, conform

POS = "__gate_pos"
EXECUTORS = ("auto", "memory", "out_of_core", "cluster")

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
    # A local check's rejects in provenance order, as the partitioned executors give them: one rejects table
    # whichever executor ran.
    rejects = [sorted_rejects(out.rejects[s.name]) if s.scope in ("row", "prompt") else out.rejects[s.name]
               for s in steps]
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


