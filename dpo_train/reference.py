"""Reference log-probs as data: computed once, published with their provenance, checked on every use.

Cached log-probs are only valid for the exact reference weights, tokenizer, chat template, length limits and
truncation mode they were computed with, so all of these go into the snapshot's meta and the cache key; a run
whose settings differ is refused with the list of what differs instead of silently training on stale numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dpo_train.batching import TokenizedPairs, collate, concatenated_forward
from dpo_train.config import TrainConfig
from dpo_train.prefix import collate_shared, shared_forward, shared_lengths

log = logging.getLogger(__name__)

META_KEY = "reference"


class ReferenceMismatchError(ValueError):
    """Cached reference log-probs were computed under different settings than this run uses."""


def model_fingerprint(path: str | Path) -> str:
    """sha256 over config.json and every safetensors file of an HF model directory."""
    root = Path(path)
    files = [root / "config.json", *sorted(root.glob("*.safetensors"))]
    if not any(f.suffix == ".safetensors" for f in files):
        raise FileNotFoundError(f"no safetensors weights in {root}")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023
                h.update(chunk)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    specials = json.dumps([tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token])
    return hashlib.sha256((text + specials).encode()).hexdigest()


def reference_meta(cfg: TrainConfig, ref_path: str | Path, tokenizer: Any) -> dict[str, Any]:
    """Everything cached reference log-probs depend on."""
    return {
        "model_fingerprint": model_fingerprint(ref_path),
        "model_path": str(ref_path),
        "tokenizer_hash": tokenizer_fingerprint(tokenizer),
        "chat_template": getattr(tokenizer, "chat_template", None) or "",
        "max_length": cfg.max_length,
        "max_prompt_length": cfg.max_prompt_length,
        "truncation_mode": cfg.truncation_mode,
        "dtype": cfg.dtype,
    }


def cache_key(parent_snapshot: str, content_hash: str, meta: dict[str, Any]) -> str:
    stable = {k: v for k, v in meta.items() if k != "model_path"}  # moving a model dir keeps its cache
    blob = json.dumps({"parent": parent_snapshot, "content": content_hash, "meta": stable}, sort_keys=True)
    return "reference:" + hashlib.sha256(blob.encode()).hexdigest()


def check_meta(found: dict[str, Any], expected: dict[str, Any], snapshot_id: str) -> None:
    """Raise ReferenceMismatchError naming each setting that differs."""
    diffs = [k for k in expected if k != "model_path" and found.get(k) != expected[k]]
    if diffs:
        detail = "; ".join(f"{k}: snapshot has {str(found.get(k))[:80]!r}, run uses {str(expected[k])[:80]!r}"
                           for k in diffs)
        raise ReferenceMismatchError(
            f"reference log-probs in {snapshot_id} do not match this run ({detail}). Train on its parent "
            f"snapshot to recompute them, or use the reference model and settings they were made with.")


@torch.inference_mode()
def compute_reference_logps(model: torch.nn.Module, data: TokenizedPairs, *, batch_size: int, pad_id: int,
                            device: torch.device, share_prompt: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Summed answer log-probs of every pair under `model`, batched longest first to pad little."""
    was_training = model.training
    model.eval()
    chosen = np.zeros(len(data), dtype=np.float64)
    rejected = np.zeros(len(data), dtype=np.float64)
    order = np.argsort(-(shared_lengths(data) if share_prompt else data.lengths()), kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if share_prompt:
            out = shared_forward(model, {k: v.to(device) for k, v in collate_shared(data, idx, pad_id).items()})
        else:
            out = concatenated_forward(model, {k: v.to(device) for k, v in collate(data, idx, pad_id).items()})
        chosen[idx] = out["chosen_logps"].double().cpu().numpy()
        rejected[idx] = out["rejected_logps"].double().cpu().numpy()
    model.train(was_training)
    return chosen, rejected


def has_reference(info: Any) -> bool:
    return META_KEY in (info.meta or {})


def logps_from_table(table: pa.Table, data: TokenizedPairs, snapshot_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Cached log-probs aligned with the tokenised (kept) rows; a missing value means they disagree."""
    c = table.column("ref_chosen_logp").to_numpy(zero_copy_only=False).astype(np.float64)[data.rows]
    r = table.column("ref_rejected_logp").to_numpy(zero_copy_only=False).astype(np.float64)[data.rows]
    if np.isnan(c).any() or np.isnan(r).any():
        raise ReferenceMismatchError(
            f"{snapshot_id} has no reference log-probs for {int(np.isnan(c).sum())} pair(s) this run keeps: "
            "its tokenisation settings differ from the ones the cache was made with")
    return c, r


def table_with_logps(table: pa.Table, data: TokenizedPairs, chosen: np.ndarray,
                     rejected: np.ndarray) -> pa.Table:
    """The pair table with ref_*_logp filled for kept rows (null for rows tokenisation dropped)."""
    full_c = np.full(table.num_rows, np.nan)
    full_r = np.full(table.num_rows, np.nan)
    full_c[data.rows], full_r[data.rows] = chosen, rejected
    for name, arr in (("ref_chosen_logp", full_c), ("ref_rejected_logp", full_r)):
        col = pa.array(arr, pa.float64(), mask=np.isnan(arr))
        table = table.set_column(table.schema.get_field_index(name), name, col)
    return table


def ensure_reference(ws: Any, info: Any, table: pa.Table, data: TokenizedPairs, expected: dict[str, Any],
                     compute: Any, *, publish: bool = True) -> tuple[str, np.ndarray, np.ndarray, bool]:
    """(snapshot id trained on, ref chosen, ref rejected, whether a reference pass ran).

    A kind="reference" snapshot is used as is after checking its meta; otherwise a cached reference
    snapshot for (this snapshot, these settings) is reused, else `compute()` runs and its result is
    published as a new version (parents=[this snapshot]) so the next run skips the pass.
    """
    if has_reference(info):
        check_meta(info.meta[META_KEY], expected, info.snapshot_id)
        chosen, rejected = logps_from_table(table, data, info.snapshot_id)
        return info.snapshot_id, chosen, rejected, False
    key = cache_key(info.snapshot_id, info.content_hash, expected)
    cached = ws.find_cached(key)
    if cached is not None:
        cached_table = ws.read(cached.snapshot_id)
        if cached_table.column("pair_id").to_pylist() != table.column("pair_id").to_pylist():
            raise ReferenceMismatchError(f"{cached.snapshot_id} rows do not line up with {info.snapshot_id}")
        check_meta(cached.meta[META_KEY], expected, cached.snapshot_id)
        chosen, rejected = logps_from_table(cached_table, data, cached.snapshot_id)
        log.info("reusing reference log-probs from %s", cached.snapshot_id)
        return cached.snapshot_id, chosen, rejected, False
    chosen, rejected = compute()
    if not publish:
        return info.snapshot_id, chosen, rejected, True
    new = ws.publish(info.dataset, table_with_logps(table, data, chosen, rejected), parents=[info.snapshot_id],
                     kind="reference", meta={META_KEY: expected}, cache_key=key,
                     params={"reference_of": info.snapshot_id, "kept": len(data),
                             "tokenize": data.stats.as_dict()})
    log.info("published reference log-probs as %s", new.snapshot_id)
    return new.snapshot_id, chosen, rejected, True
