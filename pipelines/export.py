"""`dpo export`: a snapshot to a TRL / HF datasets file, keeping the turn markers its sources wrote.

The writing (formats, atomic replace, what may never be a target) is storage.formats; the turn markers each
source renders with (HH-RLHF's "Human:"/"Assistant:", from the ingest format recorded in the snapshot's
lineage) are storage.templates.snapshot_turn_labels, the same call `dpo train` makes, so both see one text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from storage import artefacts
from storage.formats import export, weight_warning
from storage.templates import snapshot_turn_labels
from storage.workspace import Workspace


@dataclass
class ExportResult:
    path: Path
    rows: int
    warnings: list[str] = field(default_factory=list)


def export_snapshot(ws: Workspace, ref: str, to: str | os.PathLike[str], fmt: str = "trl-standard", *,
                    overwrite: bool = False, with_reference: bool = False) -> ExportResult:
    info = ws.resolve(ref)
    pairs = ws.read(info.snapshot_id)
    if with_reference:  # reference log-probs live in their own artefact, never in the user's snapshot
        pairs = artefacts.reference_pairs(ws.root, info.snapshot_id, pairs)
    path = export(pairs, to, fmt, overwrite=overwrite, protect=[ws.root], with_reference=with_reference,
                  labels_by_source=snapshot_turn_labels(ws, info))
    warning = weight_warning(pairs)
    return ExportResult(path, pairs.num_rows, [warning] if warning else [])
