"""Iterative DPO rounds: prompts -> generate -> judge -> pairs -> gate -> train -> evaluate, with lineage.

Each step of each round is recorded in the catalog's `rounds` table with its artefact (a file in the round's
folder, a snapshot id, a run id) once it has finished. A re-run reads that table and skips every finished step,
so a round killed at any point resumes at the step it was in; the training step itself resumes from its last
checkpoint. Round artefacts are written atomically, so a finished step's artefact is always complete.

The plain function `iterate(cfg, ws)` does the work; `iterate_flow` wraps each step as a Prefect task so the
rounds show up in the Prefect UI.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.iterate_config import BUILTIN, IterateConfig, load_iterate_config
from storage.templates import Labels, snapshot_turn_labels
from storage.workspace import Workspace

log = logging.getLogger("dpo.rounds")


def _write_parquet(table: pa.Table, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return str(path)


def _write_text(text: str, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return str(path)


EVAL_SEED_OFFSET = 10**6


def round_train_settings(cfg: IterateConfig) -> dict[str, Any]:
    """The round's TrainConfig keys: a round trains the `max_steps` it is configured for. A round's snapshot
    is small (16 pairs at batch 4 is one epoch of 4 steps), so unless `epochs` is set, enough epochs are
    allowed to reach max_steps instead of stopping at the end of the first."""
    train = dict(cfg.train)
    if train.get("max_steps", -1) > 0 and "epochs" not in train:
        train["epochs"] = int(train["max_steps"])
    return train


class RoundFailure(RuntimeError):
    """A step failed; the message names the experiment, round and step so the re-run is obvious."""


@dataclass
class Rounds:
    """Resume bookkeeping over the catalog's `rounds` table for one experiment."""

    ws: Workspace
    cfg: IterateConfig
    # How a step's function is executed: directly, or as a Prefect task (see pipelines.round_flow).
    execute: Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any]] = lambda name, fn: fn()

    def done(self, round: int, step: str) -> dict[str, Any] | None:
        for r in self.ws.get_rounds(self.cfg.experiment):
            if r["round"] == round and r["step"] == step and r["status"] == "done":
                return r["details"]
        return None

    def run(self, round: int, step: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        hit = self.done(round, step)
        if hit is not None:
            log.info("%s round %d: %s already done, skipping", self.cfg.experiment, round, step)
            return hit
        self.ws.record_round(self.cfg.experiment, round, step, status="running")
        try:
            details = self.execute(f"round-{round}-{step}", fn)
        except BaseException as exc:
            self.ws.record_round(self.cfg.experiment, round, step, status="failed",
                                 details={"error": f"{type(exc).__name__}: {exc}"[:2000]})
            raise RoundFailure(f"experiment {self.cfg.experiment!r} round {round} step {step!r} failed: {exc}; "
                               "fix the cause and re-run the same command to resume from this step") from exc
        self.ws.record_round(self.cfg.experiment, round, step, status="done", artefact=details.get("artefact"),
                             details=details)
        return details


# -- the steps (plain functions over artefacts) ------------------------------------------------------------
def ensure_inputs(ws: Workspace, cfg: IterateConfig) -> IterateConfig:
    """Make the prompt snapshot (from `prompts.sources`) and the built-in tiny policy when they are missing."""
    from storage.workspace import parse_ref

    name, _ = parse_ref(cfg.prompts.snapshot)
    if cfg.prompts.sources and not ws.list_snapshots(name):
        from pipelines import steps

        raw = steps.ingest(ws, cfg.prompts.sources, f"{name}_raw", format=cfg.prompts.format)
        steps.clean(ws, raw.snapshot_id, cfg.gate, dataset=name)
    if cfg.policy == BUILTIN + "tiny":
        from dpo_train.tiny import make_tiny_model

        cfg = cfg.model_copy(update={"policy": str(make_tiny_model(ws.path("models", "tiny")))})
    return cfg


def prompt_pool(ws: Workspace, cfg: IterateConfig) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """Distinct prompts of the pool snapshot (with their `source`, which picks their turn labels), shuffled once
    by seed; the first `eval_prompts` are held out."""
    src = ws.resolve(cfg.prompts.snapshot)
    df = pl.from_arrow(ws.read(src.snapshot_id).select(["prompt_id", "prompt", "source", "prompt_text"]))
    assert isinstance(df, pl.DataFrame)
    df = df.unique("prompt_id", keep="first").sort("prompt_id")
    too_long = df.filter(pl.col("prompt_text").str.len_chars() > cfg.prompts.max_prompt_chars).height
    df = df.filter(pl.col("prompt_text").str.len_chars() <= cfg.prompts.max_prompt_chars)
    df = df.sample(fraction=1.0, shuffle=True, seed=cfg.prompts.seed).drop("prompt_text")
    n_eval = cfg.prompts.eval_prompts
    if df.height <= n_eval:
        raise ValueError(f"prompt pool {src.snapshot_id} has {df.height} usable prompts; need more than {n_eval}")
    stats = {"source": src.snapshot_id, "distinct": df.height + too_long, "skipped_too_long": too_long,
             "eval": n_eval}
    return df.head(n_eval).to_arrow(), df.slice(n_eval).to_arrow(), stats


def round_prompts(pool: pa.Table, cfg: IterateConfig, round: int) -> pa.Table:
    """Fresh prompts each round while the pool lasts (wrapping around after), so rounds don't reuse prompts."""
    k = cfg.prompts.per_round
    idx = [((round - 1) * k + i) % pool.num_rows for i in range(min(k, pool.num_rows))]
    return pool.take(pa.array(idx, pa.int64()))


def generation_cfg(cfg: IterateConfig, model: str, seed_offset: int, **over: Any):
    from dpo_train.generation import GenerationConfig

    base = GenerationConfig.from_dict({**cfg.generation, "model": model})
    return base.replace(seed=base.seed + seed_offset, **over)


def make_round_judge(ws: Workspace, cfg: IterateConfig, runner: Rounds, labels: dict[str, Labels] | None = None):
    """The judge of the experiment; a Bradley-Terry judge is trained once (round 0) on `judge_train_on`.
    `labels`: the prompt pool's per-source turn labels, for judges that feed prompts to a model."""
    from dpo_train.judges import make_judge

    spec = dict(cfg.judge)
    if spec.get("type") == "bradley_terry" and not spec.get("path"):
        def fit() -> dict[str, Any]:
            from dpo_train.judges import train_bradley_terry

            src = ws.resolve(cfg.judge_train_on or "")
            model = train_bradley_terry(ws.read(src.snapshot_id), snapshot_id=src.snapshot_id)
            path = ws.path("rounds", cfg.experiment, "judge")
            model.save(path)
            return {"artefact": str(path), "trained_on": src.snapshot_id, "meta": model.meta}

        spec["path"] = runner.run(0, "judge_model", fit)["artefact"]
    return make_judge(spec, labels_by_source=labels)


def _policy_after(runner: Rounds, cfg: IterateConfig, round: int) -> str:
    if round == 0:
        return cfg.policy
    done = runner.done(round, "train")
    if done is None:
        raise RoundFailure(f"round {round} has no finished training step")
    return done["checkpoint"]


def run_round(ws: Workspace, cfg: IterateConfig, round: int, runner: Rounds, judge: Any,
              pool: pa.Table, eval_prompts: pa.Table, labels: dict[str, Labels] | None = None) -> dict[str, Any]:
    """One round's steps; `labels` are the pool snapshot's per-source turn labels (snapshot_turn_labels)."""
    from dpo_train.config import TrainConfig
    from dpo_train.evaluation import evaluate_round
    from dpo_train.generation import generate
    from dpo_train.judges import score
    from dpo_train.metrics import KLProbe
    from dpo_train.pairing import build_pairs
    from dpo_train.trainer import train
    from pipelines import steps

    exp = cfg.experiment
    rdir = ws.path("rounds", exp, f"round-{round:03d}")
    policy = _policy_after(runner, cfg, round - 1)
    reference = cfg.policy if cfg.reference == "initial" else policy

    def s_prompts() -> dict[str, Any]:
        t = round_prompts(pool, cfg, round)
        return {"artefact": _write_parquet(t, rdir / "prompts.parquet"), "prompts": t.num_rows}

    def s_generate() -> dict[str, Any]:
        prompts = pq.read_table(runner.done(round, "prompts")["artefact"])
        gcfg = generation_cfg(cfg, policy, seed_offset=1000 * round)
        gens = generate(prompts, gcfg, labels_by_source=labels)
        return {"artefact": _write_parquet(gens, rdir / "generations.parquet"), "rows": gens.num_rows,
                "sampler": gcfg.to_dict(), "policy": policy}

    def s_judge() -> dict[str, Any]:
        scored = score(pq.read_table(runner.done(round, "generate")["artefact"]), judge)
        return {"artefact": _write_parquet(scored, rdir / "scored.parquet"), "judge": judge.label}

    def s_pairs() -> dict[str, Any]:
        scored = pq.read_table(runner.done(round, "judge")["artefact"])
        res = build_pairs(scored, cfg.pairs, round=round, judge=judge.label)
        info = ws.publish(f"{exp}-r{round}-pairs", res.pairs, rejects=res.dropped, kind="generated",
                          parents=[cfg.prompts.snapshot], params={"pairing": res.stats, "judge": judge.label,
                                                                 "policy": policy, "round": round})
        return {"artefact": info.snapshot_id, "stats": res.stats}

    def s_gate() -> dict[str, Any]:
        raw = runner.done(round, "pairs")["artefact"]
        info = steps.clean(ws, raw, cfg.round_gate(), dataset=f"{exp}-r{round}")
        return {"artefact": info.snapshot_id, "kept": info.kept, "rejected": info.rejected}

    def s_train() -> dict[str, Any]:
        clean = runner.done(round, "gate")["artefact"]
        if ws.resolve(clean).kept == 0:
            raise ValueError(f"the gate kept no pairs in {clean}: nothing to train on (see `dpo show {clean}`)")
        tcfg = TrainConfig.from_dict({**round_train_settings(cfg), "snapshot": clean, "model": policy,
                                      "ref_model": reference, "run_id": f"{exp}-r{round}",
                                      "output_dir": str(rdir / "train")})
        probe = KLProbe(reference, every=cfg.eval.kl_probe_steps, seed=round) if cfg.eval.kl_probe_steps else None
        res = train(tcfg, ws, kl_probe=probe)
        return {"artefact": res.run_id, "checkpoint": str(res.checkpoint), "run_id": res.run_id,
                "steps": res.steps, "trained_on": res.snapshot_id, "reference": reference, "policy_in": policy,
                "sampled_rows": res.tokenize_stats.get("sampled_rows"),
                "answers_without_eos": res.tokenize_stats.get("answers_without_eos")}

    def s_evaluate() -> dict[str, Any]:
        new_policy = runner.done(round, "train")["checkpoint"]
        gens = _eval_generations(ws, cfg, round, new_policy, eval_prompts, judge, labels)
        previous = pq.read_table(runner.done(round - 1, "evaluate")["generations"])
        baseline = pq.read_table(runner.done(0, "evaluate")["generations"])
        rec = evaluate_round(round, gens, judge=judge, previous=previous, reference=baseline,
                             policy_path=new_policy if cfg.eval.kl else None,
                             reference_path=reference if cfg.eval.kl else None,
                             win_judge=judge if cfg.eval.win_rate else None)
        path = _write_text(json.dumps(rec, indent=2, default=str), rdir / "evaluation.json")
        return {"artefact": path, "generations": str(rdir / "eval_generations.parquet"), "evaluation": rec}

    for name, fn in (("prompts", s_prompts), ("generate", s_generate), ("judge", s_judge), ("pairs", s_pairs),
                     ("gate", s_gate), ("train", s_train), ("evaluate", s_evaluate)):
        runner.run(round, name, fn)
    return runner.done(round, "evaluate") or {}


def _eval_generations(ws: Workspace, cfg: IterateConfig, round: int, model: str, eval_prompts: pa.Table,
                      judge: Any, labels: dict[str, Labels] | None) -> pa.Table:
    from dpo_train.generation import generate
    from dpo_train.judges import score

    # Fresh seeds every round (EVAL_SEED_OFFSET + round, apart from the training samples' 1000 * round): the
    # errors of two rounds' estimates are independent, so a difference's s.e. is sqrt(se_a^2 + se_b^2) and a
    # round's luck does not repeat in the next. Pure sampling (T=1, top-p 1, no stop strings): the KL
    # E_pi[log pi - log pi_ref] is only unbiased for samples of pi itself.
    gcfg = generation_cfg(cfg, model, seed_offset=EVAL_SEED_OFFSET + round, n=cfg.eval.samples, temperature=1.0,
                          top_p=1.0, stop=())
    gens = score(generate(eval_prompts, gcfg, labels_by_source=labels), judge)
    _write_parquet(gens, ws.path("rounds", cfg.experiment, f"round-{round:03d}", "eval_generations.parquet"))
    return gens


def config_fingerprint(cfg: IterateConfig) -> str:
    """What the finished steps depend on: everything but the number of rounds and the workspace location."""
    from storage.schema import hash_text

    return hash_text(json.dumps(cfg.model_dump(exclude={"rounds", "workspace"}), sort_keys=True, default=str))


def check_same_config(ws: Workspace, cfg: IterateConfig) -> None:
    """Resuming must not mix settings: an experiment keeps the configuration it started with."""
    fp = config_fingerprint(cfg)
    started = next((r for r in ws.get_rounds(cfg.experiment) if r["round"] == 0 and r["step"] == "config"), None)
    if started is None:
        ws.record_round(cfg.experiment, 0, "config", status="done", artefact=fp,
                        details={"fingerprint": fp, "config": cfg.model_dump()})
    elif started["artefact"] != fp:
        raise RoundFailure(
            f"experiment {cfg.experiment!r} was started with a different configuration (fingerprint "
            f"{started['artefact']}, now {fp}); its finished steps would not match. Use a new `experiment` name, "
            "or restore the original settings to resume (they are in the rounds table, step 'config')")


def iterate(cfg: IterateConfig, ws: Workspace | None = None, *, rounds: int | None = None,
            execute: Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any]] | None = None,
            ) -> list[dict[str, Any]]:
    """Run (or resume) rounds 1..N; returns the evaluation record of every round, round 0 = the initial policy."""
    from dpo_train.round_report import write_report

    ws = ws or Workspace(cfg.workspace)
    check_same_config(ws, cfg)
    cfg = ensure_inputs(ws, cfg)
    runner = Rounds(ws, cfg) if execute is None else Rounds(ws, cfg, execute)
    eval_prompts, pool, pool_stats = prompt_pool(ws, cfg)
    # Without a chat template a prompt is rendered with its source's turn labels (HH keeps "Human:"): sampling,
    # judging and evaluation use the prompt text `dpo train` and `dpo export` use for the pool's rows.
    labels = snapshot_turn_labels(ws, ws.resolve(pool_stats["source"]))
    judge = make_round_judge(ws, cfg, runner, labels)

    def baseline() -> dict[str, Any]:
        gens = _eval_generations(ws, cfg, 0, cfg.policy, eval_prompts, judge, labels)
        from dpo_train.evaluation import evaluate_round

        # KL of the initial policy to itself is 0 by construction; measured anyway so every curve starts at 0.
        rec = evaluate_round(0, gens, judge=judge, policy_path=cfg.policy if cfg.eval.kl else None,
                             reference_path=cfg.policy if cfg.eval.kl else None)
        rdir = ws.path("rounds", cfg.experiment, "round-000")
        _write_parquet(eval_prompts, rdir / "eval_prompts.parquet")
        return {"artefact": _write_text(json.dumps(rec, indent=2, default=str), rdir / "evaluation.json"),
                "generations": str(rdir / "eval_generations.parquet"), "evaluation": rec, "pool": pool_stats,
                "policy": cfg.policy, "reference": cfg.reference, "config": cfg.model_dump()}

    history = [runner.run(0, "evaluate", baseline)["evaluation"]]
    for k in range(1, (rounds or cfg.rounds) + 1):
        history.append(run_round(ws, cfg, k, runner, judge, pool, eval_prompts, labels)["evaluation"])
        write_report(history, ws.path("rounds", cfg.experiment, "report.html"),
                     title=f"Iterative DPO: {cfg.experiment}")
    return history


def run_iterate(config_path: str | Path, *, rounds: int | None = None,
                workspace: str | Path | None = None) -> list[dict[str, Any]]:
    """`dpo iterate`: load the config and run the rounds as a Prefect flow."""
    from pipelines.round_flow import iterate_flow

    cfg = load_iterate_config(config_path)
    if workspace is not None:
        cfg = cfg.model_copy(update={"workspace": str(workspace)})
    return iterate_flow(cfg.model_dump(), rounds=rounds)
