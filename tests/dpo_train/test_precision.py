"""dtype=bfloat16 trains: bf16 compute over float32 master weights, so lr-1e-6 updates accumulate (on CPU too)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from train_pairs import pair_table

from dpo_train.trainer import TrainConfig, train

LR = 1e-6


def _moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    changed = sum(int((after[k].float() != before[k].float()).sum()) for k in before)
    return changed / sum(v.numel() for v in before.values())


def _bf16_weights_adamw(state: dict[str, torch.Tensor], steps: int) -> float:
    """The old path's arithmetic: bf16 parameters stepped directly by AdamW (no fp32 master copy)."""
    start = {k: v.to(torch.bfloat16) for k, v in state.items()}
    params = [torch.nn.Parameter(v.clone()) for v in start.values()]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(torch.bfloat16)
        opt.step()
    return _moved(start, {k: p.detach() for k, p in zip(start, params, strict=True)})


def test_bf16_moves_the_weights_and_lowers_the_loss_at_lr_1e6(workspace, tiny_model_dir):
    # one batch of 4 pairs seen 10 times: the loss must fall below log 2 (policy == reference at step 0)
    workspace.publish("toy", pair_table(4))
    cfg = TrainConfig(snapshot="toy@1", model=str(tiny_model_dir), lr=LR, per_device_batch_size=4, max_length=96,
                      max_prompt_length=48, epochs=10, save_steps=0, report=False, device="cpu", dtype="bfloat16",
                      max_grad_norm=0.0, scheduler="constant", run_id="bf16")
    res = train(cfg, workspace)
    losses = [res.losses[s] for s in sorted(res.losses)]
    assert losses[0] == pytest.approx(0.6931471805599453, abs=1e-6)  # step-0 check: same bf16 compute both sides
    assert losses[-1] < losses[0]
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(res.checkpoint / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in after.values())  # the master weights are saved, in fp32
    assert _moved(before, after) > 0.95
    assert _bf16_weights_adamw(before, 10) < 0.2  # what bf16 weights do with the same lr: most never move
