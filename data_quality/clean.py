"""Snapshot in, clean snapshot out: read `ref`, run the gate, write the report, publish with lineage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from data_quality.gate import GateConfig, run_gate
from data_quality.report import render_report
from storage.schema import hash_text
from storage.workspace import SnapshotInfo, Workspace


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
    pairs = ws.read(parent.snapshot_id)
    res = run_gate(pairs, cfg, eval_prompts=list(eval_prompts) if eval_prompts else None)
    name = dataset or clean_dataset_name(parent.dataset)
    prompts = list(eval_prompts or [])
    params = {**cfg.to_dict(), "eval_prompts": {"count": len(prompts),
                                                "xxh3": hash_text("\n".join(prompts)) if prompts else None}}
    html = render_report(res, parent=parent, dataset=name)
    files = {"report.html": html, "gate_stats.json": json.dumps(res.stats, sort_keys=True, default=str, indent=1)}
    return ws.publish(name, res.kept, rejects=res.rejects, parents=[parent.snapshot_id], params=params, kind="clean",
                      flow_run=flow_run, cache_key=cache_key, input_rows=pairs.num_rows, tables=res.tables,
                      files=files)
