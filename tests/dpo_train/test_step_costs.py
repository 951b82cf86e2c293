"""Per-step costs that do not grow with the data: epoch order once per epoch, model hashing once per model
file identity (not every start on every rank), no B x T x T mask built on the host."""

from __future__ import annotations

import os

import numpy as np
from train_pairs import pair_table
from transformers import AutoTokenizer

import dpo_train.reference as reference
import dpo_train.trainer as trainer_mod
from dpo_train.batching import tokenize_pairs
from dpo_train.prefix import collate_shared
from dpo_train.preflight import cached_fingerprint
from dpo_train.trainer import TrainConfig


def test_epoch_order_is_computed_once_per_epoch(workspace, tiny_model_dir, monkeypatch):
    calls = []
    real = trainer_mod.epoch_order
    monkeypatch.setattr(trainer_mod, "epoch_order", lambda *a, **k: calls.append(k["epoch"]) or real(*a, **k))
    workspace.publish("toy", pair_table(16))
    cfg = TrainConfig(snapshot="toy@1", model=str(tiny_model_dir), lr=1e-3, per_device_batch_size=2, max_length=96,
                      max_prompt_length=48, epochs=2, save_steps=0, report=False, run_id="order")
    res = trainer_mod.train(cfg, workspace)
    assert res.steps == 16
    assert calls == [0, 0, 1]  # the step count, then one order per epoch (not one per step)


def test_model_fingerprint_is_cached_by_file_identity(tiny_model_dir, tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    for f in tiny_model_dir.iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    calls = []
    real = reference.model_fingerprint
    monkeypatch.setattr(reference, "model_fingerprint", lambda p: calls.append(p) or real(p))
    first = cached_fingerprint(model, tmp_path / "cache")
    assert cached_fingerprint(model, tmp_path / "cache") == first and len(calls) == 1  # second start: no hashing
    weights = model / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # the file was rewritten
    assert cached_fingerprint(model, tmp_path / "cache") == first and len(calls) == 2


def test_shared_rows_carry_no_square_mask(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = tokenize_pairs(pair_table(4), tok, max_length=96, max_prompt_length=48)
    batch = collate_shared(data, np.arange(4), tok.pad_token_id)
    width = batch["input_ids"].shape[1]
    assert all(v.dim() <= 2 and v.numel() <= 4 * width for v in batch.values())  # the mask is built on the device
