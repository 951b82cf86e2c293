"""Running the quality gate in shards without changing its result.

The gate is an ordered list of checks (`data_quality.gate.steps`); the gate declares each one's scope:
- row-local: decides each row on its own (normalise, degenerate, near_identical, decontam);
- prompt-local: compares rows only within one prompt (contradictions, dedup, margins' per-prompt cap);
  dedup is prompt-local because pair_id hashes the prompt;
- global: compares rows across prompts or over the whole table (near_dup, length_bias) - and any check this
  module does not know, so a new check is correct by default, only slower.

The steps are grouped, in order, into phases. A local phase runs in shards split by a stable hash of the
*current* prompt_id, so every prompt-local group sits in one shard; normalise rewrites prompt ids, so a
prompt-local check after it starts a new phase that re-shards. A global phase runs once on the merged table.
Shards keep the input order of their rows and the merge restores the global order through a position column,
so "keep the first of a group" decisions and the final row order are those of the single-process gate, and
the published content hash is the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_quality.gate import PROMPT_LOCAL, REWRITES_PROMPT_ID, ROW_LOCAL
from storage.schema import REJECTS_SCHEMA, conform

POS = "__shard_pos"


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


def plan(names: Sequence[str]) -> list[Phase]:
    phases: list[Phase] = []
    for name in names:
        local = name in ROW_LOCAL or name in PROMPT_LOCAL
        cur = phases[-1] if phases else None
        needs_reshard = (name in PROMPT_LOCAL and cur is not None
                         and any(n in REWRITES_PROMPT_ID for n in cur.names))
        if cur is not None and cur.sharded == local and not needs_reshard:
            cur.names.append(name)
        else:
            phases.append(Phase(sharded=local, names=[name]))
    return phases


def shard_ids(prompt_ids: pa.ChunkedArray | pa.Array, n_shards: int) -> np.ndarray:
    """Shard of each row from its prompt_id (already an xxh3 hex digest, so its leading bits are uniform)."""
    if n_shards <= 1:
        return np.zeros(len(prompt_ids), dtype=np.int64)
    head = pc.utf8_slice_codeunits(prompt_ids, 0, 8).to_numpy(zero_copy_only=False)
    # Parse 8 hex digits per id with array arithmetic instead of int(h, 16) per row.
    digits = np.asarray(head, dtype="S8").view(np.uint8).reshape(-1, 8).astype(np.uint64)
    digits = np.where(digits >= ord("a"), digits - 87, digits - 48)
    value = (digits << (np.arange(7, -1, -1, dtype=np.uint64) * 4)).sum(axis=1)
    return (value % np.uint64(n_shards)).astype(np.int64)


def split(table: pa.Table, n_shards: int) -> list[pa.Table]:
    sid = shard_ids(table.column("prompt_id"), n_shards)
    return [table.filter(pa.array(sid == s)) for s in range(n_shards)]


def add_positions(pairs: pa.Table) -> pa.Table:
    return conform(pairs).append_column(POS, pa.array(np.arange(pairs.num_rows, dtype=np.int64)))


def run_steps(table: pa.Table, names: Sequence[str], gate: dict[str, Any],
              eval_prompts: Sequence[str] | None) -> PhaseOutput:
    """Run the named gate steps, in gate order, on one table (a shard or the merged table)."""
    from data_quality.gate import GateConfig, steps

    fns: dict[str, Callable[[pa.Table], Any]] = dict(steps(GateConfig.from_dict(gate), eval_prompts))
    rejects: dict[str, pa.Table] = {}
    stats: dict[str, dict[str, Any]] = {}
    for name in names:
        t0 = time.perf_counter()
        res = fns[name](table)
        table = res.kept
        rejects[name] = res.rejects
        stats[name] = {**res.stats, "seconds": round(time.perf_counter() - t0, 4)}
    return PhaseOutput(table, rejects, stats)


def merge(outputs: Sequence[PhaseOutput], names: Sequence[str]) -> PhaseOutput:
    kept = pa.concat_tables([o.kept for o in outputs])
    kept = kept.take(pc.sort_indices(kept.column(POS)))
    rejects = {n: _sorted_rejects(pa.concat_tables([o.rejects[n] for o in outputs])) for n in names}
    stats = {n: merge_stats([o.stats[n] for o in outputs]) for n in names}
    return PhaseOutput(kept, rejects, stats)


def _sorted_rejects(t: pa.Table) -> pa.Table:
    # Shards interleave rejects; order them by provenance so the sharded table is deterministic.
    return t.sort_by([("source", "ascending"), ("source_row", "ascending"), ("pair_id", "ascending")])


def merge_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts add up across shards; anything else survives only where every shard agrees."""
    out: dict[str, Any] = {}
    dropped: list[str] = []
    for key in parts[0]:
        vals = [p.get(key) for p in parts]
        merged = _merge_value(key, vals)
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
    if key == "seconds" and all(isinstance(v, int | float) for v in vals):
        return round(sum(vals), 4)
    if all(isinstance(v, dict) for v in vals):
        keys = sorted({k for v in vals for k in v})
        if all(isinstance(v.get(k, 0), int) and not isinstance(v.get(k, 0), bool) for v in vals for k in keys):
            return {k: sum(v.get(k, 0) for v in vals) for k in keys}
    if all(v == vals[0] for v in vals):
        return vals[0]
    return _UNMERGEABLE


