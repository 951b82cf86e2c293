"""The loop: sample weights reach the gradient, NaN guard, SFT mode, LoRA, on-the-fly reference, config."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from train_pairs import pair_table

from dpo_train.trainer import TrainConfig, train


def _cfg(model, **kw):
    base = dict(snapshot="toy@1", model=str(model), lr=1e-3, per_device_batch_size=4, max_length=96,
                max_prompt_length=48, max_steps=3, save_steps=0, report=False)
    return TrainConfig(**{**base, **kw})


def test_config_is_strict():
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        TrainConfig.from_dict({"snapshot": "x", "learning_rat": 1.0})
    with pytest.raises(ValueError, match="loss must be one of"):
        TrainConfig(loss="nope")
    assert TrainConfig.from_dict({"beta": 0.3}).beta == 0.3


def test_weights_reach_the_gradient(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(8))
    workspace.publish("uniform5", pair_table(8, weights=[5.0] * 8))
    workspace.publish("skewed", pair_table(8, weights=[1.0] * 4 + [10.0] * 4))
    base = train(_cfg(tiny_model_dir, run_id="base"), workspace).losses
    same = train(_cfg(tiny_model_dir, snapshot="uniform5@1", run_id="u"), workspace).losses
    skew = train(_cfg(tiny_model_dir, snapshot="skewed@1", run_id="s"), workspace).losses
    assert same == pytest.approx(base, abs=1e-6)  # weights are normalised to mean 1: a constant is a no-op
    assert skew[1] != pytest.approx(base[1], abs=1e-4)  # skewed weights changed the first update
    off = train(_cfg(tiny_model_dir, snapshot="skewed@1", run_id="off", use_weights=False), workspace).losses
    assert off == pytest.approx(base, abs=1e-6)


def test_nan_guard_stops_clearly(workspace, tiny_model_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tiny_model_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    weights = load_file(bad / "model.safetensors")
    key = next(k for k in weights if "embed" in k)
    weights[key][:] = float("nan")
    save_file(weights, bad / "model.safetensors", metadata={"format": "pt"})
    workspace.publish("toy", pair_table(8))
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 0"):
        train(_cfg(bad, loss="reference_free", run_id="nan"), workspace)
    status = workspace.sql("SELECT status FROM runs WHERE run_id = 'nan'").column("status").to_pylist()
    assert status == ["failed"]


def test_sft_mode_lowers_nll_and_makes_a_reference(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(16))
    res = train(_cfg(tiny_model_dir, mode="sft", lr=1e-2, max_steps=8, run_id="sft"), workspace)
    losses = list(res.losses.values())
    assert losses[-1] < losses[0]
    # the SFT checkpoint serves as policy and reference of a DPO run (step-0 check passes)
    dpo = train(_cfg(res.checkpoint, run_id="dpo-from-sft", max_steps=1), workspace)
    assert dpo.losses[0] == pytest.approx(0.6931471805599453, abs=1e-5)


def test_on_the_fly_reference_equals_cached(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(8))
    cached = train(_cfg(tiny_model_dir, run_id="c"), workspace)
    live = train(_cfg(tiny_model_dir, run_id="l", precompute_reference=False), workspace)
    assert not live.reference_computed and live.snapshot_id == "toy@1"
    assert list(live.losses.values()) == pytest.approx(list(cached.losses.values()), abs=1e-5)


def test_lora_reference_is_base_with_adapters_off(workspace, tiny_model_dir):
    workspace.publish("toy", pair_table(8))
    kw = dict(lora=True, lora_r=4, lora_target_modules=["q_proj", "v_proj"], lr=1e-2)
    live = train(_cfg(tiny_model_dir, run_id="lora-live", precompute_reference=False, **kw), workspace)
    cached = train(_cfg(tiny_model_dir, run_id="lora-cached", **kw), workspace)
    assert live.losses[0] == pytest.approx(0.6931471805599453, abs=1e-5)
    assert list(live.losses.values()) == pytest.approx(list(cached.losses.values()), abs=1e-5)
    assert (live.checkpoint / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("loss", ["ipo", "hinge", "robust", "simpo", "orpo", "reference_free"])
def test_every_loss_trains(workspace, tiny_model_dir, loss):
    workspace.publish("toy", pair_table(8))
    res = train(_cfg(tiny_model_dir, run_id=loss, loss=loss, max_steps=2, label_smoothing=0.1), workspace)
    assert all(torch.isfinite(torch.tensor(v)) for v in res.losses.values())
