"""Which run a `train()` call is, and whether it may start, resume or must be refused.

A run's identity is (snapshot and its content, policy and reference model *content*, the resolved config, code
version). The same identity resumes the same run; anything else is another run:
- the run id is derived from the identity (unless given), so new weights at the same model path or new code get
  a new run (and a new folder) instead of silently resuming the old one;
- the output folder keeps the identity it was made with in `run.json`, written once and never rewritten: a
  different identity on a used `--output-dir` is refused naming what differs, so a checkpoint's
  `train_config.json` always describes how its weights were trained;
- the process holds the run lock (`storage.runs.RUN_LOCK`) in the output folder while it runs: a second
  identical `dpo train` started at the same time is refused clearly, and a `running` run whose process died is
  marked `interrupted` by the next start (`storage.runs.mark_dead_runs`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpo_train import checkpoints as ckpt
from dpo_train.config import TrainConfig
from storage import runs
from storage.locks import FileLock, LockHeldError, describe

RUN_FILE = "run.json"
_RUN_ID_RE = re.compile(r"[A-Za-z0-9_.@-]+")
# Settings that never change the trained weights: they are not part of a run's identity.
NOT_IDENTITY = frozenset({"run_id", "output_dir", "resume", "report", "flush_steps", "save_steps",
                          "save_total_limit"})
# Paths are replaced by what they hold: a moved model keeps its runs, new weights at the same path do not.
BY_CONTENT = frozenset({"snapshot", "model", "ref_model"})


class RunConflictError(ValueError):
    """The run cannot start: its output folder or id belongs to another run, or it is running already."""


@dataclass
class RunSlot:
    run_id: str
    output_dir: Path
    identity: dict[str, Any]
    identity_hash: str
    resume_from: Path | None


def run_identity(cfg: TrainConfig, info: Any, model_fingerprint: str, ref_fingerprint: str | None,
                 code_version: str) -> dict[str, Any]:
    """What makes a run this run. `ref_fingerprint` is None when the reference is the policy itself."""
    config = {k: v for k, v in cfg.to_dict().items() if k not in NOT_IDENTITY | BY_CONTENT}
    return {"snapshot": info.snapshot_id, "snapshot_content": info.content_hash,
            "model_fingerprint": model_fingerprint, "ref_model_fingerprint": ref_fingerprint,
            "config": config, "code_version": code_version}


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def derive_run_id(cfg: TrainConfig, snapshot_id: str, digest: str) -> str:
    if cfg.run_id:
        if not _RUN_ID_RE.fullmatch(cfg.run_id):
            raise ValueError(f"run_id {cfg.run_id!r} may only hold letters, digits and _ . @ -")
        return cfg.run_id
    return f"{snapshot_id.replace('@', '-v')}-{cfg.mode}-{digest[:10]}"


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every identity entry that differs (config keys one by one)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{d}" for d in differences(a, b)]
        elif a != b:
            out.append(f"{key}: {str(a)[:40]!r} -> {str(b)[:40]!r}")
    return out


def _claimed_id(out_dir: Path, run_id: str, identity: dict[str, Any], explicit_id: bool) -> str | None:
    """The id of the run `out_dir` already holds when its identity matches (None: a fresh folder); raises when
    the folder belongs to another run."""
    record = out_dir / RUN_FILE
    if record.exists():
        made = json.loads(record.read_text(encoding="utf-8"))
        diffs = differences(made.get("identity", {}), identity)
        if diffs:
            raise RunConflictError(
                f"output dir {out_dir} holds run {made.get('run_id')!r}, trained with other settings; it is left "
                f"as it is. What differs: {'; '.join(diffs)}. Use another --output-dir (or none: each run gets "
                "its own folder under runs/), or the run's own settings to resume it.")
        made_id = str(made.get("run_id", ""))
        if not _RUN_ID_RE.fullmatch(made_id) or (explicit_id and made_id != run_id):
            raise RunConflictError(f"output dir {out_dir} holds run {made_id!r}, not {run_id!r}")
        return made_id
    if ckpt.list_checkpoints(out_dir):
        raise RunConflictError(
            f"output dir {out_dir} holds checkpoints without a {RUN_FILE}: they cannot be told to be this run "
            "(made by an older version, or by hand); use another --output-dir")
    return None


def _write_record(out_dir: Path, run_id: str, identity: dict[str, Any]) -> None:
    """`run.json`, written once when the folder is claimed (atomically) and never rewritten."""
    tmp = out_dir / f".{RUN_FILE}.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps({"run_id": run_id, "identity": identity}, indent=1, sort_keys=True, default=str),
                   encoding="utf-8")
    os.replace(tmp, out_dir / RUN_FILE)


def _check_catalog(root: Path, run_id: str, digest: str) -> None:
    row = runs.get_run(root, run_id)
    if row and row.get("identity") and row["identity"] != digest:
        raise RunConflictError(
            f"run id {run_id!r} already names another run (other data, model, settings or code; its folder: "
            f"{row.get('output_dir')}); choose another run_id or leave it out to derive one")


@contextmanager
def open_run(cfg: TrainConfig, root: Path, info: Any, identity: dict[str, Any], *,
             is_main: bool) -> Iterator[RunSlot]:
    """Claim the run for this process (rank 0 takes the lock and checks; other ranks follow) until the block ends."""
    digest = identity_hash(identity)
    run_id = derive_run_id(cfg, info.snapshot_id, digest)
    out_dir = Path(cfg.output_dir) if cfg.output_dir else root / "runs" / run_id
    if not is_main:
        yield RunSlot(run_id, out_dir, identity, digest, ckpt.latest_checkpoint(out_dir) if cfg.resume else None)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out_dir / runs.RUN_LOCK, wait=True, timeout_s=2.0, info={"run_id": run_id})
    try:
        lock.__enter__()
    except LockHeldError as exc:
        raise RunConflictError(
            f"run {run_id} is already training in {out_dir} ({describe(exc.holder)}); wait for it to finish, "
            "then run the same command again to get its result") from None
    try:
        runs.mark_dead_runs(root)
        claimed = _claimed_id(out_dir, run_id, identity, explicit_id=bool(cfg.run_id))
        run_id = claimed or run_id
        _check_catalog(root, run_id, digest)
        if claimed is None:
            _write_record(out_dir, run_id, identity)
        yield RunSlot(run_id, out_dir, identity, digest, ckpt.latest_checkpoint(out_dir) if cfg.resume else None)
    finally:
        lock.release()
