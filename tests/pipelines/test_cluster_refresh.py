"""`dpo refresh --config examples/refresh-cluster.toml` (the whole gate on a local cluster of 2 worker processes the
command starts) publishes the clean snapshots `examples/refresh.toml` publishes in one process: same content hashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import steps
from pipelines.cli import main
from pipelines.config import load_refresh_config
from storage.workspace import Workspace

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_cluster_example_is_the_refresh_example_on_a_cluster() -> None:
    single, cluster = load_refresh_config(EXAMPLES / "refresh.toml"), load_refresh_config(EXAMPLES / "refresh-cluster.toml")
    assert cluster.sources == single.sources and cluster.gate == single.gate
    assert cluster.eval_prompts_file == single.eval_prompts_file
    assert single.runner.kind == "thread"
    r = cluster.runner
    assert r.kind == "dask" and r.n_workers >= 2 and r.processes and r.address is None  # a local multi-process cluster


@pytest.mark.slow
def test_refresh_on_a_cluster_publishes_the_same_clean_snapshots(tmp_path: Path, shared_data: Path) -> None:
    for name in ("refresh", "refresh-cluster"):
        assert main(["--workspace", str(tmp_path / name), "refresh", "--config", str(EXAMPLES / f"{name}.toml")]) == 0
    single, cluster = Workspace(tmp_path / "refresh"), Workspace(tmp_path / "refresh-cluster")
    for dataset in ("hh", "alpaca_eval"):
        a, b = single.resolve(dataset), cluster.resolve(dataset)
        assert b.kind == "clean" and b.kept > 0
        assert b.content_hash == a.content_hash, dataset
        assert (b.input_rows, b.kept, b.rejected) == (a.input_rows, a.kept, a.rejected)
        recorded, alone = steps.recorded_gate_stats(b), steps.recorded_gate_stats(a)
        assert recorded["executor"] == "cluster" and recorded["cluster"]["workers"] == 2
        assert alone["executor"] != "cluster"
        assert recorded["drops_by_reason"] == alone["drops_by_reason"]