ShardMap = Callable[[list[pa.Table], list[str]], list[PhaseOutput]]
PhaseRun = Callable[[pa.Table, list[str]], PhaseOutput]


def run_sharded(pairs: pa.Table, gate: dict[str, Any], eval_prompts: Sequence[str] | None, n_shards: int, *,
                map_shards: ShardMap | None = None, run_global: PhaseRun | None = None) -> Any:
    """The gate over `n_shards` shards; `map_shards`/`run_global` let a flow put the work on a task runner.

    Without them every shard runs here, one after the other: same result, no parallelism (tests, debugging).
    """
    from data_quality.gate import GateConfig, steps

    prompts = list(eval_prompts) if eval_prompts else None

    def local_map(shards: list[pa.Table], names: list[str]) -> list[PhaseOutput]:
        return [run_steps(s, names, gate, prompts) for s in shards]

    def local_global(table: pa.Table, names: list[str]) -> PhaseOutput:
        return run_steps(table, names, gate, prompts)

    names = [n for n, _ in steps(GateConfig.from_dict(gate), prompts)]
    table = add_positions(pairs)
    outputs = []
    for phase in plan(names):
        if phase.sharded:
            out = merge((map_shards or local_map)(split(table, n_shards), phase.names), phase.names)
        else:
            out = (run_global or local_global)(table, phase.names)
        table = out.kept
        outputs.append(out)
    return finish(pairs.num_rows, table, outputs, gate)


def finish(pairs_in: int, kept: pa.Table, phase_outputs: Sequence[PhaseOutput], gate: dict[str, Any]) -> Any:
    """Assemble a GateOutput shaped like `run_gate`'s, from the phases in order."""
    from data_quality.checks.tables import stats_tables
    from data_quality.gate import GateConfig
    from pipelines.steps import GateOutput

    kept = conform(kept.drop_columns([POS]))
    rejects = [r for o in phase_outputs for r in o.rejects.values()]
    all_rejects = pa.concat_tables([conform(r, REJECTS_SCHEMA) for r in rejects]) if rejects \
        else REJECTS_SCHEMA.empty_table()
    if kept.num_rows + all_rejects.num_rows != pairs_in:
        raise AssertionError(f"sharded gate lost rows: {pairs_in} in, {kept.num_rows} kept + "
                             f"{all_rejects.num_rows} rejected")
    per_check = {n: s for o in phase_outputs for n, s in o.stats.items()}
    drops = {f"{n}:{reason}": c for n, st in per_check.items() for reason, c in st.get("dropped", {}).items()}
    stats = {"input_rows": pairs_in, "kept": kept.num_rows, "rejected": all_rejects.num_rows,
             "drops_by_reason": drops, "checks": per_check, "config": GateConfig.from_dict(gate).to_dict()}
    return GateOutput(kept, all_rejects, stats, stats_tables(stats))
