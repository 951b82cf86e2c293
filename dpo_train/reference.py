"""Reference log-probs as data: computed once, stored as their own artefact, found by what they depend on.

Cached log-probs are only valid for the exact snapshot rows, reference weights, tokenizer, chat template, length
limits, truncation mode and code they were computed with, so all of these make up the artefact's key: a run with
other settings finds (or makes) another artefact; it never reuses stale numbers. They are never a version of the
user's dataset (`storage.artefacts`): `hh` stays the user's data after training, and `dpo export hh` has no
`ref_*` columns unless asked.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import xxhash

from dpo_train.batching import TokenizedPairs, collate, concatenated_forward
from dpo_train.config import TrainConfig
from dpo_train.judges.base import fingerprint_files, fingerprint_model_dir
from dpo_train.prefix import collate_shared, shared_forward, shared_lengths
from dpo_train.progress import report as report_progress
from storage import artefacts

log = logging.getLogger(__name__)

KIND = "reference"


class ReferenceMismatchError(ValueError):
    """Cached reference log-probs do not fit the rows or settings of this run."""


# Besides config.json and the weights, what turns text into the token ids the model reads.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model")


def model_fingerprint(path: str | Path) -> str:
    """Content hash of an HF model directory (config, safetensors weights, tokenizer files), not of its path."""
    root = Path(path)
    tok = [root / name for name in _TOKENIZER_FILES if (root / name).is_file()]
    return fingerprint_model_dir(root, extra=fingerprint_files(tok) if tok else "")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    specials = json.dumps([tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token])
    return hashlib.sha256((text + specials).encode()).hexdigest()


def reference_meta(cfg: TrainConfig, ref_path: str | Path, tokenizer: Any,
                   fingerprint: str | None = None) -> dict[str, Any]:
    """Everything cached reference log-probs depend on besides the rows (`fingerprint`: of `ref_path`, if known)."""
    return {
        "model_fingerprint": fingerprint or model_fingerprint(ref_path),
        "model_path": str(ref_path),
        "tokenizer_hash": tokenizer_fingerprint(tokenizer),
        "chat_template": getattr(tokenizer, "chat_template", None) or "",
        "max_length": cfg.max_length,
        "max_prompt_length": cfg.max_prompt_length,
        "truncation_mode": cfg.truncation_mode,
        "dtype": cfg.dtype,
    }


def tokens_hash(data: TokenizedPairs) -> str:
    """Hash of the exact token ids the reference model reads, and which rows they came from."""
    h = xxhash.xxh3_128()
    h.update(np.asarray(data.rows, dtype=np.int64).tobytes())
    for seqs in (data.prompt, data.chosen, data.rejected):
        h.update(np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs)).tobytes())
        h.update(np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64).tobytes())
    return h.hexdigest()


def cache_key(content_hash: str, inputs: str, meta: dict[str, Any], code_version: str) -> str:
    """The artefact key: snapshot content, token ids, reference model content and settings, code version.

    The model path is left out (moving a model directory keeps its cache); its content fingerprint is in."""
    stable = {k: v for k, v in meta.items() if k != "model_path"}
    blob = json.dumps({"content": content_hash, "tokens": inputs, "meta": stable, "code": code_version},
                      sort_keys=True)
    return "reference:" + hashlib.sha256(blob.encode()).hexdigest()


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
        report_progress("reference log-probs", start + len(idx), len(order))  # the CLI draws a bar
    model.train(was_training)
    return chosen, rejected


def logps_from_table(table: pa.Table, data: TokenizedPairs, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Cached log-probs aligned with the tokenised (kept) rows; a missing value means they disagree."""
    c = table.column("ref_chosen_logp").to_numpy(zero_copy_only=False).astype(np.float64)[data.rows]
    r = table.column("ref_rejected_logp").to_numpy(zero_copy_only=False).astype(np.float64)[data.rows]
    if np.isnan(c).any() or np.isnan(r).any():
        raise ReferenceMismatchError(
            f"{where} has no reference log-probs for {int(np.isnan(c).sum())} pair(s) this run keeps: "
            "its tokenisation settings differ from the ones the cache was made with")
    return c, r


def logps_table(pairs: pa.Table, data: TokenizedPairs, chosen: np.ndarray, rejected: np.ndarray) -> pa.Table:
    """The artefact's rows: every pair_id of the snapshot in order, ref_*_logp null where tokenisation dropped it."""
    full_c = np.full(pairs.num_rows, np.nan)
    full_r = np.full(pairs.num_rows, np.nan)
    full_c[data.rows], full_r[data.rows] = chosen, rejected
    return pa.table({"pair_id": pairs.column("pair_id"),
                     "ref_chosen_logp": pa.array(full_c, pa.float64(), mask=np.isnan(full_c)),
                     "ref_rejected_logp": pa.array(full_r, pa.float64(), mask=np.isnan(full_r))})


def ensure_reference(root: Path, info: Any, pairs: pa.Table, data: TokenizedPairs, expected: dict[str, Any],
                     compute: Callable[[], tuple[np.ndarray, np.ndarray]], *,
                     code_version: str) -> tuple[str, np.ndarray, np.ndarray, bool]:
    """(reference artefact id, ref chosen, ref rejected, whether a reference pass ran).

    The artefact of (this snapshot's content and token ids, these settings, this code) is reused when it exists;
    otherwise `compute()` runs and its result is published as a new artefact (parents=[this snapshot]). The key's
    lock makes a second process with the same key wait and reuse the first one's result.
    """
    key = cache_key(info.content_hash, tokens_hash(data), expected, code_version)
    with artefacts.publishing(root, KIND, key) as pub:
        if pub.hit is not None:
            cached = artefacts.read(root, pub.hit.artefact_id)
            if cached.column("pair_id").to_pylist() != pairs.column("pair_id").to_pylist():
                raise ReferenceMismatchError(
                    f"reference artefact {pub.hit.artefact_id} rows do not line up with {info.snapshot_id}")
            chosen, rejected = logps_from_table(cached, data, pub.hit.artefact_id)
            if info.snapshot_id not in pub.hit.parents:  # same content under another name: lineage to it too
                artefacts.link(root, pub.hit.artefact_id, info.snapshot_id)
            log.info("reusing reference log-probs %s", pub.hit.artefact_id)
            return pub.hit.artefact_id, chosen, rejected, False
        chosen, rejected = compute()
        new = pub.publish(logps_table(pairs, data, chosen, rejected), parents=[info.snapshot_id],
                          meta=expected, params={"snapshot": info.snapshot_id, "kept": len(data),
                                                 "tokenize": data.stats.as_dict(), "code_version": code_version})
        log.info("published reference log-probs as artefact %s", new.artefact_id)
        return new.artefact_id, chosen, rejected, True
