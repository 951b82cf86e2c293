"""Snapshot in, clean snapshot out: read `ref`, run the gate, write the report, publish with lineage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from data_quality.gate import GateConfig, run_gate
from data_quality.report import render_report
from storage.schema import hash_text
from storage.workspace import SnapshotInfo, Workspace

STATS_FILE = "gate_stats.json"


def clean_dataset_name(parent_dataset: str) -> str:
    """`hh_raw` -> `hh`, anything else -> `<name>_clean` (the convention the pipelines use too)."""
    return parent_dataset[: -len("_raw")] if parent_dataset.endswith("_raw") else f"{parent_dataset}_clean"


def clean_snapshot(ws: Workspace, ref: str, cfg: GateConfig | dict[str, Any] | None = None, *,
                   dataset: str | None = None, flow_run: str | None = None,
                   eval_prompts: Sequence[str] | None = None, cache_key: str | None = None) -> SnapshotInfo:
    """Run the quality gate over snapshot `ref` and publish a kind="clean" snapshot whose parent is `ref`.

    params = the resolved gate config (every threshold) plus a fingerprint of the eval prompts;
    tables = the gate's statistics tables; files = report.html and gate_stats.json.
    """
    if cache_key is not None:
        hit = ws.find_cached(cache_key)
        if hit is not None:
            return hit
    cfg = cfg if isinstance(cfg, GateConfig) else GateConfig.from_dict(cfg)
    parent = ws.resolve(ref)
    # The snapshot's Parquet file, not a loaded table: the engine streams it when it is over the memory budget.
    res = run_gate(parent.path / "pairs.parquet", cfg, eval_prompts=list(eval_prompts) if eval_prompts else None)
    return publish_clean(ws, parent, dataset or clean_dataset_name(parent.dataset), res, cfg,
                         eval_prompts=eval_prompts, flow_run=flow_run, cache_key=cache_key)


def publish_clean(ws: Workspace, parent: SnapshotInfo, dataset: str, result: Any, cfg: GateConfig, *,
                  eval_prompts: Sequence[str] | None = None, flow_run: str | None = None,
                  cache_key: str | None = None, extra_params: dict[str, Any] | None = None,
                  meta: dict[str, Any] | None = None) -> SnapshotInfo:
    """Publish a gate result (kept, rejects, stats, tables) as a clean snapshot of `parent`, with its report.

    Also used by the sharded Prefect path, whose result is merged from shards but has the same fields.
    """
    prompts = list(eval_prompts or [])
    params = {**cfg.to_dict(), "eval_prompts": {"count": len(prompts),
                                                "xxh3": hash_text("\n".join(prompts)) if prompts else None},
              **(extra_params or {})}
    files: dict[str, str | bytes] = {
        "report.html": render_report(result, parent=parent, dataset=dataset),
        STATS_FILE: json.dumps(result.stats, sort_keys=True, default=str, indent=1)}
    return ws.publish(dataset, result.kept, rejects=result.rejects, parents=[parent.snapshot_id], params=params,
                      kind="clean", flow_run=flow_run, cache_key=cache_key, input_rows=parent.kept,
                      tables=dict(result.tables), files=files, meta=meta)
