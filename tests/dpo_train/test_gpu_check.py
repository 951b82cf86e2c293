"""benchmarks/gpu_check.py's smoke mode runs on CPU and its checks pass (the GPU run itself needs a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_smoke_mode_passes_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--tiny", "--skip-trl",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(out.read_text())
    assert summary["bf16_trains"]["moved"] > 0.95 > summary["bf16_trains"]["old_bf16_moved"]
    assert summary["bf16_trains"]["loss_last"] < summary["bf16_trains"]["loss_first"]
    assert summary["fsdp_one_device"]["full_state_shapes_ok"]
    assert summary["speed"]["tokens_per_s"] > 0 and summary["trl"]["skipped"] == "--skip-trl"
