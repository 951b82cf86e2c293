"""Plain-function cores of the data flows: fingerprints and cache keys, ingest, clean, run summaries.

Nothing here imports Prefect; the flows in `pipelines.flows` are thin wrappers that add retries, task
runners and artifacts. Tests call these functions directly.

Caching is done by the catalog, not by Prefect's result cache: a snapshot is published with a cache key
(input content hash + config hash + code version) and a later run with the same key returns that snapshot.
This survives restarts and a wiped Prefect database, and a cached answer is always a complete, published
snapshot.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import xxhash

from storage.schema import SCHEMA_VERSION
from storage.workspace import SnapshotInfo, Workspace

log = logging.getLogger("dpo.pipelines")

_CHUNK = 1 << 20
_REPO = Path(__file__).resolve().parents[1]
# Source trees whose code decides what a snapshot contains; the CLI and Prefect wiring do not.
_CODE_TREES = ("storage", "data_quality")
_CODE_FILES = ("pipelines/steps.py",)


# -- fingerprints ------------------------------------------------------------------------------------------
def file_hash(path: str | Path) -> str:
    """xxh3-128 of a file's bytes, streamed in 1 MiB chunks (sources can be larger than memory)."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def config_hash(obj: Any) -> str:
    return xxhash.xxh3_128_hexdigest(json.dumps(obj, sort_keys=True, default=str).encode())


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the code that shapes snapshot content, so a changed check or reader makes a new version."""
    h = xxhash.xxh3_128()
    h.update(f"schema={SCHEMA_VERSION}".encode())
    files = sorted(p for tree in _CODE_TREES for p in (_REPO / tree).rglob("*.py"))
    files += [_REPO / f for f in _CODE_FILES if (_REPO / f).exists()]
    for p in files:
        h.update(str(p.relative_to(_REPO)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def fingerprint_sources(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Per source: resolved path, size and content hash (the path matters: it becomes the `source` column).
    A folder (of files, or a `save_to_disk` data set) hashes every file under it with its relative path; a
    Hugging Face hub id is fingerprinted by its current commit."""
    from data_quality.ingest.hub import PREFIX, hub_id, revision

    out = []
    for p in paths:
        name = hub_id(str(p))
        if name is not None:
            out.append({"path": f"{PREFIX}{name}", "bytes": None, "xxh3": revision(name)})
            continue
        rp = Path(p).expanduser().resolve()
        if not rp.exists():
            raise FileNotFoundError(f"{rp}: no such file or directory")
        if rp.is_dir():
            files = sorted(f for f in rp.rglob("*") if f.is_file())
            h = xxhash.xxh3_128()
            for f in files:
                h.update(f"{f.relative_to(rp)}\0{file_hash(f)}\0".encode())
            out.append({"path": str(rp), "bytes": sum(f.stat().st_size for f in files), "xxh3": h.hexdigest(),
                        "files": len(files)})
            continue
        out.append({"path": str(rp), "bytes": rp.stat().st_size, "xxh3": file_hash(rp)})
    return out


def ingest_cache_key(fingerprints: list[dict[str, Any]], dataset: str, format: str | None,
                     options: dict[str, Any]) -> str:
    return "ingest:" + config_hash({"inputs": [[f["path"], f["xxh3"]] for f in fingerprints], "dataset": dataset,
                                    "format": format, "options": resolved_ingest_options(options),
                                    "code": code_version()})


def clean_cache_key(ws: Workspace, parent: SnapshotInfo, dataset: str, gate: dict[str, Any],
                    eval_prompts: Sequence[str] | None) -> str:
    # The parent's pairs file is hashed too: an id alone could be reused by a rebuilt workspace.
    return "clean:" + config_hash({"parent": parent.snapshot_id, "parent_pairs": file_hash(
        parent.path / "pairs.parquet"), "dataset": dataset, "gate": resolved_gate(gate),
        "eval_prompts": config_hash(list(eval_prompts or [])), "code": code_version()})


def resolved_ingest_options(options: dict[str, Any]) -> dict[str, Any]:
    from data_quality.ingest.options import IngestOptions

    return IngestOptions.from_dict(options).to_dict()


def resolved_gate(gate: dict[str, Any]) -> dict[str, Any]:
    """The gate config with every default filled in, so `{}` and the spelled-out defaults share a key.

    The engine section is left out: where the rows live while the gate runs never changes what it keeps.
    """
    return {k: v for k, v in gate_config(gate).to_dict().items() if k != "engine"}


def gate_config(gate: dict[str, Any]) -> Any:
    from data_quality.gate import GateConfig

    return GateConfig.from_dict(dict(gate))


def read_eval_prompts(path: str | None) -> list[str] | None:
    """Eval prompts for decontamination: one reader (text lines, JSONL or JSON arrays) in data_quality."""
    if not path:
        return None
    from data_quality.checks.decontam import read_eval_prompts as read

    return read(path)


