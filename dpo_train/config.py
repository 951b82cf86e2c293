"""`TrainConfig`: every training knob and its default, in one place, checked before any work starts.

Values are typed: a value of the wrong type fails at construction naming the key and the type it wants
(`lr = "1e-4"` is refused, not coerced: a quoted number in a TOML/JSON file is a mistake we point at, never a
guess). An int is accepted where a float is wanted (`lr = 1`), never a bool where a number is.

TRL's `DPOConfig` names are accepted as aliases where they mean the same thing (`TRL_ALIASES`, documented in
the README), so a TRL user's settings run unchanged; a TRL name that means something else here is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_train.losses import DEFAULT_BETA, LOSSES
from storage.strict import from_dict_strict


class ConfigError(ValueError):
    """A training setting is missing, unknown, of the wrong type or out of range (the CLI exits 2)."""


@dataclass
class TrainConfig:
    # what to train on and from
    snapshot: str = ""  # "dataset@version" or "dataset" (newest)
    model: str = ""  # HF-format directory of the starting policy
    ref_model: str | None = None  # None: the reference is `model` (or the base model with LoRA adapters off)
    run_id: str | None = None  # None: derived from snapshot, model and config
    output_dir: str | None = None  # None: <workspace>/runs/<run_id>
    mode: str = "dpo"  # dpo | sft (maximum likelihood on chosen answers; makes a reference model)

    # the loss (see dpo_train.losses); beta is usually tuned in 0.1-0.5 for DPO
    loss: str = "sigmoid"
    beta: float = DEFAULT_BETA
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    rpo_alpha: float = 0.0
    use_weights: bool = True  # multiply per-pair losses by the snapshot's `weight` column (mean 1)

    # tokenisation
    max_length: int = 512
    max_prompt_length: int = 256
    truncation_mode: str = "keep_end"  # keep_end | keep_start (of the prompt)

    # optimisation
    per_device_batch_size: int = 8
    grad_accum: int = 1
    epochs: int = 1
    max_steps: int = -1  # > 0 caps the number of optimizer steps
    lr: float = 1e-6  # the DPO paper's value (with RMSprop); tiny random models want ~1e-4
    optimizer: str = "adamw"  # adamw | rmsprop
    weight_decay: float = 0.0
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # > 0: warm up for ceil(ratio * total steps), or warmup_steps if larger
    scheduler: str = "linear"  # linear | cosine | constant (after warm-up)
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    seed: int = 0
    shuffle: bool = True
    group_by_length: bool = True
    # DPO: chosen and rejected in one row behind a single copy of the prompt (4D mask, see dpo_train/prefix.py);
    # same log-probs, fewer tokens. Needs eager/sdpa attention; turn off for flash-attention kernels.
    share_prompt: bool = True

    # reference log-probs
    precompute_reference: bool = True  # compute once into a reference artefact (storage.artefacts), reuse after
    reference_batch_size: int = 16
    step0_check: bool = True  # policy == reference at step 0 when starting from the reference
    step0_atol: float = 1e-3  # per-sequence summed log-prob tolerance (loosen for bf16)

    # hardware
    device: str = "auto"  # auto | cpu | cuda
    # bfloat16: bf16 compute (autocast) over float32 master weights and optimizer state, so updates far below
    # bf16 resolution (lr 1e-6) still accumulate; works on CPU too
    dtype: str = "float32"  # float32 | bfloat16
    gradient_checkpointing: bool = False
    distributed: str = "auto"  # auto (DDP when WORLD_SIZE > 1) | ddp | fsdp (FSDP2 fully_shard) | none
    trust_remote_code: bool = False

    # LoRA via peft; the reference is then the base model with adapters disabled
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    # None: peft's default for the model's architecture (q_proj/v_proj for Llama, c_attn for GPT-2, ...)
    lora_target_modules: list[str] | None = None

    # runs
    save_steps: int = 100  # also saved at the end; <= 0 means only at the end
    save_total_limit: int = 2  # older step checkpoints are pruned; <= 0 keeps all
    resume: bool = True  # continue from the newest checkpoint in output_dir when there is one
    flush_steps: int = 10  # metrics are written to the catalog every this many steps
    report: bool = True  # HTML report with plots in the run dir

    def __post_init__(self) -> None:
        _check_types(self)
        errors = []
        if self.mode not in ("dpo", "sft"):
            errors.append(f"mode must be dpo or sft, got {self.mode!r}")
        if self.loss not in LOSSES:
            errors.append(f"loss must be one of {sorted(LOSSES)}, got {self.loss!r}")
        if self.truncation_mode not in ("keep_end", "keep_start"):
            errors.append(f"truncation_mode must be keep_end or keep_start, got {self.truncation_mode!r}")
        if self.optimizer not in ("adamw", "rmsprop"):
            errors.append(f"optimizer must be adamw or rmsprop, got {self.optimizer!r}")
        if self.scheduler not in ("linear", "cosine", "constant"):
            errors.append(f"scheduler must be linear, cosine or constant, got {self.scheduler!r}")
        if self.dtype not in ("float32", "bfloat16"):
            errors.append(f"dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.distributed not in ("auto", "ddp", "fsdp", "none"):
            errors.append(f"distributed must be auto, ddp, fsdp or none, got {self.distributed!r}")
        if self.beta <= 0:
            errors.append("beta must be > 0")
        if self.per_device_batch_size < 1 or self.grad_accum < 1:
            errors.append("per_device_batch_size and grad_accum must be >= 1")
        if self.max_prompt_length >= self.max_length:
            errors.append("max_prompt_length must be < max_length")
        if not 0 <= self.warmup_ratio < 1:
            errors.append("warmup_ratio must be in [0, 1)")
        if errors:
            raise ConfigError("invalid TrainConfig: " + "; ".join(errors))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Strict: unknown keys and wrong types are refused by name; TRL `DPOConfig` names are translated."""
        try:
            return from_dict_strict(cls, translate_trl(d))
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# -- types -------------------------------------------------------------------------------------------------------

