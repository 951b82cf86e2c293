"""Scale-out: the clean flow runs the whole gate on a local Dask cluster and publishes what one process publishes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import steps
from pipelines.config import RunnerConfig
from pipelines.flows import run_clean
from storage.workspace import Workspace

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _raw(root: Path, shared_data: Path) -> Workspace:
    ws = Workspace(root)
    ann = shared_data / "alpaca_eval" / "annotations"
    steps.ingest(ws, [str(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz"),
                      str(ann / "alpaca-7b_verbose__weighted_alpaca_eval_gpt4_turbo.json.gz")], "mix_raw")
    return ws


def _rejects(ws: Workspace, ref: str) -> list[tuple]:
    t = ws.read_rejects(ref)
    cols = [t.column(c).to_pylist() for c in ("pair_id", "rule", "reason", "duplicate_of")]
    return sorted(zip(*cols, strict=True), key=repr)


def test_sharded_dask_clean_equals_single_process(tmp_path: Path, shared_data: Path) -> None:
    single_ws, dask_ws = _raw(tmp_path / "single", shared_data), _raw(tmp_path / "dask", shared_data)
    single = run_clean("mix_raw", workspace=single_ws.root)
    runner = RunnerConfig(kind="dask", n_workers=2, processes=False, shards=4)
    sharded = run_clean("mix_raw", workspace=dask_ws.root, runner=runner)
    assert sharded.flow_run != single.flow_run
    assert sharded.content_hash == single.content_hash
    assert (sharded.kept, sharded.rejected) == (single.kept, single.rejected)
    assert _rejects(dask_ws, sharded.snapshot_id) == _rejects(single_ws, single.snapshot_id)
    assert sharded.params["flow_parameters"]["runner"]["kind"] == "dask"
    recorded = steps.recorded_gate_stats(sharded)
    assert recorded is not None and recorded["executor"] == "cluster"  # every phase ran on the cluster
    assert recorded["checks"]["near_dup"]["candidates"] == steps.recorded_gate_stats(single)["checks"]["near_dup"][
        "candidates"]


@pytest.mark.slow
def test_dask_worker_processes(tmp_path: Path, shared_data: Path) -> None:
    """Worker processes (the default for kind = "dask"): tasks and tables travel by pickle."""
    single_ws, dask_ws = _raw(tmp_path / "single", shared_data), _raw(tmp_path / "dask", shared_data)
    single = steps.clean(single_ws, "mix_raw")
    runner = RunnerConfig(kind="dask", n_workers=2, processes=True, shards=3)
    sharded = run_clean("mix_raw", workspace=dask_ws.root, runner=runner)
    assert sharded.content_hash == single.content_hash