# -- ingest ------------------------------------------------------------------------------------------------
def read_sources(paths: Sequence[str], format: str | None, options: dict[str, Any]) -> Any:
    """Read the files into an IngestResult (pairs + rejects + quarantine)."""
    from data_quality.ingest import ingest_files
    from data_quality.ingest.options import IngestOptions

    return ingest_files(list(paths), format=format, options=IngestOptions.from_dict(options))


def publish_raw(ws: Workspace, dataset: str, result: Any, *, cache_key: str, params: dict[str, Any],
                flow_run: str | None) -> SnapshotInfo:
    """Publish an ingest result; a retry after a publish that committed returns that snapshot instead."""
    hit = ws.find_cached(cache_key)
    if hit is not None:
        return hit
    meta = {"per_source": result.per_source, "formats": result.formats, "code_version": code_version()}
    # The format actually used (forced or detected) is what `dpo show` reports, never null.
    params = {**params, "format": formats_used(result.formats) or params.get("format"),
              "formats": result.formats}
    # The ingest's spill file becomes pairs.parquet as it is: the kept rows are never whole in memory.
    # The spills are placed or streamed into the snapshot; a result built from tables publishes those.
    pairs = result.pairs_file or result.pairs
    rejects, quarantine = result.rejects_file or result.rejects, result.quarantine_file or result.quarantine
    return ws.publish(dataset, pairs, rejects=rejects, quarantine=quarantine, params=params,
                      kind="raw", flow_run=flow_run, cache_key=cache_key, input_rows=result.input_rows, meta=meta)


def ingest(ws: Workspace, paths: Sequence[str], dataset: str, *, format: str | None = None,
           options: dict[str, Any] | None = None, flow_run: str | None = None,
           flow_parameters: dict[str, Any] | None = None) -> SnapshotInfo:
    """Sources -> raw snapshot, or the existing snapshot when the same inputs and config were ingested."""
    options = dict(options or {})
    fps = fingerprint_sources(paths)
    key = ingest_cache_key(fps, dataset, format, options)
    hit = ws.find_cached(key)
    if hit is not None:
        log.info("ingest %s: inputs unchanged, reusing %s", dataset, hit.snapshot_id)
        return hit
    res = read_sources(paths, format, options)
    params = ingest_params_record(fps, format, options, flow_parameters)
    return publish_raw(ws, dataset, res, cache_key=key, params=params, flow_run=flow_run)


def formats_used(formats: dict[str, str]) -> str | None:
    """One line for the formats of an ingest: the format when every source shares it, else each with a count."""
    from collections import Counter

    names = Counter(formats.values())
    if len(names) <= 1:
        return next(iter(names), None)
    return ", ".join(f"{k} ({n} source{'s' if n > 1 else ''})" for k, n in sorted(names.items()))


def ingest_params_record(fps: list[dict[str, Any]], format: str | None, options: dict[str, Any],
                         flow_parameters: dict[str, Any] | None) -> dict[str, Any]:
    return {"inputs": fps, "format": format, "options": resolved_ingest_options(options),
            "code_version": code_version(), "flow_parameters": flow_parameters or {}}


# -- clean -------------------------------------------------------------------------------------------------
@dataclass
class GateOutput:
    """What the gate produced for one snapshot, before publishing (a picklable GateResult look-alike)."""

    kept: pa.Table
    rejects: pa.Table
    stats: dict[str, Any]
    tables: dict[str, pa.Table] = field(default_factory=dict)


def run_gate(pairs: pa.Table | Path, gate: dict[str, Any], eval_prompts: Sequence[str] | None) -> GateOutput:
    from data_quality.gate import run_gate as _run_gate

    res = _run_gate(pairs, gate_config(gate), eval_prompts=list(eval_prompts) if eval_prompts else None)
    return GateOutput(res.kept, res.rejects, res.stats, dict(res.tables))


def gate_steps(gate: dict[str, Any], eval_prompts: Sequence[str] | None, names: Sequence[str] | None = None
               ) -> list[Any]:
    """The gate's steps (all, or those named), built from a plain config dict (as a task on a worker does)."""
    from data_quality.gate import steps as _steps

    all_steps = _steps(gate_config(gate), list(eval_prompts) if eval_prompts else None)
    return all_steps if names is None else [s for s in all_steps if s.name in set(names)]


def run_gate_sharded(pairs: pa.Table, gate: dict[str, Any], eval_prompts: Sequence[str] | None, shards: int, *,
                     map_shards: Any = None, run_global: Any = None) -> GateOutput:
    """The gate's engine over in-memory shards; `map_shards`/`run_global` put them on a flow's task runner."""
    from data_quality.engine import run_sharded

    steps = gate_steps(gate, eval_prompts)
    res = run_sharded(pairs, steps, gate_config(gate).to_dict(), shards, map_shards=map_shards,
                      run_global=run_global)
    return GateOutput(res.kept, res.rejects, res.stats, dict(res.tables))


