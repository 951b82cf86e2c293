"""Checkpoints: HF format + safe trainer state, and a killed run resumes onto the identical loss curve."""

from __future__ import annotations

import json

import pytest
import torch
from train_pairs import pair_table
from transformers import AutoModelForCausalLM

from dpo_train.checkpoints import STATE_FILE, list_checkpoints, load_state
from dpo_train.trainer import TrainConfig, train


def _cfg(model, **kw):
    base = dict(snapshot="toy@1", model=str(model), lr=3e-3, per_device_batch_size=4, grad_accum=2,
                max_length=96, max_prompt_length=48, epochs=2, save_steps=2, save_total_limit=0,
                warmup_steps=2, report=False)
    return TrainConfig(**{**base, **kw})


def test_resume_after_kill_gives_identical_losses(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(24))
    full = train(_cfg(tiny_model_dir, run_id="full"), workspace)
    assert full.steps == 6

    class Killed(KeyboardInterrupt):
        pass

    def kill_at_3(step: int, _metrics: dict) -> None:
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        train(_cfg(tiny_model_dir, run_id="killed"), workspace, on_step=kill_at_3)
    status = lambda: workspace.sql("SELECT status FROM runs WHERE run_id = 'killed'").column(0).to_pylist()  # noqa: E731
    assert status() == ["interrupted"]
    resumed = train(_cfg(tiny_model_dir, run_id="killed"), workspace)
    assert min(resumed.losses) == 2  # restarted from checkpoint-000002, not from scratch
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(full.losses[step], abs=1e-6)
    assert status() == ["finished"]
    # the catalog holds one value per step, the recomputed steps overwrote the interrupted ones
    sql = "SELECT step, value FROM metrics WHERE run_id = '{}' AND name = 'loss' ORDER BY step"
    a = workspace.sql(sql.format("full")).column("value").to_pylist()
    b = workspace.sql(sql.format("killed")).column("value").to_pylist()
    assert b == pytest.approx(a, abs=1e-6) and len(b) == 6


def test_checkpoint_layout_and_safe_loading(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(8))
    res = train(_cfg(tiny_model_dir, run_id="layout", epochs=1, save_steps=1, save_total_limit=1, report=True),
                workspace)
    assert [p.name for p in list_checkpoints(res.output_dir)] == ["checkpoint-000001"]
    ck = res.checkpoint
    assert (ck / "model.safetensors").exists() and not list(ck.glob("*.bin"))
    info = json.loads((ck / "run_info.json").read_text())
    assert info["snapshot_id"] == "toy@1" and info["reference_artefact"] and info["code_version"] and info["step"] == 1
    assert json.loads((ck / "train_config.json").read_text())["lr"] == 3e-3
    state = torch.load(ck / STATE_FILE, weights_only=True)  # only tensors and primitives inside
    assert state["step"] == 1 and load_state(ck)["step"] == 1 and "optimizer" in state
    AutoModelForCausalLM.from_pretrained(ck)
    html = (res.output_dir / "report.html").read_text()
    assert "data:image/png;base64" in html and "rewards/accuracy" in html
