"""Tokenisation, masking, truncation accounting, template checks, batch order and the joint forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from train_pairs import pair_table
from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_train.batching import (
    IGNORE,
    collate,
    concatenated_forward,
    epoch_order,
    split_global_batch,
    tokenize_pairs,
)
from storage.schema import build_pair_table


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_masks_and_template(tok):
    data = tokenize_pairs(pair_table(4), tok, max_length=128, max_prompt_length=64)
    assert data.stats.kept == 4 and data.stats.prompt_not_prefix == 0
    assert all(p[0] == tok.bos_token_id and p.count(tok.bos_token_id) == 1 for p in data.prompt)
    assert all(c[-1] == tok.eos_token_id and c.count(tok.eos_token_id) == 1 for c in data.chosen)
    b = collate(data, np.arange(4), tok.pad_token_id)
    assert b["input_ids"].shape[0] == 8
    for row in range(8):
        i = row % 4
        answer = data.chosen[i] if row < 4 else data.rejected[i]
        labelled = b["labels"][row][b["labels"][row] != IGNORE].tolist()
        assert labelled == answer  # exactly the answer tokens (incl. EOS) are scored; prompt and pads masked
        assert b["labels"][row, : len(data.prompt[i])].eq(IGNORE).all()


def test_truncation_counts_and_modes(tok):
    table = pair_table(6, long_prompts=2)
    end = tokenize_pairs(table, tok, max_length=64, max_prompt_length=32, truncation_mode="keep_end")
    start = tokenize_pairs(table, tok, max_length=64, max_prompt_length=32, truncation_mode="keep_start")
    for d in (end, start):
        assert d.stats.prompt_truncated == 2 and d.stats.kept == 6
        assert all(len(p) + max(len(c), len(r)) <= 64 for p, c, r in zip(d.prompt, d.chosen, d.rejected, strict=True))
        assert len(d.prompt[0]) == 32 and d.prompt[0][0] == tok.bos_token_id
    full = tokenize_pairs(table, tok, max_length=4096, max_prompt_length=2048).prompt[0]
    assert end.prompt[0][1:] == full[-31:]
    assert start.prompt[0] == full[:32]
    # an answer longer than the room left is cut and counted
    long = build_pair_table({"prompt": [[{"role": "user", "content": "hi"}]], "chosen": ["bread " * 200],
                             "rejected": ["no"], "source": ["t"], "source_row": [0]})
    d = tokenize_pairs(long, tok, max_length=32, max_prompt_length=16)
    assert d.stats.answer_truncated == 1 and len(d.prompt[0]) + len(d.chosen[0]) == 32


def test_double_eos_and_drop_reported(tok, caplog):
    table = build_pair_table({"prompt": [[{"role": "user", "content": "hi " * 50}], [{"role": "user", "content": "a"}]],
                              "chosen": ["yes" + tok.eos_token, "ok"], "rejected": ["no", "nope"],
                              "source": ["t", "t"], "source_row": [0, 1]})
    d = tokenize_pairs(table, tok, max_length=200, max_prompt_length=100)
    assert d.stats.double_eos_fixed == 1 and d.chosen[0].count(tok.eos_token_id) == 1
    with caplog.at_level("WARNING"):
        d = tokenize_pairs(table, tok, max_length=40, max_prompt_length=39, truncation_mode="keep_start")
    assert d.stats.kept == 2 and d.stats.prompt_truncated == 1
    assert "prompt_truncated" in caplog.text


def test_weights_normalised_to_mean_one(tok):
    d = tokenize_pairs(pair_table(4, weights=[1.0, 1.0, 3.0, 3.0]), tok, max_length=128, max_prompt_length=64)
    assert d.weights.tolist() == [0.5, 0.5, 1.5, 1.5]
    with pytest.raises(ValueError, match="must be > 0"):
        tokenize_pairs(pair_table(2, weights=[1.0, 0.0]), tok, max_length=128, max_prompt_length=64)


def test_epoch_order_deterministic_and_grouped():
    lengths = np.random.default_rng(0).integers(10, 100, 100)
    a = epoch_order(lengths, 8, seed=1, epoch=0)
    assert [x.tolist() for x in a] == [x.tolist() for x in epoch_order(lengths, 8, seed=1, epoch=0)]
    assert [x.tolist() for x in a] != [x.tolist() for x in epoch_order(lengths, 8, seed=1, epoch=1)]
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    assert len(epoch_order(lengths, 8, seed=1, epoch=0, drop_last=True)) == 12
    parts = split_global_batch(np.arange(8), world=2, rank=1, micro=2)
    assert [p.tolist() for p in parts] == [[1, 3], [5, 7]]


def test_concatenated_forward_matches_separate_forwards(tok, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    data = tokenize_pairs(pair_table(3), tok, max_length=128, max_prompt_length=64)
    out = concatenated_forward(model, collate(data, np.arange(3), tok.pad_token_id))
    for i in range(3):
        for name, answers in (("chosen", data.chosen), ("rejected", data.rejected)):
            ids = torch.tensor([data.prompt[i] + answers[i]])
            logits = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            targets = ids[0, 1:]
            expect = logits[torch.arange(len(targets)), targets][len(data.prompt[i]) - 1:].sum()
            assert out[f"{name}_logps"][i].item() == pytest.approx(expect.item(), abs=1e-4)
            assert out[f"{name}_lengths"][i].item() == len(answers[i])
