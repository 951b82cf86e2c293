"""Shared-prompt rows give the unshared log-probs and gradients; the fused log-prob backward is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_pairs import pair_table
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_train.batching import IGNORE, collate, concatenated_forward, tokenize_pairs
from dpo_train.logps import target_logps
from dpo_train.prefix import attention_mask, collate_shared, shared_forward
from dpo_train.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_shared_prefix_logps_and_grads_equal_unshared(tok, tiny_model_dir, impl):
    data = tokenize_pairs(pair_table(5, seed=3), tok, max_length=128, max_prompt_length=64)
    assert len({len(p) for p in data.prompt}) > 1  # prompts of different lengths: per-row positions matter
    idx = np.arange(5)
    results = []
    for collate_fn, forward in ((collate, concatenated_forward), (collate_shared, shared_forward)):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=impl).double()
        out = forward(model, collate_fn(data, idx, tok.pad_token_id))
        (out["chosen_logps"] * 0.3 - out["rejected_logps"] * 0.7).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((out, grads))
    (a, ga), (b, gb) = results
    # float64 weights, but transformers computes the rotary angles in float32 with a matmul whose rounding
    # depends on the batch shape: the two layouts agree to ~1e-8 relative, not to float64 precision
    for k in ("chosen_logps", "rejected_logps"):
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    for k in ("chosen_lengths", "rejected_lengths"):
        assert a[k].tolist() == b[k].tolist() == [len(x) for x in (data.chosen if "chosen" in k else data.rejected)]
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-6)


def test_shared_layout_masks_and_positions(tok):
    data = tokenize_pairs(pair_table(2), tok, max_length=128, max_prompt_length=64)
    b = collate_shared(data, np.arange(2), tok.pad_token_id)
    p, c, r = (len(x[0]) for x in (data.prompt, data.chosen, data.rejected))
    allowed = attention_mask(b["segment"], torch.float32)[0, 0] == 0
    assert not allowed[p + c:p + c + r, p:p + c].any()  # rejected never sees chosen
    assert allowed[p + c:p + c + r, :p].all()  # but sees the whole prompt
    assert b["position_ids"][0, p + c].item() == p  # rejected positions restart after the prompt
    assert b["rejected_labels"][0, p - 1].item() == data.rejected[0][0]
    assert b["chosen_labels"][0, p - 1].item() == data.chosen[0][0]
    assert (b["chosen_labels"][0] != IGNORE).sum().item() == c
    assert (b["rejected_labels"][0] != IGNORE).sum().item() == r


def test_target_logps_matches_autograd_log_softmax():
    torch.manual_seed(0)
    x = torch.randn(3, 70, 11, dtype=torch.float64, requires_grad=True)  # > one chunk of rows
    labels = torch.randint(0, 11, (3, 70, 2))
    labels[0, :5] = IGNORE
    labels[1, 3, 1] = IGNORE
    w = torch.randn(3, 70, 2, dtype=torch.float64)
    ours = (target_logps(x, labels, IGNORE) * w).sum()
    valid = labels != IGNORE
    ref = (torch.gather(x.log_softmax(-1), -1, labels.clamp(min=0)) * valid * w).sum()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(ref, x)[0])
    small = x[:1, :8].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: target_logps(t, labels[:1, :8], IGNORE), (small,))


def test_trainer_losses_same_with_and_without_sharing(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(8))
    base = dict(snapshot="toy@1", model=str(tiny_model_dir), lr=1e-3, per_device_batch_size=4, max_length=96,
                max_prompt_length=48, max_steps=2, save_steps=0, report=False, group_by_length=False)
    on = train(TrainConfig(**base, run_id="on"), workspace)
    off = train(TrainConfig(**base, run_id="off", share_prompt=False), workspace)
    assert list(on.losses.values()) == pytest.approx(list(off.losses.values()), abs=1e-5)
