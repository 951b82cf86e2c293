"""Issue 9 item 8: one run per (snapshot content, model content, config, code version).

Before: another config on a finished run's --output-dir trained 0 steps, reported success and rewrote the old
checkpoint's train_config.json; new weights at the same model path or new code silently resumed the old run; two
identical `dpo train` at once shared one folder; a killed run stayed `running` forever.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from train_pairs import pair_table
from transformers import AutoModelForCausalLM

from dpo_train import checkpoints as ckpt
from dpo_train.trainer import TrainConfig, train
from storage import artefacts, runs
from storage.locks import FileLock


def _cfg(model, **kw):
    base = dict(snapshot="toy", model=str(model), lr=1e-3, per_device_batch_size=4, max_length=96,
                max_prompt_length=48, max_steps=2, save_steps=0, report=False)
    return TrainConfig(**{**base, **kw})


def _status(ws, run_id):
    return ws.sql(f"SELECT status FROM runs WHERE run_id = '{run_id}'").column(0).to_pylist()  # noqa: S608


def _files(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the run lock's (it names whoever last held it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != runs.RUN_LOCK}


def test_other_config_on_a_used_output_dir_is_refused(workspace, tiny_model_dir, tmp_path):
    workspace.publish("toy", pair_table(16))
    out = tmp_path / "out"
    first = train(_cfg(tiny_model_dir, output_dir=str(out)), workspace)
    before = _files(out)
    with pytest.raises(ValueError, match=r"holds run .* other settings.*config\.lr") as err:
        train(_cfg(tiny_model_dir, output_dir=str(out), lr=5e-4), workspace)
    assert "--output-dir" in str(err.value)
    assert _files(out) == before  # train_config.json and the weights still say how they were trained
    assert _status(workspace, first.run_id) == ["finished"]


def test_rerunning_a_finished_run_resumes_it_and_rewrites_nothing(workspace, tiny_model_dir, tmp_path):
    workspace.publish("toy", pair_table(16))
    first = train(_cfg(tiny_model_dir), workspace)
    ckpt_files = _files(first.checkpoint)
    again = train(_cfg(tiny_model_dir), workspace)
    assert again.run_id == first.run_id and again.checkpoint == first.checkpoint
    assert again.losses == {} and again.steps == first.steps
    assert _files(first.checkpoint) == ckpt_files
    assert workspace.sql("SELECT count(*) AS n FROM runs").to_pylist() == [{"n": 1}]


def test_new_weights_at_the_same_path_do_not_resume(workspace, tiny_model_dir, tmp_path):
    workspace.publish("toy", pair_table(16))
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    first = train(_cfg(model, max_steps=2, save_steps=1, save_total_limit=0), workspace)
    # new weights written where the old ones were
    m = AutoModelForCausalLM.from_pretrained(model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01)
    m.save_pretrained(model)
    second = train(_cfg(model, max_steps=2, save_steps=1, save_total_limit=0), workspace)
    assert second.run_id != first.run_id and min(second.losses) == 0  # a new run from step 0
    assert second.output_dir != first.output_dir
    with pytest.raises(ValueError, match="model_fingerprint"):
        train(_cfg(model, output_dir=str(first.output_dir), max_steps=2, save_steps=1, save_total_limit=0),
              workspace)


def test_new_code_does_not_resume(workspace, tiny_model_dir, monkeypatch):
    workspace.publish("toy", pair_table(16))
    first = train(_cfg(tiny_model_dir, max_steps=3, save_steps=1), workspace)
    monkeypatch.setattr(ckpt, "code_version", lambda: "another-version")
    second = train(_cfg(tiny_model_dir, max_steps=3, save_steps=1), workspace)
    assert second.run_id != first.run_id and min(second.losses) == 0
    with pytest.raises(ValueError, match="code_version"):
        train(_cfg(tiny_model_dir, max_steps=3, run_id=first.run_id), workspace)


def test_two_identical_runs_at_once_are_serialised(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(16))
    cfg = _cfg(tiny_model_dir)
    refused: list[str] = []

    def start_the_same_run(step: int, _metrics: dict) -> None:
        if step == 1:
            with pytest.raises(ValueError, match="already training") as err:
                train(cfg, workspace)
            refused.append(str(err.value))

    res = train(cfg, workspace, on_step=start_the_same_run)
    assert refused and f"pid {os.getpid()}" in refused[0]
    assert len(artefacts.list_artefacts(workspace.root)) == 1  # one reference computation, one artefact
    assert [s.snapshot_id for s in workspace.list_snapshots()] == ["toy@1"]
    assert _status(workspace, res.run_id) == ["finished"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_process_run_is_marked_interrupted(workspace, tmp_path):
    host = socket.gethostname()
    held_dir, free_dir = tmp_path / "held", tmp_path / "free"
    for d in (held_dir, free_dir):
        d.mkdir()
    (free_dir / runs.RUN_LOCK).write_text("{}")  # a lock file its process left: not held
    for run_id, out, pid in (("dead-pid", str(tmp_path / "gone"), _dead_pid()), ("free-lock", str(free_dir), None),
                             ("held-lock", str(held_dir), None), ("other-host", None, 1)):
        runs.record_run(workspace.root, run_id, kind="dpo", snapshot_id=None, model=None, config={},
                        code_version=None, status="running", output_dir=out)
        with runs.catalog.connect(workspace.root) as con:
            con.execute("UPDATE runs SET pid = ?, host = ? WHERE run_id = ?",
                        [pid, "elsewhere" if run_id == "other-host" else host, run_id])
    with FileLock(held_dir / runs.RUN_LOCK):
        assert sorted(runs.mark_dead_runs(workspace.root)) == ["dead-pid", "free-lock"]
    assert _status(workspace, "dead-pid") == ["interrupted"] and _status(workspace, "free-lock") == ["interrupted"]
    assert _status(workspace, "held-lock") == ["running"] and _status(workspace, "other-host") == ["running"]


KILLED_RUN = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from train_pairs import pair_table
from dpo_train import checkpoints
from dpo_train.trainer import TrainConfig, train
from storage.workspace import Workspace
checkpoints.code_version = lambda: "pinned"  # both processes run the same code even if a commit lands between
ws = Workspace({ws!r})
cfg = TrainConfig(**{cfg!r})
def kill_at_3(step, _metrics):
    if step == 3:
        os.kill(os.getpid(), signal.SIGKILL)
train(cfg, ws, on_step=kill_at_3)
"""


