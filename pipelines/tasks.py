"""Prefect tasks: thin wrappers over `pipelines.steps` that add retries (I/O) and task-runner placement.

Prefect's own result cache is switched off (NO_CACHE): caching is the catalog's job (see steps), and hashing
Arrow tables for Prefect's input-based cache keys would cost more than the checks. Retry settings come from
the run's RetryConfig through `with_retries`, so tests can retry without waiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from prefect import Task, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from data_quality.engine import PhaseOutput, run_steps
from pipelines import steps
from pipelines.config import RetryConfig
from pipelines.report_ui import report_markdown
from storage.workspace import SnapshotInfo, Workspace

_TASK = {"cache_policy": NO_CACHE, "persist_result": False}


def with_retries(t: Task[Any, Any], retry: RetryConfig) -> Task[Any, Any]:
    delays: list[float] = retry.delays()
    return t.with_options(retries=retry.retries, retry_delay_seconds=delays or 0,
                          retry_jitter_factor=retry.jitter if retry.jitter > 0 else None)


# -- I/O tasks (retried) -----------------------------------------------------------------------------------
@task(name="fingerprint-sources", **_TASK)
def fingerprint_sources(paths: Sequence[str]) -> list[dict[str, Any]]:
    return steps.fingerprint_sources(paths)


@task(name="read-sources", **_TASK)
def read_sources(paths: Sequence[str], format: str | None, options: dict[str, Any]) -> Any:
    return steps.read_sources(paths, format, options)


@task(name="publish-raw", **_TASK)
def publish_raw(ws_root: str, dataset: str, result: Any, cache_key: str, params: dict[str, Any],
                flow_run: str | None) -> SnapshotInfo:
    return steps.publish_raw(Workspace(ws_root), dataset, result, cache_key=cache_key, params=params,
                             flow_run=flow_run)


@task(name="load-snapshot", **_TASK)
def load_pairs(ws_root: str, ref: str) -> pa.Table:
    return Workspace(ws_root).read(ref)


@task(name="publish-clean", **_TASK)
def publish_clean(ws_root: str, parent_ref: str, dataset: str, out: steps.GateOutput, gate: dict[str, Any],
                  cache_key: str, flow_run: str | None, flow_parameters: dict[str, Any],
                  eval_prompts: list[str] | None) -> SnapshotInfo:
    ws = Workspace(ws_root)
    return steps.publish_clean(ws, ws.resolve(parent_ref), dataset, out, gate=gate, cache_key=cache_key,
                               flow_run=flow_run, flow_parameters=flow_parameters, eval_prompts=eval_prompts)


# -- compute tasks -----------------------------------------------------------------------------------------
@task(name="quality-gate", **_TASK)
def gate(pairs: pa.Table | str, gate: dict[str, Any], eval_prompts: list[str] | None) -> steps.GateOutput:
    return steps.run_gate(pairs, gate, eval_prompts)


@task(name="gate-shard", **_TASK)
def gate_shard(shard: pa.Table, names: list[str], gate: dict[str, Any],
               eval_prompts: list[str] | None) -> PhaseOutput:
    return run_steps(shard, steps.gate_steps(gate, eval_prompts, names))


# The cross-row phases on the merged table: the same work, named apart in the UI.
gate_merged = gate_shard.with_options(name="gate-merged")


# -- artifacts -----------------------------------------------------------------------------------------------
def _key(prefix: str, dataset: str) -> str:
    # Artifact keys allow lowercase letters, digits and dashes only.
    return f"{prefix}-" + "".join(c if c.isalnum() else "-" for c in dataset.lower())


def emit_artifacts(ws: Workspace, info: SnapshotInfo, *, cached: bool, stats: dict[str, Any] | None = None) -> None:
    """What the Prefect UI shows of a snapshot: the counts table, the length-bias summary (clean snapshots) and
    the report (tables and plots inline, linking the full HTML report over http: `dpo report serve`)."""
    note = " (cached: inputs and config unchanged, no new snapshot)" if cached else ""
    counts = steps.counts_rows(info, steps.rejects_by_reason(ws, info))
    create_table_artifact(table=counts, key=_key("counts", info.dataset),
                          description=f"Row accounting of {info.snapshot_id} ({info.kind}){note}")
    length_bias = None
    if info.kind == "clean":
        if stats is None:
            stats = steps.recorded_gate_stats(info)
        length_bias = steps.length_bias_markdown(info, stats)
        create_markdown_artifact(markdown=length_bias, key=_key("length-bias", info.dataset),
                                 description=f"Length-bias summary of {info.snapshot_id}")
    create_markdown_artifact(markdown=report_markdown(ws, info, counts, length_bias), key=_key("report", info.dataset),
                             description=f"Report of {info.snapshot_id}{note}")
