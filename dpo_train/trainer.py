"""The training loop: DPO (any registry loss) or SFT over a snapshot, top to bottom in one function.

    snapshot -> tokenise -> run identity (resume, start or refuse; dpo_train/run_identity.py)
    -> reference log-probs (a cached artefact, never a version of the dataset) -> model/optimizer (or resume)
    -> for each step: micro-batches -> concatenated forward -> loss -> backward -> clip -> step
    -> metrics to the catalog, checkpoints, HTML report
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpo_train import checkpoints as ckpt
from dpo_train import distributed as D
from dpo_train.batching import TokenizedPairs, collate, concatenated_forward, epoch_order, split_global_batch
from dpo_train.config import TrainConfig, warmup_for
from dpo_train.losses import Batch, LossParams, compute_loss, get_loss
from dpo_train.metrics import DPO_SUMS, SFT_SUMS, KLProbe, MetricBuffer, StepSums, dpo_metrics, sft_metrics
from dpo_train.prefix import collate_shared, shared_forward, shared_lengths
from dpo_train.preflight import Plan, cached_fingerprint, preflight
from dpo_train.reference import compute_reference_logps, ensure_reference, reference_meta
from dpo_train.report import write_report
from dpo_train.run_identity import open_run, run_identity
from dpo_train.sampled_pairs import tokenize_table
from storage import runs as run_log
from storage.templates import snapshot_turn_labels

log = logging.getLogger(__name__)
__all__ = ["TrainConfig", "RunResult", "train"]


@dataclass
class RunResult:
    run_id: str
    output_dir: Path
    checkpoint: Path | None
    snapshot_id: str  # the user's snapshot the run trained on
    steps: int
    reference_computed: bool
    losses: dict[int, float] = field(default_factory=dict)  # step -> loss, for the steps run in this call
    tokenize_stats: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None
    reference: str | None = None  # id of the cached reference log-probs artefact used, if any


def _load_model(path: str | Path, cfg: TrainConfig, device: torch.device) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    # float32 weights always: with dtype=bfloat16 they are the master copy that AdamW updates (an lr-1e-6
    # step is below bf16 resolution), and bf16 is the compute precision (D.autocast / FSDP's policy).
    # safetensors only, as everywhere else: no pickle-based weight files.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code,
                                                 use_safetensors=True)
    # Dropout makes policy and reference disagree at step 0 and breaks exact resume; DPO trains without it.
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0
    return model.to(device)


def _add_lora(model: torch.nn.Module, cfg: TrainConfig, plan: Plan, resume_from: Path | None) -> torch.nn.Module:
    from peft import LoraConfig, PeftModel, get_peft_model

    if resume_from is not None:
        return PeftModel.from_pretrained(model, resume_from, is_trainable=True)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=plan.lora_targets, task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def _lr_lambda(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    warmup = warmup_for(cfg, total)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.scheduler == "constant":
            return 1.0
        frac = (step - warmup) / max(1, total - warmup)
        return max(0.0, 1.0 - frac) if cfg.scheduler == "linear" else 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    return f


def train(cfg: TrainConfig, ws: Any, *, on_step: Callable[[int, dict[str, float]], None] | None = None,
          kl_probe: KLProbe | None = None) -> RunResult:
    """Train `cfg.model` on `cfg.snapshot` in workspace `ws`; resumes from the newest checkpoint of the run."""
    with ExitStack() as held:  # the run's lock, released however the run ends
        return _train(cfg, ws, on_step, held, kl_probe)


def _train(cfg: TrainConfig, ws: Any, on_step: Callable[[int, dict[str, float]], None] | None,
           held: ExitStack, kl_probe: KLProbe | None = None) -> RunResult:
    dist = D.init(cfg.distributed, cfg.device)
    plan = preflight(cfg)  # model paths, max_length, layout, LoRA targets: checked before any work
    # under FSDP weights load on the host and fully_shard moves each layer's shard to the device, so a device
    # never holds the whole model
    load_on = torch.device("cpu") if dist.mode == "fsdp" else dist.device
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    info = ws.resolve(cfg.snapshot)
    table = ws.read(info.snapshot_id)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(plan.model, trust_remote_code=cfg.trust_remote_code)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Generated pairs train on their sampled token ids, offline pairs on their text (dpo_train.sampled_pairs).
    # Without a chat template each row keeps its source's turn labels, the text `dpo export` writes for TRL.
    data = tokenize_table(table, tokenizer, max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
                          truncation_mode=cfg.truncation_mode, labels_by_source=snapshot_turn_labels(ws, info))
    if len(data) == 0:
        raise ValueError(f"no trainable pairs in {info.snapshot_id}: {data.stats.as_dict()}")
    if not cfg.use_weights:
        data.weights[:] = 1.0
    # -- which run this is (snapshot, model content, config, code): resume it, start it or refuse ------------
    # content hashes: by rank 0 only, and remembered by file identity so an unchanged model is hashed once
    policy_is_ref = plan.ref_model is None or plan.ref_model.resolve() == plan.model.resolve()
    fp_cache = ws.root / "cache"
    policy_fp, ref_fp = D.broadcast((cached_fingerprint(plan.model, fp_cache), None if policy_is_ref else
                                     cached_fingerprint(plan.ref_model, fp_cache)) if dist.is_main else None, dist)
    identity = run_identity(cfg, info, policy_fp, ref_fp, ckpt.code_version())
    slot = held.enter_context(open_run(cfg, ws.root, info, identity, is_main=dist.is_main))
    run_id, out_dir, resume_from = slot.run_id, slot.output_dir, slot.resume_from

    # -- reference log-probs: a cached artefact, computed by rank 0 when missing ---------------------------
    dpo = cfg.mode == "dpo"
    # One row [prompt, chosen, rejected] per pair (prompt encoded once, see prefix.py) or two rows per pair.
    shared = plan.shared

    def make_batch(idx: np.ndarray) -> dict[str, torch.Tensor]:
        b = collate_shared(data, idx, pad_id) if shared else collate(data, idx, pad_id, pairs=dpo)
        return {k: v.to(dist.device) for k, v in b.items()}

    def forward(m: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return shared_forward(m, batch) if shared else concatenated_forward(m, batch, pairs=dpo)

    spec = get_loss(cfg.loss)
    needs_ref = dpo and spec.needs_reference
    ref_chosen = ref_rejected = None
    ref_computed, ref_artefact = False, None
    # The reference is `ref_model` when given, else the starting policy (the base with adapters off under LoRA),
    # the same whether its log-probs are cached or computed per batch.
    ref_path = plan.ref_model or plan.model
    if needs_ref and cfg.precompute_reference:
        expected = reference_meta(cfg, ref_path, tokenizer, ref_fp or policy_fp)

        def compute_share() -> tuple[np.ndarray, np.ndarray]:
            # every rank scores its slice of the pairs (same count on every rank, so a sharded reference runs
            # the same number of forwards everywhere); the slices are gathered into the full arrays
            mine = _rank_slice(len(data), dist)
            ref = D.wrap(_load_model(ref_path, cfg, load_on).requires_grad_(False), dist, dtype=cfg.dtype,
                         frozen=True)
            with D.autocast(cfg.dtype, dist):
                c, r = compute_reference_logps(ref, _subset(data, mine), batch_size=cfg.reference_batch_size,
                                               pad_id=pad_id, device=dist.device, share_prompt=shared)
            del ref
            return D.gather_rows(c, mine, len(data), dist), D.gather_rows(r, mine, len(data), dist)

        def compute() -> tuple[np.ndarray, np.ndarray]:
            D.broadcast(True, dist)  # tells the other ranks to join the pass
            return compute_share()

        # rank 0 looks the artefact up (and publishes it); the others join the pass only when it runs
        found = None
        if dist.is_main:
            found = ensure_reference(ws.root, info, table, data, expected, compute, code_version=ckpt.code_version())
            if not found[3]:
                D.broadcast(False, dist)
        elif D.broadcast(None, dist):
            compute_share()
        ref_artefact, ref_chosen, ref_rejected, ref_computed = D.broadcast(found, dist)

    # -- model, optimizer, schedule (or their saved state) --------------------------------------------------
    base_path = resume_from if (resume_from is not None and not cfg.lora) else plan.model
    model = _load_model(base_path, cfg, load_on)
    if cfg.lora:
        model = _add_lora(model, cfg, plan, resume_from)
    ref_model = None
    adapters_off_ref = cfg.lora and plan.ref_model is None  # the reference is this model with adapters off
    if needs_ref and not cfg.precompute_reference and not adapters_off_ref:
        ref_model = D.wrap(_load_model(ref_path, cfg, load_on).eval().requires_grad_(False), dist,
                           dtype=cfg.dtype, frozen=True)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    # Shard (FSDP) or wrap (DDP) first: fully_shard replaces the parameters, so the optimizer and the clipping
    # list are built from the wrapped model's parameters, never from the ones it had before.
    model = D.wrap(model, dist, dtype=cfg.dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.RMSprop
    # One process: the fused AdamW kernel (5x the per-tensor loop's speed on CPU). Sharded or replicated
    # parameters keep torch's default implementation, the one FSDP2 and DDP are tested with.
    fused = {"fused": True} if (opt_cls is torch.optim.AdamW and dist.mode == "none"
                                and dist.device.type in ("cpu", "cuda")) else {}
    optimizer = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    global_batch = cfg.per_device_batch_size * cfg.grad_accum * dist.world
    order_kw = dict(global_batch=global_batch, seed=cfg.seed, shuffle=cfg.shuffle,
                    group_by_length=cfg.group_by_length, drop_last=dist.world > 1)
    lengths = shared_lengths(data) if shared else data.lengths()
    per_epoch = len(epoch_order(lengths, epoch=0, **order_kw))
    total = per_epoch * cfg.epochs if cfg.max_steps <= 0 else min(cfg.max_steps, per_epoch * cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total))
    step = 0
    if resume_from is not None:
        state = ckpt.load_state(resume_from)
        D.load_optimizer(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        step = int(state["step"])
        log.info("resuming run %s from %s (step %d)", run_id, resume_from, step)
    loss_params = LossParams(beta=cfg.beta, label_smoothing=cfg.label_smoothing, simpo_gamma=cfg.simpo_gamma,
                             rpo_alpha=cfg.rpo_alpha)
    run_info = {"run_id": run_id, "snapshot_id": info.snapshot_id, "reference_artefact": ref_artefact,
                "identity": slot.identity,
                "model": cfg.model, "world_size": dist.world, "tokenize": data.stats.as_dict(),
                "total_steps": total, "reference_computed": ref_computed}
    if dist.is_main:
        run_log.record_run(ws.root, run_id, kind=cfg.mode, snapshot_id=info.snapshot_id, model=cfg.model,
                           config=cfg.to_dict(), code_version=ckpt.code_version(), status="running",
                           output_dir=str(out_dir), identity=slot.identity_hash)
    buffer = MetricBuffer(ws, run_id, dist.is_main)
    result = RunResult(run_id, out_dir, resume_from, info.snapshot_id, step, ref_computed,
                       tokenize_stats=data.stats.as_dict(), reference=ref_artefact)

    def reference_logps(batch: dict[str, torch.Tensor], idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if ref_chosen is not None:
            return (torch.as_tensor(ref_chosen[idx], device=dist.device, dtype=torch.float32),
                    torch.as_tensor(ref_rejected[idx], device=dist.device, dtype=torch.float32))
        with torch.no_grad(), D.autocast(cfg.dtype, dist):
            if adapters_off_ref:  # the reference is the base model: the same weights with the adapters switched off
                with D.unwrap(model).disable_adapter():
                    out = forward(D.unwrap(model), batch)
            else:
                out = forward(ref_model, batch)
        return out["chosen_logps"], out["rejected_logps"]

    def save(at: int) -> Path | None:
        weights, optim = D.full_state(model, optimizer)  # collective: FSDP gathers the shards to rank 0's CPU
        if dist.is_main:
            state = {"step": at, "optimizer": optim, "scheduler": scheduler.state_dict(), "rng": ckpt.rng_state()}
            ckpt.save_checkpoint(out_dir, at, D.unwrap(model), tokenizer, config=cfg.to_dict(),
                                 info=run_info, state=state, weights=weights)
            ckpt.prune(out_dir, cfg.save_total_limit)
            buffer.flush()
        D.barrier(dist)
        return out_dir / f"checkpoint-{at:06d}"

    order_epoch, order = -1, []
    try:
        while step < total:
            epoch, pos = divmod(step, per_epoch)
            if epoch != order_epoch:  # once per epoch, not per step: it sorts the whole data set
                order_epoch, order = epoch, epoch_order(lengths, epoch=epoch, **order_kw)
            gbatch = order[pos]
            micro = split_global_batch(gbatch, dist.world, dist.rank, cfg.per_device_batch_size)
            # Losses are sums scaled by the global count, times world (DDP averages gradients over ranks),
            # so the gradient is the same however the global batch is split over ranks and micro-batches.
            denom = float(len(gbatch)) if dpo else float(sum(len(data.chosen[i]) for i in gbatch))
            sums = StepSums(DPO_SUMS if dpo else SFT_SUMS)
            t0 = time.perf_counter()
            for m, idx in enumerate(micro):
                batch = make_batch(idx)
                sync = m == len(micro) - 1 or not hasattr(model, "no_sync")
                ctx = model.no_sync() if not sync else nullcontext()
                with ctx:
                    with D.autocast(cfg.dtype, dist):
                        out = forward(model, batch)
                    w = batch["weights"]
                    if dpo:
                        rc, rr = reference_logps(batch, idx) if needs_ref else (None, None)
                        if step == 0 and m == 0 and needs_ref and cfg.step0_check and policy_is_ref \
                                and resume_from is None:
                            _step0_check(out, rc, rr, cfg.step0_atol)
                        b = Batch(out["chosen_logps"], out["rejected_logps"], rc, rr,
                                  out["chosen_lengths"], out["rejected_lengths"])
                        losses, cr, rj = compute_loss(cfg.loss, b, loss_params)
                        loss = (losses * w).sum() / denom
                    else:
                        loss = -(out["chosen_logps"] * w).sum() / denom
                    _guard(loss, step, "loss", data, idx, table)
                    (loss * dist.world).backward()
                sums.add(loss=loss, pairs=len(idx), logp_chosen=out["chosen_logps"], len_chosen=out["chosen_lengths"],
                         tokens=batch["tokens"])
                if dpo:
                    sums.add(reward_chosen=cr, reward_rejected=rj, reward_acc=(cr > rj).float(),
                             logp_rejected=out["rejected_logps"], len_rejected=out["rejected_lengths"],
                             ref_chosen=rc if rc is not None else out["chosen_logps"],
                             ref_rejected=rr if rr is not None else out["rejected_logps"])
            clip = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            grad_norm = D.grad_norm_value(torch.nn.utils.clip_grad_norm_(params, clip))
            _guard(grad_norm, step, "gradient norm", data, gbatch, table)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            s = sums.reduce(dist)
            elapsed = time.perf_counter() - t0
            metrics = {"loss": s["loss"], "grad_norm": float(grad_norm), "lr": lr, "epoch": epoch + pos / per_epoch,
                       "tokens_per_s": s["tokens"] / max(elapsed, 1e-9), "pairs_per_s": s["pairs"] / max(elapsed, 1e-9)}
            metrics.update(dpo_metrics(s) if dpo else sft_metrics(s))
            if kl_probe is not None and kl_probe.due(step + 1):  # on-policy KL after every N updates
                metrics.update(kl_probe(D.unwrap(model), data.prompt, dist.device))
            buffer.add(step, metrics)
            result.losses[step] = s["loss"]
            step += 1
            if on_step is not None:
                on_step(step, metrics)
            if cfg.save_steps > 0 and step % cfg.save_steps == 0 and step < total:
                save(step)
            elif step % max(cfg.flush_steps, 1) == 0:
                buffer.flush()
        # A finished run run again trains nothing: its last checkpoint stays exactly as it was written.
        result.checkpoint = resume_from if resume_from is not None and not result.losses else save(step)
        result.steps = step
        if dist.is_main:
            buffer.flush(final=True)
            if cfg.report:
                result.report = write_report(out_dir / "report.html", run_id=run_id, rows=_history(ws, run_id),
                                             info=run_info, config=cfg.to_dict())
            ws.update_run(run_id, status="finished")
        return result
    except BaseException as exc:
        if dist.is_main:
            buffer.flush()
            ws.update_run(run_id, status="interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
        raise
    finally:
        D.shutdown(dist)


def _rank_slice(n: int, dist: D.DistInfo) -> np.ndarray:
    """This rank's rows of n, padded (with its last row) to ceil(n / world) so every rank has as many."""
    mine = np.arange(dist.rank, n, dist.world)
    size = -(-n // dist.world)
    return np.concatenate([mine, np.full(size - len(mine), mine[-1] if len(mine) else 0)]).astype(np.int64)


def _subset(data: TokenizedPairs, idx: np.ndarray) -> TokenizedPairs:
    return TokenizedPairs([data.prompt[i] for i in idx], [data.chosen[i] for i in idx],
                          [data.rejected[i] for i in idx], data.weights[idx], data.rows[idx], data.stats)


def _guard(value: torch.Tensor, step: int, what: str, data: Any, idx: np.ndarray, table: Any) -> None:
    """Stop on NaN/inf before it reaches the weights, naming the step and the pairs involved."""
    if not torch.isfinite(value).all():
        ids = table.column("pair_id").take(data.rows[np.asarray(idx)][:5]).to_pylist()
        raise FloatingPointError(
            f"non-finite {what} ({float(value.detach())}) at step {step} on pairs {ids}...: lower lr, check the data "
            "(empty answers, extreme weights) or use float32; the last checkpoint is intact")


def _step0_check(out: dict[str, torch.Tensor], rc: torch.Tensor, rr: torch.Tensor, atol: float) -> None:
    diff = max(float((out["chosen_logps"].detach() - rc).abs().max()),
               float((out["rejected_logps"].detach() - rr).abs().max()))
    if diff > atol:
        raise ValueError(
            f"step-0 check failed: policy and reference log-probs differ by {diff:.3g} (> {atol}) although the "
            "policy starts from the reference; the cached reference was computed with different weights, "
            "tokenisation or dtype (the artefact was altered?). Train with precompute_reference = false, or raise "
            "step0_atol for bf16.")


def _history(ws: Any, run_id: str) -> list[tuple[int, str, float]]:
    # run_id is validated to [A-Za-z0-9_.@-] by derive_run_id (or comes from run.json), so quoting it is safe.
    t = ws.sql(f"SELECT step, name, value FROM metrics WHERE run_id = '{run_id}' ORDER BY step")  # noqa: S608
    return list(zip(t.column("step").to_pylist(), t.column("name").to_pylist(), t.column("value").to_pylist(),
                    strict=True))
