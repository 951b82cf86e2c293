"""FSDP2 (fully_shard) and DDP on CPU (gloo, 2 processes) train the same loss curve as 1 process.

FSDP shards the parameters, so the optimizer must be built from the sharded ones (else nothing updates), the
checkpoint must be gathered collectively into a full HF model, and the reference pass is split across ranks.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from train_pairs import pair_table

from dpo_train.trainer import TrainConfig, train


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, runs: list[dict], out: str) -> None:
    from storage.workspace import Workspace

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    found = {}
    for cfg in runs:  # each train() joins and leaves the process group
        res = train(TrainConfig.from_dict(cfg), Workspace(root))
        found[cfg["run_id"]] = {"losses": res.losses, "checkpoint": str(res.checkpoint),
                                "computed": res.reference_computed}
    if rank == 0:
        Path(out).write_text(json.dumps(found))


@pytest.mark.slow
def test_fsdp_and_ddp_match_one_process_and_update_the_weights(workspace, tiny_model_dir, tmp_path):
    workspace.publish("toy", pair_table(16))
    base = dict(snapshot="toy@1", model=str(tiny_model_dir), lr=3e-3, max_length=96, max_prompt_length=48,
                epochs=1, save_steps=0, report=False, device="cpu", reference_batch_size=3)
    single = train(TrainConfig(**base, per_device_batch_size=2, grad_accum=2, run_id="one",
                               precompute_reference=False), workspace)
    out = tmp_path / "found.json"
    two = {**base, "per_device_batch_size": 1, "grad_accum": 2}
    # fsdp first: it computes the reference log-probs split over both ranks (no cached artefact yet)
    runs = [{**two, "run_id": "fsdp", "distributed": "fsdp"}, {**two, "run_id": "ddp", "distributed": "ddp"}]
    mp.start_processes(_worker, args=(2, _free_port(), str(workspace.root), runs, str(out)), nprocs=2,
                       start_method="spawn", join=True)
    found = json.loads(out.read_text())
    assert found["fsdp"]["computed"] and not found["ddp"]["computed"]  # the split pass was cached and reused
    initial = load_file(tiny_model_dir / "model.safetensors")
    for name in ("fsdp", "ddp"):
        losses = {int(k): v for k, v in found[name]["losses"].items()}
        assert len(losses) == single.steps == 4
        for step, loss in single.losses.items():
            assert losses[step] == pytest.approx(loss, abs=1e-5), (name, step)
        # the saved checkpoint is the full model (not a shard) and its weights moved
        saved = load_file(Path(found[name]["checkpoint"]) / "model.safetensors")
        assert set(saved) == set(initial)
        for key, value in initial.items():
            assert saved[key].shape == value.shape, key
        moved = sum(int((saved[k] != initial[k]).sum()) for k in initial)
        assert moved > 0.9 * sum(v.numel() for v in initial.values())
    one = load_file(single.checkpoint / "model.safetensors")
    fsdp = load_file(Path(found["fsdp"]["checkpoint"]) / "model.safetensors")
    for key in one:
        torch.testing.assert_close(fsdp[key], one[key], atol=1e-4, rtol=1e-3)  # Adam: summation-order noise
