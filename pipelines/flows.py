"""Prefect flows for the data side: ingest, clean and refresh, plus plain entry points the CLI calls.

Flows only order tasks: fingerprints and cache look-ups first (a hit returns the published snapshot and
writes nothing), then retried I/O tasks around the compute. Snapshots are published atomically by the
workspace, so a run that dies leaves either a whole snapshot or none; rerunning it picks up cached steps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from data_quality.engine import PhaseOutput
from pipelines import steps, tasks
from pipelines.config import CleanParams, IngestParams, RunnerConfig, load_refresh_config
from storage.workspace import SnapshotInfo, Workspace


def _run_id() -> str | None:
    rid = flow_run.id
    return str(rid) if rid else None


def _workspace(path: str | None) -> Workspace:
    return Workspace(path)


# -- ingest ------------------------------------------------------------------------------------------------
@flow(name="dpo-ingest", log_prints=True)
def ingest_flow(params: IngestParams) -> SnapshotInfo:
    ws = _workspace(params.workspace)
    fps = tasks.with_retries(tasks.fingerprint_sources, params.retry)(params.paths)
    key = steps.ingest_cache_key(fps, params.dataset, params.format, params.options)
    hit = ws.find_cached(key)
    if hit is not None:
        get_run_logger().info("ingest %s: inputs and config unchanged, reusing %s", params.dataset, hit.snapshot_id)
        tasks.emit_artifacts(ws, hit, cached=True)
        return hit
    res = tasks.with_retries(tasks.read_sources, params.retry)(params.paths, params.format, params.options)
    record = steps.ingest_params_record(fps, params.format, params.options, params.model_dump(mode="json"))
    info = tasks.with_retries(tasks.publish_raw, params.retry)(
        str(ws.root), params.dataset, res, key, record, _run_id())
    get_run_logger().info("ingest %s: %d input rows -> %s (kept %d, rejected %d, quarantined %d)", params.dataset,
             info.input_rows, info.snapshot_id, info.kept, info.rejected, info.quarantined)
    tasks.emit_artifacts(ws, info, cached=False)
    return info


# -- clean -------------------------------------------------------------------------------------------------
@flow(name="dpo-clean", log_prints=True)
def clean_flow(params: CleanParams) -> SnapshotInfo:
    ws = _workspace(params.workspace)
    parent = ws.resolve(params.ref)
    dataset = steps.clean_dataset_name(ws, parent.snapshot_id, params.dataset)
    eval_prompts = steps.read_eval_prompts(params.eval_prompts_file)
    key = steps.clean_cache_key(ws, parent, dataset, params.gate, eval_prompts)
    hit = ws.find_cached(key)
    if hit is not None:
        get_run_logger().info("clean %s: input and gate config unchanged, reusing %s", parent.snapshot_id, hit.snapshot_id)
        tasks.emit_artifacts(ws, hit, cached=True)
        return hit
    if params.runner.kind == "dask":
        # The whole gate on the flow's Dask cluster: its workers read the snapshot's Parquet file themselves.
        out = tasks.gate(str(parent.path / "pairs.parquet"), _on_flow_cluster(params.gate, params.runner),
                         eval_prompts)
    elif params.runner.shards <= 1:
        # The snapshot's Parquet file: the gate engine streams it when it is over the memory budget.
        out = tasks.gate(str(parent.path / "pairs.parquet"), params.gate, eval_prompts)
    else:
        pairs = tasks.with_retries(tasks.load_pairs, params.retry)(str(ws.root), parent.snapshot_id)
        out = _sharded_gate(pairs, params.gate, eval_prompts, params.runner.shards)
    info = tasks.with_retries(tasks.publish_clean, params.retry)(
        str(ws.root), parent.snapshot_id, dataset, out, params.gate, key, _run_id(),
        params.model_dump(mode="json"), eval_prompts)
    get_run_logger().info("clean %s -> %s: kept %d, rejected %d", parent.snapshot_id, info.snapshot_id, info.kept,
             info.rejected)
    tasks.emit_artifacts(ws, info, cached=False, stats=out.stats)
    return info


def _on_flow_cluster(gate: dict[str, Any], runner: RunnerConfig) -> dict[str, Any]:
    """The gate config with the engine pointed at the cluster of the flow's DaskTaskRunner (which starts it, or
    connects to `runner.address`, and closes it with the flow). The engine section never changes what is kept,
    so the cache key and the recorded gate config are those of the single-process run."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    client = getattr(ctx.task_runner, "client", None) if ctx is not None else None
    address = client.scheduler.address if client is not None else runner.address
    return {**gate, "engine": {**gate.get("engine", {}), **runner.engine(address)}}