def publish_clean(ws: Workspace, parent: SnapshotInfo, dataset: str, out: GateOutput, *, gate: dict[str, Any],
                  cache_key: str, flow_run: str | None, flow_parameters: dict[str, Any] | None,
                  eval_prompts: Sequence[str] | None) -> SnapshotInfo:
    """Write the report and publish the clean snapshot atomically (idempotent under retries)."""
    hit = ws.find_cached(cache_key)
    if hit is not None:
        return hit
    from data_quality.clean import publish_clean as _publish

    return _publish(ws, parent, dataset, out, gate_config(gate), eval_prompts=eval_prompts, flow_run=flow_run,
                    cache_key=cache_key, meta={"code_version": code_version()},
                    extra_params={"code_version": code_version(), "flow_parameters": flow_parameters or {}})




def recorded_gate_stats(info: SnapshotInfo) -> dict[str, Any] | None:
    from data_quality.clean import STATS_FILE

    p = info.path / STATS_FILE
    return json.loads(p.read_text(encoding="utf-8")) if p.exists() else None


def clean(ws: Workspace, ref: str, gate: dict[str, Any] | None = None, *, dataset: str | None = None,
          eval_prompts: Sequence[str] | None = None, shards: int = 1, flow_run: str | None = None,
          flow_parameters: dict[str, Any] | None = None) -> SnapshotInfo:
    """Snapshot -> gate -> clean snapshot, or the existing one when input, gate config and code are unchanged."""
    gate = dict(gate or {})
    parent = ws.resolve(ref)
    name = clean_dataset_name(ws, parent.snapshot_id, dataset)
    key = clean_cache_key(ws, parent, name, gate, eval_prompts)
    hit = ws.find_cached(key)
    if hit is not None:
        log.info("clean %s: unchanged, reusing %s", parent.snapshot_id, hit.snapshot_id)
        return hit
    # One process: the snapshot's Parquet file goes to the engine, which streams it when it is over budget.
    out = (run_gate(parent.path / "pairs.parquet", gate, eval_prompts) if shards <= 1
           else run_gate_sharded(ws.read(parent.snapshot_id), gate, eval_prompts, shards))
    return publish_clean(ws, parent, name, out, gate=gate, cache_key=key, flow_run=flow_run,
                         flow_parameters=flow_parameters, eval_prompts=eval_prompts)


def clean_dataset_name(ws: Workspace, ref: str, dataset: str | None) -> str:
    from data_quality.clean import clean_dataset_name as default_name

    return dataset or default_name(ws.resolve(ref).dataset)


# -- summaries (artifact content; plain data so tests can check it without Prefect) -------------------------
def counts_rows(info: SnapshotInfo, rejects_by_reason: dict[str, int] | None = None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"what": "input rows", "count": info.input_rows},
        {"what": "kept", "count": info.kept},
        {"what": "rejected", "count": info.rejected},
        {"what": "quarantined", "count": info.quarantined},
    ]
    for reason, n in sorted((rejects_by_reason or {}).items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append({"what": f"rejected: {reason}", "count": n})
    return rows


def rejects_by_reason(ws: Workspace, info: SnapshotInfo) -> dict[str, int]:
    if not info.rejected:
        return {}
    tbl = ws.read_rejects(info.snapshot_id).group_by(["rule", "reason"]).aggregate([("reason", "count")])
    return {f"{r['rule']}/{r['reason']}": int(r["reason_count"]) for r in tbl.to_pylist()}


_LB_KEYS = ("pairs", "frac_chosen_longer", "weighted_frac_chosen_longer", "mean_len_chosen", "mean_len_rejected",
            "corr_margin_length_diff", "weight_mean", "weight_max", "ties")


def length_bias_markdown(info: SnapshotInfo, stats: dict[str, Any] | None) -> str:
    """A short Markdown summary of the length-bias statistics the gate recorded."""
    lb = _find_length_bias(stats or {})
    lines = [f"# Length bias: {info.snapshot_id}", ""]
    if not lb:
        return "\n".join([*lines, "No length-bias statistics were recorded for this snapshot."])
    lines += ["| statistic | value |", "| --- | --- |"]
    for k in _LB_KEYS:
        if k in lb and lb[k] is not None:
            v = lb[k]
            lines.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    lc = lb.get("length_controlled")
    if isinstance(lc, dict) and lc:
        lines += ["", "Length-controlled estimate:", "", "```json", json.dumps(lc, indent=1, default=str)[:3000],
                  "```"]
    return "\n".join(lines)


def _find_length_bias(stats: dict[str, Any]) -> dict[str, Any] | None:
    for key in ("length_bias", "checks"):
        v = stats.get(key)
        if isinstance(v, dict) and "frac_chosen_longer" in v:
            return v
        if isinstance(v, dict) and isinstance(v.get("length_bias"), dict):
            return v["length_bias"]
    return None
