"""`examples/refresh.toml` end to end: real data into raw + clean snapshots; a second run writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import load_refresh_config
from pipelines.flows import run_refresh
from storage.workspace import Workspace

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "refresh.toml"
pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_example_refresh_is_idempotent(tmp_path: Path, shared_data: Path) -> None:
    cfg = load_refresh_config(EXAMPLE)
    assert cfg.schedule is not None
    ws = Workspace(tmp_path / "ws")
    first = run_refresh(EXAMPLE, workspace=ws.root)
    ids = [i.snapshot_id for i in first]
    assert ids == ["hh_raw@1", "hh@1", "alpaca_eval_raw@1", "alpaca_eval@1"]
    hh_raw, hh, _, alpaca = first
    assert hh_raw.input_rows == 2312 and hh.parents == ["hh_raw@1"] and hh.kind == "clean"
    assert alpaca.params["margins"]["min_preference_prob"] == 0.55
    assert all(i.flow_run for i in first)
    assert len({i.flow_run for i in first}) == 4  # each snapshot names the (sub)flow run that made it
    files = sorted(p.relative_to(ws.root) for p in (ws.root / "snapshots").rglob("*"))

    second = run_refresh(EXAMPLE, workspace=ws.root)
    assert [i.snapshot_id for i in second] == ids
    assert [i.flow_run for i in second] == [i.flow_run for i in first]
    assert len(ws.list_snapshots()) == 4
    assert sorted(p.relative_to(ws.root) for p in (ws.root / "snapshots").rglob("*")) == files
