"""`dpo export`: a snapshot to a TRL / HF datasets file, keeping the turn markers its sources wrote.

The writing (formats, atomic replace, what may never be a target) is storage.formats; this module adds what
only the pipeline knows: which ingest format each source was read with (recorded in the raw snapshot's meta),
hence the turn markers to render (HH-RLHF's "Human:"/"Assistant:").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from data_quality.ingest import hh
from storage import artefacts
from storage.formats import export, weight_warning
from storage.workspace import SnapshotInfo, Workspace


def _marker(turn: str) -> str:
    return turn.strip().removesuffix(":")


# Ingest formats whose sources write their own turn markers; every other source renders User/Assistant.
SOURCE_TURN_LABELS: dict[str, dict[str, str]] = {
    "hh": {"user": _marker(hh.HUMAN), "assistant": _marker(hh.ASSISTANT)},
}


@dataclass
class ExportResult:
    path: Path
    rows: int
    warnings: list[str] = field(default_factory=list)


def source_formats(ws: Workspace, info: SnapshotInfo) -> dict[str, str]:
    """{source: ingest format} recorded by the raw snapshot(s) this one descends from."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    todo = [info]
    while todo:
        cur = todo.pop()
        if cur.snapshot_id in seen:
            continue
        seen.add(cur.snapshot_id)
        found.update((cur.meta or {}).get("formats") or {})
        todo.extend(ws.resolve(p) for p in cur.parents)
    return found


def turn_labels(ws: Workspace, info: SnapshotInfo) -> dict[str, dict[str, str]]:
    return {src: SOURCE_TURN_LABELS[fmt] for src, fmt in source_formats(ws, info).items()
            if fmt in SOURCE_TURN_LABELS}


def export_snapshot(ws: Workspace, ref: str, to: str | os.PathLike[str], fmt: str = "trl-standard", *,
                    overwrite: bool = False, with_reference: bool = False) -> ExportResult:
    info = ws.resolve(ref)
    pairs = ws.read(info.snapshot_id)
    if with_reference:  # reference log-probs live in their own artefact, never in the user's snapshot
        pairs = artefacts.reference_pairs(ws.root, info.snapshot_id, pairs)
    path = export(pairs, to, fmt, overwrite=overwrite, protect=[ws.root], with_reference=with_reference,
                  labels_by_source=turn_labels(ws, info))
    warning = weight_warning(pairs)
    return ExportResult(path, pairs.num_rows, [warning] if warning else [])
