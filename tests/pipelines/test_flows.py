"""The flows under one session-scoped Prefect test harness: lineage, run ids, artifacts, retries, atomicity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipelines import steps
from pipelines.config import CleanParams, IngestParams, RetryConfig
from pipelines.flows import clean_flow, ingest_flow, run_clean, run_ingest
from storage import publish
from storage.workspace import Workspace

pytestmark = pytest.mark.usefixtures("prefect_harness")
FAST = RetryConfig(retries=2, delay_s=0.0, jitter=0.0)


def _artifacts(flow_run_id: str) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in arts if a.key}


def test_ingest_then_clean_records_runs_params_and_artifacts(tmp_path: Path, hh_with_broken: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    raw = run_ingest([str(hh_with_broken)], "hh_raw", workspace=ws.root)
    assert raw.flow_run and raw.input_rows == 302 and raw.quarantined >= 2
    assert raw.params["flow_parameters"]["dataset"] == "hh_raw"
    assert raw.params["inputs"][0]["xxh3"] == steps.file_hash(hh_with_broken)
    assert any("{not json" in (r or "") for r in ws.read_quarantine(raw.snapshot_id).column("raw").to_pylist())
    arts = _artifacts(raw.flow_run)
    assert arts["counts-hh-raw"].type == "table" and "quarantined" in str(arts["counts-hh-raw"].data)
    assert arts["report-hh-raw"].type == "markdown" and "| quarantined |" in arts["report-hh-raw"].data

    clean = run_clean(raw.snapshot_id, workspace=ws.root)
    assert clean.flow_run and clean.flow_run != raw.flow_run
    assert clean.parents == [raw.snapshot_id] and clean.kind == "clean"
    assert clean.kept + clean.rejected == raw.kept
    assert clean.params["flow_parameters"]["ref"] == raw.snapshot_id
    arts = _artifacts(clean.flow_run)
    assert set(arts) == {"counts-hh", "length-bias-hh", "report-hh"}
    assert "rejected" in str(arts["counts-hh"].data)
    assert "frac_chosen_longer" in str(arts["length-bias-hh"].data)
    # The report renders in the UI itself: Markdown tables and the report's plots inlined as PNG data URIs,
    # linking the full HTML over http (a browser refuses file:// from the UI page).
    report = arts["report-hh"]
    assert report.type == "markdown" and "file://" not in report.data
    assert "| kept |" in report.data and "frac_chosen_longer" in report.data
    assert report.data.count("](data:image/png;base64,") >= 2
    rel = (clean.path / "report.html").relative_to(ws.root.resolve()).as_posix()
    assert f"http://127.0.0.1:8765/{rel}" in report.data

    # A second run on the same input is a cache hit: same snapshot, nothing new written, still an artifact.
    again = run_ingest([str(hh_with_broken)], "hh_raw", workspace=ws.root)
    assert again.snapshot_id == raw.snapshot_id
    assert again.flow_run == raw.flow_run  # the run that made it, not the run that found it
    assert len(ws.list_snapshots()) == 2


def test_flaky_reader_is_retried_within_the_run(tmp_path: Path, hh_small: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = steps.read_sources

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("network share went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(steps, "read_sources", flaky)
    info = ingest_flow(IngestParams(paths=[str(hh_small)], dataset="hh_raw", workspace=str(tmp_path / "ws"),
                                    retry=FAST))
    assert calls["n"] == 2 and info.snapshot_id == "hh_raw@1"


def test_failed_publish_leaves_nothing_and_the_rerun_completes(tmp_path: Path, hh_small: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace(tmp_path / "ws")
    raw = steps.ingest(ws, [str(hh_small)], "hh_raw")

    def broken_commit(*args: Any, **kwargs: Any) -> Any:
        raise OSError("disk full")

    params = CleanParams(ref="hh_raw", workspace=str(ws.root), retry=RetryConfig(retries=0))
    with monkeypatch.context() as m:
        m.setattr(publish, "_commit", broken_commit)  # the catalog transaction of storage/publish.py
        with pytest.raises(OSError, match="disk full"):
            clean_flow(params)
    assert ws.list_snapshots("hh") == []
    assert not (ws.root / "snapshots" / "hh").exists()
    assert list((ws.root / ".tmp").iterdir()) == []

    info = clean_flow(params)  # the retried run
    assert info.snapshot_id == "hh@1" and info.parents == [raw.snapshot_id]


def test_publish_failing_once_is_retried(tmp_path: Path, hh_small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace(tmp_path / "ws")
    steps.ingest(ws, [str(hh_small)], "hh_raw")
    real = publish._commit
    calls = {"n": 0}

    def once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("catalog busy")
        return real(*args, **kwargs)

    monkeypatch.setattr(publish, "_commit", once)
    info = clean_flow(CleanParams(ref="hh_raw", workspace=str(ws.root), retry=FAST))
    assert calls["n"] == 2 and [s.snapshot_id for s in ws.list_snapshots("hh")] == [info.snapshot_id]