def _sharded_gate(pairs: Any, gate: dict[str, Any], eval_prompts: list[str] | None, n_shards: int) -> Any:
    """Thread runner with shards > 1: local phases fan out over shards on the flow's task runner; global phases
    run once on the merged table (kind = "dask" runs every phase on the cluster instead)."""

    def map_shards(shards: list[Any], names: list[str]) -> list[PhaseOutput]:
        futures = [tasks.gate_shard.submit(s, names, gate, eval_prompts) for s in shards]
        return [f.result() for f in futures]

    def run_global(table: Any, names: list[str]) -> PhaseOutput:
        return tasks.gate_merged(table, names, gate, eval_prompts)

    return steps.run_gate_sharded(pairs, gate, eval_prompts, n_shards, map_shards=map_shards, run_global=run_global)


def task_runner(cfg: RunnerConfig) -> TaskRunner[Any]:
    if cfg.kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:  # pragma: no cover - prefect-dask is a pinned dependency
            raise RuntimeError("runner.kind = 'dask' needs the prefect-dask package") from exc
        if cfg.address:
            return DaskTaskRunner(address=cfg.address)
        # distributed logs every connection and, at shutdown, comm tracebacks at INFO: keep the run log readable
        return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.n_workers, "processes": cfg.processes,
                                              "threads_per_worker": cfg.threads_per_worker,
                                              "dashboard_address": ":0", "worker_dashboard_address": ":0",
                                              "silence_logs": logging.ERROR})
    return ThreadPoolTaskRunner(max_workers=max(cfg.n_workers, cfg.shards, 1))


def _clean_flow_for(cfg: RunnerConfig) -> Any:
    return clean_flow.with_options(task_runner=task_runner(cfg))


# -- refresh -----------------------------------------------------------------------------------------------
@flow(name="dpo-refresh", log_prints=True)
def refresh_flow(config_path: str, workspace: str | None = None) -> list[SnapshotInfo]:
    """Ingest then clean every configured source; unchanged sources cost a fingerprint and two look-ups."""
    cfg = load_refresh_config(config_path)
    out: list[SnapshotInfo] = []
    for src in cfg.sources:
        raw = ingest_flow(cfg.ingest_params(src, workspace))
        clean = _clean_flow_for(cfg.runner)(cfg.clean_params(src, raw.snapshot_id, workspace))
        out += [raw, clean]
    return out


# -- plain entry points (the CLI calls these) -------------------------------------------------------------
def run_ingest(paths: list[str], dataset: str, *, format: str | None = None,
               options: dict[str, Any] | None = None, workspace: str | Path | None = None) -> SnapshotInfo:
    params = IngestParams(paths=[str(p) for p in paths], dataset=dataset, format=format, options=options or {},
                          workspace=str(workspace) if workspace else None)
    return ingest_flow(params)


def run_clean(ref: str, *, gate: dict[str, Any] | None = None, dataset: str | None = None,
              eval_prompts_file: str | None = None, workspace: str | Path | None = None,
              runner: RunnerConfig | None = None) -> SnapshotInfo:
    runner = runner or RunnerConfig()
    params = CleanParams(ref=ref, dataset=dataset, gate=gate or {}, eval_prompts_file=eval_prompts_file,
                         workspace=str(workspace) if workspace else None, runner=runner)
    return _clean_flow_for(runner)(params)


def run_refresh(config_path: str | Path, *, workspace: str | Path | None = None) -> list[SnapshotInfo]:
    cfg_path = str(Path(config_path).expanduser().resolve())
    load_refresh_config(cfg_path)  # fail before any Prefect machinery starts, with the file and key named
    return refresh_flow(cfg_path, str(workspace) if workspace else None)
