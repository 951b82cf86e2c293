"""Checks that run before any work: model paths, length limits, the row layout and LoRA targets.

Everything here reads config.json (and builds the model on the meta device, which allocates nothing), so a
mistake is reported in one line before tokenisation, the reference pass or a single step, instead of as a
transformers traceback half an hour in.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dpo_train.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Position-count fields of HF configs, most specific first; ALiBi models (Bloom, MPT) have none.
_POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
# ALiBi derives each key's bias from its index in the 2D mask, not from position_ids, so the shared-prompt
# layout (rejected answers restart their positions after the prompt) cannot be expressed for these.
_ALIBI_TYPES = ("bloom", "mpt")


class ModelPathError(FileNotFoundError):
    """A model path that does not hold an HF-format model, or a hub id that is not in the local cache."""


@dataclass(frozen=True)
class Plan:
    model: Path  # local directory of the starting policy
    ref_model: Path | None  # local directory of a separate reference model, if any
    shared: bool  # use the shared-prompt layout (dpo_train/prefix.py)
    lora_targets: list[str] | None
    max_positions: int | None


def resolve_model(name: str, what: str = "model") -> Path:
    """The local HF directory for a path or a hub id already in the local cache; never downloads."""
    path = Path(name).expanduser()
    if not path.exists() and _HUB_ID.match(name) and not name.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(name, local_files_only=True))
        except Exception:  # noqa: BLE001 - any lookup failure means "not available offline"
            raise ModelPathError(
                f"{what} {name!r} is not a local directory and not in the local Hugging Face cache; training "
                f"never downloads: fetch it first (`huggingface-cli download {name}`) or pass a local path") from None
    if not path.is_dir():
        raise ModelPathError(f"{what} path {name!r} does not exist")
    if not (path / "config.json").is_file():
        raise ModelPathError(f"{what} {name!r} has no config.json: an HF-format model directory is needed")
    if not any(path.glob("*.safetensors")):
        raise ModelPathError(f"{what} {name!r} has no *.safetensors weights (pickle weight files are not loaded)")
    return path


def max_positions(config: Any) -> int | None:
    for name in _POSITION_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def supports_shared_layout(config: Any, model: torch.nn.Module) -> str | None:
    """None when the shared-prompt layout gives exact log-probs for this model, else the reason it does not."""
    if config.model_type in _ALIBI_TYPES or getattr(config, "alibi", False):
        return f"{config.model_type} uses ALiBi positions, which follow the 2D mask, not position_ids"
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return f"{type(model).__name__}.forward takes no position_ids"
    impl = getattr(config, "_attn_implementation", None)
    if impl in ("flash_attention_2", "flash_attention_3", "flex_attention"):
        return f"attention implementation {impl!r} takes no 4D mask"
    return None


def lora_targets(cfg: TrainConfig, config: Any, model: torch.nn.Module) -> list[str]:
    """The configured LoRA target modules, or peft's default for the architecture; each must exist."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if n and not list(m.children()) and hasattr(m, "weight") and m.weight is not None
                     and m.weight.dim() == 2 and "embed" not in n and "wte" not in n and "wpe" not in n})
    targets = list(cfg.lora_target_modules) if cfg.lora_target_modules else DEFAULTS.get(config.model_type)
    if not targets:
        raise ConfigError(f"peft has no default LoRA target modules for model type {config.model_type!r}; set "
                          f"lora_target_modules (this model's weight layers: {leaves})")
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ConfigError(f"lora_target_modules {missing} match no module of this {config.model_type} model; "
                          f"its weight layers are named {leaves}")
    return list(targets)


def preflight(cfg: TrainConfig) -> Plan:
    """Resolve the model paths and check the settings against the model; raises before any work."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_path = resolve_model(cfg.model, "model")
    ref_path = resolve_model(cfg.ref_model, "ref_model") if cfg.ref_model else None
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    limit = max_positions(config)
    if limit is not None and cfg.max_length > limit:
        raise ConfigError(f"max_length {cfg.max_length} is more than the {limit} positions model {cfg.model!r} "
                          f"has (config.json); set max_length <= {limit}")
    with torch.device("meta"):  # the module tree, no weights
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    shared = cfg.mode == "dpo" and cfg.share_prompt
    if shared and (why := supports_shared_layout(config, skeleton)) is not None:
        log.warning("share_prompt is off for this model: %s; each pair is two rows (same log-probs)", why)
        shared = False
    targets = lora_targets(cfg, config, skeleton) if cfg.lora else None
    return Plan(model_path, ref_path, shared, targets, limit)


def cached_fingerprint(path: Path, cache_dir: Path) -> str:
    """`reference.model_fingerprint` of a model directory, remembered by file identity.

    Hashing multi-GB weights costs minutes; a file with the same resolved path, size and mtime_ns is taken
    to be the same file (what rsync and make assume), so an unchanged model is hashed once per workspace.
    """
    from dpo_train.reference import model_fingerprint

    files = sorted(f for f in path.iterdir() if f.suffix == ".safetensors" or f.name == "config.json")
    ident = json.dumps([(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    key = hashlib.sha256(ident.encode()).hexdigest()
    store = cache_dir / "model_fingerprints.json"
    known = json.loads(store.read_text()) if store.is_file() else {}
    if key not in known:
        known[key] = model_fingerprint(path)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f".{store.name}.{os.getpid()}")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, store)  # atomic: a reader sees the old or the new file, never half of one
    return known[key]
