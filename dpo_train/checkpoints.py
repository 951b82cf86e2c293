"""HF-format checkpoints plus the exact trainer state needed to resume bit-for-bit.

Weights go through save_pretrained (safetensors only). Optimizer, scheduler, RNG and data position go in
trainer_state.pt holding only tensors and Python primitives, so it loads with torch.load(weights_only=True)
and no pickled code ever runs.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "trainer_state.pt"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


@lru_cache(maxsize=1)
def code_version() -> str:
    """`git describe` of this checkout, else the installed package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("dpo-platform")
        except PackageNotFoundError:
            return "unknown"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _to_lists(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, tuple | list) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def save_checkpoint(output_dir: Path, step: int, model: torch.nn.Module, tokenizer: Any, *,
                    config: dict[str, Any], info: dict[str, Any], state: dict[str, Any],
                    weights: dict[str, Any] | None = None) -> Path:
    """Write checkpoint-<step> atomically (temp dir, then rename) and return its path.

    `weights`: the full state dict when the model's own is sharded (FSDP; see distributed.full_state)."""
    final = output_dir / f"checkpoint-{step:06d}"
    tmp = output_dir / f".tmp-checkpoint-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
    tokenizer.save_pretrained(tmp)
    (tmp / "train_config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    (tmp / "run_info.json").write_text(json.dumps({**info, "step": step, "code_version": code_version()},
                                                  indent=1, sort_keys=True, default=str))
    torch.save(state, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    if not output_dir.exists():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CKPT.match(p.name)) and
             (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def load_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)


def prune(output_dir: Path, keep: int) -> None:
    if keep <= 0:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
