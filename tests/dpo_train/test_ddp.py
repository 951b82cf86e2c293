"""DDP on CPU (gloo): 2 processes give the same per-step losses as 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from train_pairs import pair_table

from dpo_train.trainer import TrainConfig, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, cfg: dict, out: str) -> None:
    from storage.workspace import Workspace

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    res = train(TrainConfig.from_dict(cfg), Workspace(root))
    if rank == 0:
        Path(out).write_text(json.dumps({str(k): v for k, v in res.losses.items()}))


@pytest.mark.slow
def test_two_processes_match_one(workspace, tiny_model_dir, tmp_path):
    workspace.publish("toy", pair_table(16))
    base = dict(snapshot="toy@1", model=str(tiny_model_dir), lr=3e-3, max_length=96, max_prompt_length=48,
                epochs=1, save_steps=2, report=False, device="cpu")
    single = train(TrainConfig(**base, per_device_batch_size=2, grad_accum=2, run_id="one"), workspace)
    out = tmp_path / "losses.json"
    cfg = {**base, "per_device_batch_size": 1, "grad_accum": 2, "run_id": "two", "distributed": "ddp"}
    mp.start_processes(_worker, args=(2, _free_port(), str(workspace.root), cfg, str(out)), nprocs=2,
                       start_method="spawn", join=True)
    two = {int(k): v for k, v in json.loads(out.read_text()).items()}
    assert len(two) == single.steps == 4
    for step, loss in single.losses.items():
        assert two[step] == pytest.approx(loss, abs=1e-5)
    run = workspace.sql("SELECT status FROM runs WHERE run_id = 'two'").column(0).to_pylist()
    assert run == ["finished"]