def _type_ok(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if hint is float:  # an int is a fine float; a bool is not a number here
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if typing.get_args(hint) else hint.__name__


def _check_types(cfg: Any) -> None:
    hints = typing.get_type_hints(type(cfg))
    bad = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _type_ok(value, hints[f.name]):
            bad.append(f"{f.name}: expected {_type_name(hints[f.name])}, got {type(value).__name__} {value!r}")
        elif hints[f.name] is float:
            setattr(cfg, f.name, float(value))
    if bad:
        raise ConfigError("invalid TrainConfig: " + "; ".join(bad) + " (write numbers and booleans unquoted)")


# -- TRL DPOConfig names -----------------------------------------------------------------------------------------

def _same(name: str) -> Callable[[Any], dict[str, Any]]:
    return lambda v: {name: v}


def _epochs(v: Any) -> dict[str, Any]:
    if isinstance(v, float) and not v.is_integer():
        raise ConfigError(f"num_train_epochs: whole epochs only here, got {v!r}")
    return {"epochs": int(v) if isinstance(v, float) else v}


def _choice(ours: str, mapping: dict[str, str], trl_key: str) -> Callable[[Any], dict[str, Any]]:
    def f(v: Any) -> dict[str, Any]:
        if v not in mapping:
            raise ConfigError(f"{trl_key}: {v!r} has no equivalent here; supported: {sorted(mapping)}")
        return {ours: mapping[v]}
    return f


_TRL_LOSSES = {"sigmoid": "sigmoid", "robust": "robust", "ipo": "ipo", "hinge": "hinge"}
_TRL_SCHEDULERS = {"linear": "linear", "cosine": "cosine", "constant": "constant",
                   "constant_with_warmup": "constant"}
_TRL_OPTIMIZERS = {"adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw", "rmsprop": "rmsprop"}

# TRL DPOConfig / TrainingArguments name -> our setting(s). Names that are spelt the same here (beta,
# max_length, max_prompt_length, warmup_steps, warmup_ratio, weight_decay, max_grad_norm, seed, save_steps,
# save_total_limit, output_dir, label_smoothing, rpo_alpha, max_steps, gradient_checkpointing, group_by_length,
# truncation_mode) need no entry.
TRL_ALIASES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "learning_rate": _same("lr"),
    "per_device_train_batch_size": _same("per_device_batch_size"),
    "gradient_accumulation_steps": _same("grad_accum"),
    "num_train_epochs": _epochs,
    "loss_type": _choice("loss", _TRL_LOSSES, "loss_type"),
    "lr_scheduler_type": _choice("scheduler", _TRL_SCHEDULERS, "lr_scheduler_type"),
    "optim": _choice("optimizer", _TRL_OPTIMIZERS, "optim"),
    "bf16": lambda v: {"dtype": "bfloat16" if v is True else "float32" if v is False else v},
    "tf32": lambda v: {},  # a matmul precision hint for Ampere GPUs; no effect on what is trained
    "logging_steps": _same("flush_steps"),
    "precompute_ref_log_probs": _same("precompute_reference"),
    "run_name": _same("run_id"),
    "model_name_or_path": _same("model"),
}


def translate_trl(d: dict[str, Any] | None) -> dict[str, Any]:
    """Our names for TRL's; a key given under both names must agree."""
    out: dict[str, Any] = {}
    src: dict[str, str] = {}
    for key, value in (d or {}).items():
        if key == "bf16" and not isinstance(value, bool):
            raise ConfigError(f"bf16: expected bool, got {type(value).__name__} {value!r}")
        if key == "rpo_alpha" and value is None:  # TRL's "off"
            value = 0.0
        for ours, v in (TRL_ALIASES[key](value) if key in TRL_ALIASES else {key: value}).items():
            if ours in out and out[ours] != v:
                raise ConfigError(f"{src[ours]} = {out[ours]!r} and {key} = {v!r} set the same thing differently")
            out[ours], src[ours] = v, key
    return out


def warmup_for(cfg: TrainConfig, total: int) -> int:
    return max(cfg.warmup_steps, math.ceil(cfg.warmup_ratio * total))