@pytest.mark.slow
def test_kill_9_then_rerun_marks_interrupted_and_resumes(workspace, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(ckpt, "code_version", lambda: "pinned")
    workspace.publish("toy", pair_table(24))
    kw = dict(model=str(tiny_model_dir), snapshot="toy", lr=3e-3, per_device_batch_size=4, grad_accum=2,
              max_length=96, max_prompt_length=48, epochs=2, save_steps=2, save_total_limit=0, report=False)
    script = textwrap.dedent(KILLED_RUN).format(tests=str(Path(__file__).parent), ws=str(workspace.root), cfg=kw)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == -9, proc.stderr[-2000:]
    (run_id,) = workspace.sql("SELECT run_id FROM runs WHERE status = 'running'").column(0).to_pylist()
    assert runs.mark_dead_runs(workspace.root) == [run_id]
    assert _status(workspace, run_id) == ["interrupted"]
    resumed = train(TrainConfig(**kw), workspace)
    assert resumed.run_id == run_id and min(resumed.losses) == 2  # from checkpoint-000002
    assert _status(workspace, run_id) == ["finished"]


def test_cli_refuses_another_config_on_a_used_output_dir(workspace, tiny_model_dir, tmp_path, capsys):
    from pipelines.cli import main

    workspace.publish("toy", pair_table(8))
    toml = tmp_path / "train.toml"
    toml.write_text("[train]\nmax_length = 96\nmax_prompt_length = 48\nreport = false\n")
    args = ["-w", str(workspace.root), "train", "--snapshot", "toy", "--model", str(tiny_model_dir),
            "--output-dir", str(tmp_path / "out"), "--max-steps", "1", "--config", str(toml)]
    assert main(args) == 0
    assert main(args) == 0 and "already finished at step 1" in capsys.readouterr().out
    assert main([*args, "--loss", "ipo"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "config.loss" in err and "Traceback" not in err


def test_model_fingerprint_is_content_not_path(tiny_model_dir, tmp_path):
    from dpo_train.reference import model_fingerprint

    moved = tmp_path / "moved"
    shutil.copytree(tiny_model_dir, moved)
    assert model_fingerprint(moved) == model_fingerprint(tiny_model_dir)  # a moved model keeps its runs
    (moved / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    assert model_fingerprint(moved) != model_fingerprint(tiny_model_dir)  # another tokenizer/template: new run
