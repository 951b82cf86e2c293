"""`dpo experiment --quick`: the controlled experiment runs end to end and reports reward vs KL with errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipelines.cli import main


@pytest.mark.slow
def test_experiment_quick_prints_the_reward_vs_kl_table(tmp_path, shared_data, capsys):
    ws = tmp_path / "ws"
    assert main(["--workspace", str(ws), "experiment", "--quick", "--format", "json"]) == 0
    out = capsys.readouterr().out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    methods = [r["method"] for r in rows]
    assert methods[:2] == ["reference (SFT)", "best-of-3"]
    assert {"DPO beta=0.1", "DPO beta=0.5", "Preferred-FT", "iterative round 1"} <= set(methods)
    # each offline method also at half its steps: two points of its reward-vs-KL curve
    assert {"DPO beta=0.1 at step 1", "DPO beta=0.5 at step 1", "Preferred-FT at step 1"} <= set(methods)
    results = json.loads((ws / "experiments" / "experiment-quick" / "results.json").read_text())
    by = {r["method"]: r for r in results["rows"]}
    assert by["reference (SFT)"]["kl"] == 0.0  # the reference measured against itself
    assert by["best-of-3"]["kl"] == pytest.approx(math.log(3) - 2 / 3)
    for r in results["rows"]:
        assert r["reward_se"] is not None and r["kl"] >= 0 and r["kl_se"] is not None
    assert Path(results["workspace"]) == ws
    assert (ws / "experiments" / "experiment-quick" / "reward_vs_kl.png").stat().st_size > 1000
