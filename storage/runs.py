"""Training runs, their metrics and iterative rounds: plain DuckDB tables in the catalog.

Every call opens and closes the catalog, so a trainer that is killed never holds the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storage import catalog


def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def record_run(
    root: Path,
    run_id: str,
    *,
    kind: str,
    snapshot_id: str | None,
    model: str | None,
    config: dict[str, Any],
    code_version: str | None,
    status: str,
    output_dir: str | None,
    parent_run: str | None = None,
) -> None:
    with catalog.connect(root) as con:
        con.execute(
            "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "coalesce((SELECT started_at FROM runs WHERE run_id = ?), now()), NULL)",
            [
                run_id,
                kind,
                snapshot_id,
                model,
                _json(config),
                code_version,
                status,
                output_dir,
                parent_run,
                run_id,
            ],
        )


def update_run(root: Path, run_id: str, *, status: str, finished: bool = True) -> None:
    with catalog.connect(root) as con:
        con.execute(
            "UPDATE runs SET status = ?, finished_at = CASE WHEN ? THEN now() ELSE finished_at END "
            "WHERE run_id = ?",
            [status, finished, run_id],
        )


def log_metrics(root: Path, run_id: str, rows: Sequence[tuple[int, str, float]]) -> None:
    if not rows:
        return
    now = datetime.now(UTC)
    with catalog.connect(root) as con:
        con.executemany(
            "INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)",
            [(run_id, int(s), str(n), float(v), now) for s, n, v in rows],
        )


def record_round(
    root: Path,
    experiment: str,
    round: int,
    step: str,
    *,
    status: str,
    artefact: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    with catalog.connect(root) as con:
        con.execute(
            "INSERT OR REPLACE INTO round_log VALUES (?, ?, ?, ?, ?, ?, now())",
            [experiment, round, step, status, artefact, _json(details or {})],
        )


def get_rounds(root: Path, experiment: str) -> list[dict[str, Any]]:
    with catalog.connect(root, read_only=True) as con:
        cur = con.execute(
            "SELECT experiment, round, step, status, artefact, details, updated_at FROM round_log "
            "WHERE experiment = ? ORDER BY round, updated_at",
            [experiment],
        )
        cols = [d[0] for d in cur.description]
        out = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    for r in out:
        r["details"] = json.loads(r["details"]) if r["details"] else {}
    return out
