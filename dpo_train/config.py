"""`TrainConfig`: every training knob and its default, in one place."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo_train.losses import DEFAULT_BETA, LOSSES
from storage.strict import from_dict_strict


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
    scheduler: str = "linear"  # linear | cosine | constant (after warm-up)
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    seed: int = 0
    shuffle: bool = True
    group_by_length: bool = True
    # DPO: chosen and rejected in one row behind a single copy of the prompt (4D mask, see dpo_train/prefix.py);
    # same log-probs, fewer tokens. Needs eager/sdpa attention; turn off for flash-attention kernels.
    share_prompt: bool = True

    # reference log-probs
    precompute_reference: bool = True  # compute once, publish as a kind="reference" snapshot, reuse after
    reference_batch_size: int = 16
    step0_check: bool = True  # policy == reference at step 0 when starting from the reference
    step0_atol: float = 1e-3  # per-sequence summed log-prob tolerance (loosen for bf16)

    # hardware
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "float32"  # float32 | bfloat16 (GPU only)
    gradient_checkpointing: bool = False
    distributed: str = "auto"  # auto (DDP when WORLD_SIZE > 1) | ddp | fsdp (GPU) | none
    trust_remote_code: bool = False

    # LoRA via peft; the reference is then the base model with adapters disabled
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    # runs
    save_steps: int = 100  # also saved at the end; <= 0 means only at the end
    save_total_limit: int = 2  # older step checkpoints are pruned; <= 0 keeps all
    resume: bool = True  # continue from the newest checkpoint in output_dir when there is one
    flush_steps: int = 10  # metrics are written to the catalog every this many steps
    report: bool = True  # HTML report with plots in the run dir

    def __post_init__(self) -> None:
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
        if errors:
            raise ValueError("invalid TrainConfig: " + "; ".join(errors))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return from_dict_strict(cls, d)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)
