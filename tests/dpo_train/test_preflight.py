"""Guards before work starts: typed config and TRL names, model paths, max_length vs the model's positions,
the shared-prompt layout on every position-embedding type, LoRA targets and one LoRA reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_CORPUS
from train_pairs import pair_table
from transformers import AutoModelForCausalLM, AutoTokenizer

import dpo_train.trainer as trainer_mod
from dpo_train.batching import collate, concatenated_forward, tokenize_pairs
from dpo_train.config import TRL_ALIASES, ConfigError, TrainConfig
from dpo_train.prefix import collate_shared, shared_forward
from dpo_train.preflight import ModelPathError, preflight, resolve_model
from dpo_train.tiny import make_tiny_model

LOG2 = 0.6931471805599453
POSITIONS = 40  # small, so the shared rows [prompt, chosen, rejected] are wider than GPT-2's position table


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: make_tiny_model(root / f, seed=0, corpus=TINY_CORPUS, vocab_size=512, n_layers=1, hidden=32, heads=2,
                               max_positions=POSITIONS, family=f)
            for f in ("gpt2", "llama", "qwen2", "bloom")}


def _cfg(model, **kw):
    base = dict(snapshot="toy@1", model=str(model), lr=1e-3, per_device_batch_size=4, max_length=POSITIONS,
                max_prompt_length=24, max_steps=2, save_steps=0, report=False, device="cpu")
    return TrainConfig(**{**base, **kw})


# -- typed configuration and TRL names ------------------------------------------------------------------------

def test_wrong_types_name_the_key_and_the_type():
    with pytest.raises(ConfigError, match=r"lr: expected float, got str '1e-4'"):
        TrainConfig.from_dict({"lr": "1e-4"})
    with pytest.raises(ConfigError, match=r"max_length: expected int, got float 512.5"):
        TrainConfig(max_length=512.5)
    with pytest.raises(ConfigError, match=r"share_prompt: expected bool, got int"):
        TrainConfig.from_dict({"share_prompt": 1})
    assert TrainConfig.from_dict({"lr": 1}).lr == 1.0 and isinstance(TrainConfig.from_dict({"lr": 1}).lr, float)


def test_trl_dpoconfig_names_mean_the_same_settings():
    trl = {"learning_rate": 5e-7, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 8,
           "loss_type": "ipo", "bf16": True, "num_train_epochs": 3.0, "beta": 0.2, "max_length": 1024,
           "max_prompt_length": 512, "warmup_ratio": 0.1, "weight_decay": 0.01, "max_grad_norm": 0.5, "seed": 7,
           "logging_steps": 5, "save_steps": 50, "output_dir": "out", "precompute_ref_log_probs": False,
           "rpo_alpha": None, "label_smoothing": 0.0, "lr_scheduler_type": "cosine", "optim": "adamw_torch"}
    ours = TrainConfig(lr=5e-7, per_device_batch_size=2, grad_accum=8, loss="ipo", dtype="bfloat16", epochs=3,
                       beta=0.2, max_length=1024, max_prompt_length=512, warmup_ratio=0.1, weight_decay=0.01,
                       max_grad_norm=0.5, seed=7, flush_steps=5, save_steps=50, output_dir="out",
                       precompute_reference=False, rpo_alpha=0.0, scheduler="cosine")
    assert TrainConfig.from_dict(trl) == ours
    assert {"learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "loss_type", "bf16",
            "num_train_epochs", "precompute_ref_log_probs"} <= set(TRL_ALIASES)
    with pytest.raises(ConfigError, match="lr = 0.001 and learning_rate = 0.0001"):
        TrainConfig.from_dict({"lr": 1e-3, "learning_rate": 1e-4})
    with pytest.raises(ConfigError, match="loss_type: 'exo_pair' has no equivalent"):
        TrainConfig.from_dict({"loss_type": "exo_pair"})


def test_missing_model_and_offline_hub_id_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(ModelPathError, match="does not exist") as e:
        resolve_model(str(tmp_path / "nope"))
    assert "\n" not in str(e.value)
    with pytest.raises(ModelPathError, match="not in the local Hugging Face cache; training never downloads"):
        resolve_model("someorg/some-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelPathError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))


def test_bad_settings_fail_before_any_work(workspace, tiny_model_dir, monkeypatch):
    workspace.publish("toy", pair_table(8))
    monkeypatch.setattr(trainer_mod, "compute_reference_logps", _no_reference_pass)
    with pytest.raises(ConfigError, match="max_length 512 is more than the 256 positions"):
        trainer_mod.train(_cfg(tiny_model_dir, max_length=512, run_id="long"), workspace)
    with pytest.raises(ConfigError, match=r"lora_target_modules \['c_attn'\] match no module of this llama"):
        trainer_mod.train(_cfg(tiny_model_dir, max_length=96, lora=True, lora_target_modules=["c_attn"],
                               run_id="badlora"), workspace)


def _no_reference_pass(*_a, **_k):
    raise AssertionError("the reference pass ran before the settings were checked")


# -- the shared-prompt layout on every position-embedding type ---------------------------------------------------

@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_shared_layout_equals_two_rows_for_learned_and_rotary_positions(family_dirs, family):
    path = family_dirs[family]
    tok = AutoTokenizer.from_pretrained(path)
    data = tokenize_pairs(pair_table(6, seed=2, long_prompts=2), tok, max_length=POSITIONS, max_prompt_length=24)
    idx = np.arange(len(data))
    shared = collate_shared(data, idx, tok.pad_token_id)
    assert shared["input_ids"].shape[1] > POSITIONS  # wider than GPT-2's position table: pads must stay in range
    assert int(shared["position_ids"].max()) < POSITIONS
    model = AutoModelForCausalLM.from_pretrained(path).double().eval()
    assert preflight(_cfg(path)).shared
    a = concatenated_forward(model, collate(data, idx, tok.pad_token_id))
    b = shared_forward(model, shared)
    for k in ("chosen_logps", "rejected_logps"):
        np.testing.assert_allclose(a[k].detach().numpy(), b[k].detach().numpy(), atol=1e-6)


def test_alibi_models_train_on_two_rows_per_pair(family_dirs, workspace):
    assert not preflight(_cfg(family_dirs["bloom"])).shared  # ALiBi follows the 2D mask, not position_ids
    workspace.publish("toy", pair_table(8))
    on = trainer_mod.train(_cfg(family_dirs["bloom"], run_id="bloom-on"), workspace)
    off = trainer_mod.train(_cfg(family_dirs["bloom"], run_id="bloom-off", share_prompt=False), workspace)
    assert on.losses[0] == pytest.approx(LOG2, abs=1e-5)
    assert list(on.losses.values()) == pytest.approx(list(off.losses.values()), abs=1e-6)


def test_gpt2_trains_with_shared_prompts_and_lora_defaults(family_dirs, workspace):
    workspace.publish("toy", pair_table(8, long_prompts=4))
    full = trainer_mod.train(_cfg(family_dirs["gpt2"], run_id="gpt2"), workspace)
    assert full.losses[0] == pytest.approx(LOG2, abs=1e-5)
    # peft's default for gpt2 (c_attn), not Llama's q_proj/v_proj
    lora = trainer_mod.train(_cfg(family_dirs["gpt2"], run_id="gpt2-lora", lora=True, lr=1e-2), workspace)
    assert lora.losses[0] == pytest.approx(LOG2, abs=1e-5)
    assert lora.losses[1] != pytest.approx(LOG2, abs=1e-6)


# -- LoRA: one reference whatever the caching -------------------------------------------------------------------

def test_lora_reference_is_the_same_cached_or_per_batch(workspace, tiny_model_dir, tiny_ref_dir):
    workspace.publish("toy", pair_table(8))
    kw = dict(lora=True, lora_r=4, lr=1e-2, max_length=96, ref_model=str(tiny_ref_dir))
    live = trainer_mod.train(_cfg(tiny_model_dir, run_id="lr-live", precompute_reference=False, **kw), workspace)
    cached = trainer_mod.train(_cfg(tiny_model_dir, run_id="lr-cached", **kw), workspace)
    assert live.losses[0] != pytest.approx(LOG2, abs=1e-4)  # a separate reference: not the policy's base
    assert list(live.losses.values()) == pytest.approx(list(cached.losses.values()), abs=1e-5)


def test_cli_names_the_bad_key_and_exits_2(workspace, tiny_model_dir, tmp_path, capfd):
    from pipelines.cli import main

    workspace.publish("toy", pair_table(4))
    toml = tmp_path / "train.toml"
    toml.write_text(f'[train]\nsnapshot = "toy@1"\nmodel = "{tiny_model_dir}"\nlr = "1e-4"\n')
    rc = main(["--workspace", str(workspace.root), "train", "-c", str(toml)])
    err = capfd.readouterr().err
    assert rc == 2 and "lr: expected float, got str '1e-4'" in err and "Traceback" not in err
