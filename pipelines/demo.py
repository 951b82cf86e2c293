"""`dpo demo`: the whole product end to end on one machine, CPU, a tiny local model and the real data.

ingest (HH-RLHF, AlpacaEval) -> clean -> tiny model -> SFT reference -> DPO -> two iterative rounds judged by a
known reward (a sentiment lexicon) -> a table of reward, win rate and KL per round, each with its standard error
-> where to look. Every stage is an ordinary call of the same functions the CLI
verbs use, so re-running the demo reuses the cached snapshots and finished rounds instead of redoing them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from dpo_train.progress import reporting
from storage.workspace import Workspace

console = Console(stderr=True)

HH = "hh-rlhf/harmless-base-test.jsonl.gz"
ALPACA = "alpaca_eval/annotations/alpaca-7b__alpaca_eval_gpt4.json.gz"
CONCISE = "alpaca_eval/annotations/alpaca-7b_concise__weighted_alpaca_eval_gpt4_turbo.json.gz"
VERBOSE = "alpaca_eval/annotations/alpaca-7b_verbose__weighted_alpaca_eval_gpt4_turbo.json.gz"


@dataclass(frozen=True)
class DemoSettings:
    sft_steps: int = 40
    dpo_steps: int = 30
    # Rounds start from the SFT policy (the reference) so their reward and KL climb from zero; 64 prompts x 8
    # samples give each round ~hundreds of pairs, and 40 steps at batch 8 move the policy visibly per round.
    rounds: int = 3
    per_round: int = 64
    eval_prompts: int = 24
    n: int = 8
    max_new_tokens: int = 24
    round_steps: int = 40
    round_batch: int = 8
    eval_samples: int = 16  # 384 held-out answers per round: a reward change shows above its standard error

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(sft_steps=6, dpo_steps=4, rounds=2, per_round=6, eval_prompts=3, n=3, max_new_tokens=24,
                   round_steps=2, round_batch=4, eval_samples=2)


def shared_data_dir() -> Path:
    from dpo_train.tiny import shared_data_dir as tiny_shared

    path = tiny_shared()
    if not (path / HH).exists():
        raise FileNotFoundError(f"real data not found under {path}: set DPO_SHARED_DATA to the shared/data folder")
    return path


def train_with_progress(cfg_dict: dict[str, Any], ws: Workspace, label: str) -> Any:
    from dpo_train.config import TrainConfig
    from dpo_train.trainer import train

    cfg = TrainConfig.from_dict(cfg_dict)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TimeElapsedColumn())
    # Under torchrun every rank runs this; only rank 0 draws the bar.
    with Progress(*columns, console=console, disable=os.environ.get("RANK", "0") != "0") as progress:
        task = progress.add_task(label, total=cfg.max_steps if cfg.max_steps > 0 else None, loss="-")

        def on_step(step: int, metrics: dict[str, float]) -> None:
            progress.update(task, completed=step, loss=f"{metrics['loss']:.4f}")

        steps_of: dict[str, TaskID] = {}

        def on_progress(what: str, done: int, total: int) -> None:  # long steps before training (reference pass)
            if what not in steps_of:
                steps_of[what] = progress.add_task(what, total=total, loss="")
            progress.update(steps_of[what], completed=done, total=total, description=what)

        with reporting(on_progress):
            result = train(cfg, ws, on_step=on_step)
        progress.update(task, completed=result.steps)  # a resumed, already finished run reports no steps
        return result


def run_demo(workspace: str | os.PathLike[str] | None = None, *, quick: bool = False,
             settings: DemoSettings | None = None) -> dict[str, Any]:
    import torch

    threads = torch.get_num_threads()
    # One thread, as `dpo experiment`: the tiny model gains nothing from more, and on a shared machine extra
    # threads spin against other processes (the full demo ran past 15 min with 2 threads under CI load).
    torch.set_num_threads(1)
    try:
        return _run_demo(workspace, quick, settings)
    finally:
        torch.set_num_threads(threads)


def _run_demo(workspace: str | os.PathLike[str] | None, quick: bool, settings: DemoSettings | None) -> dict[str, Any]:
    from dpo_train.tiny import make_tiny_model
    from pipelines import steps
    from pipelines.iterate_config import parse_iterate_config

    s = settings or (DemoSettings.quick() if quick else DemoSettings())
    tag = "-quick" if quick else ""  # the quick demo's runs and rounds never resume the full demo's
    t0 = time.perf_counter()
    ws = Workspace(workspace)
    data = shared_data_dir()
    console.rule(f"[bold]dpo demo[/] workspace {ws.root}")

    def stage(title: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        with console.status(title):
            result = fn()
        console.print(f"[green]done[/] {title} [dim]({time.perf_counter() - t:.1f}s)[/]")
        return result

    hh = stage("ingest HH-RLHF", lambda: steps.ingest(ws, [str(data / HH)], "hh_raw"))
    alpaca = stage("ingest AlpacaEval (GPT-4 judge)", lambda: steps.ingest(ws, [str(data / ALPACA)], "alpaca_raw"))
    lc = stage("ingest AlpacaEval concise + verbose (length-bias example)",
               lambda: steps.ingest(ws, [str(data / CONCISE), str(data / VERBOSE)], "alpaca_lc_raw"))
    hh_clean = stage("clean HH-RLHF", lambda: steps.clean(ws, hh.snapshot_id, {}))
    alpaca_clean = stage("clean AlpacaEval", lambda: steps.clean(ws, alpaca.snapshot_id, {}))
    lc_clean = stage("clean concise + verbose", lambda: steps.clean(ws, lc.snapshot_id, {}))
    tiny = stage("build a tiny model + tokenizer locally", lambda: make_tiny_model(ws.path("models", "tiny")))

    sft = train_with_progress({"mode": "sft", "snapshot": alpaca_clean.snapshot_id, "model": str(tiny),
                                "max_steps": s.sft_steps, "lr": 1e-3, "per_device_batch_size": 8,
                                "max_length": 128, "max_prompt_length": 96, "run_id": f"demo-sft{tag}", "save_steps": 0}, ws,
                               "SFT on chosen answers (makes the reference)")
    # A few dozen steps see a fraction of the 2.3k pairs, so reference log-probs are computed per batch here
    # instead of precomputed for the whole snapshot (the rounds below show the cached path).
    dpo = train_with_progress({"mode": "dpo", "snapshot": hh_clean.snapshot_id, "model": str(sft.checkpoint),
                                "precompute_reference": False, "max_steps": s.dpo_steps, "lr": 1e-4, "beta": 0.1, "per_device_batch_size": 8,
                                "max_length": 256, "max_prompt_length": 128, "run_id": f"demo-dpo{tag}", "save_steps": 0}, ws,
                               "DPO on the clean HH snapshot")
    cfg = parse_iterate_config({
        "experiment": f"demo{tag}", "workspace": str(ws.root), "rounds": s.rounds, "policy": str(sft.checkpoint),
        "reference": "initial",
        "prompts": {"snapshot": alpaca_clean.snapshot_id, "per_round": s.per_round, "eval_prompts": s.eval_prompts,
                    "max_prompt_chars": 400},
        # Pure sampling (T=1, top-p 1): the pairs and the KL are the policy's own distribution.
        "generation": {"n": s.n, "max_new_tokens": s.max_new_tokens, "temperature": 1.0, "top_p": 1.0},
        # A known reward the policy never sees, so the rounds visibly optimise something (the report shows it
        # moving with its s.e.); `{"type": "bradley_terry"}` + judge_train_on trains a reward model instead.
        "judge": {"type": "python", "function": "dpo_train.judges.functions:sentiment"},
        # Every ordered pair of different rewards: the lexicon reward is sparse, best-vs-worst would waste samples.
        "pairs": {"rule": "all_above_margin", "min_margin": 0.0},
        # A round trains its max_steps (several epochs of its few pairs if need be).
        "train": {"max_steps": s.round_steps, "lr": 1e-3, "beta": 0.1, "per_device_batch_size": s.round_batch,
                  "max_length": 128, "max_prompt_length": 96, "save_steps": 0},
        "eval": {"samples": s.eval_samples},
    })
    console.print(f"[bold]iterative DPO[/]: {s.rounds} rounds of generate -> judge -> pairs -> gate -> train -> evaluate")
    from pipelines.round_flow import iterate_flow

    history = iterate_flow(cfg.model_dump())
    elapsed = time.perf_counter() - t0
    summary = {"workspace": str(ws.root), "seconds": elapsed, "hh_clean": hh_clean.snapshot_id,
               "alpaca_clean": alpaca_clean.snapshot_id, "length_bias": lc_clean.snapshot_id,
               "sft_run": sft.run_id, "dpo_run": dpo.run_id, "rounds": len(history) - 1,
               "experiment": cfg.experiment}
    _where_to_look(ws, summary, history)
    return summary


_WHERE_TO_LOOK = """[bold green]demo finished[/] in {seconds:.0f}s. Where to look:
  snapshots and lineage   dpo {w}snapshots ; dpo {w}show {hh_clean}
  dropped rows, by reason dpo {w}sql "select rule, reason, count(*) from rejects group by all order by 3 desc"
  training metrics        dpo {w}sql "select step, name, value from metrics where name = 'loss' order by run_id, step"
  iterative rounds        dpo {w}rounds
  quality reports         {root}/snapshots/<dataset>/v<N>/report.html (e.g. the length-bias one:
                          {lc_report})
  run reports             {root}/runs/<run_id>/report.html ; rounds: {root}/rounds/{experiment}/report.html
  any DuckDB client       duckdb {root}/catalog.duckdb  (views: snapshots, rejects, quarantine, runs, metrics, rounds)
  Prefect UI              prefect server start   (then re-run; flow runs appear at http://127.0.0.1:4200)
"""


def _where_to_look(ws: Workspace, summary: dict[str, Any], history: list[dict[str, Any]]) -> None:
    from rich.table import Table

    from dpo_train.round_report import fmt, get

    t = Table(title="evaluation per round (held-out prompts; mean ± standard error)")
    cols = [("reward", ("score", "current", "mean"), ("score", "current", "stderr")),
            ("KL to reference", ("kl", "kl"), ("kl", "stderr")),
            ("win rate vs reference", ("win_rate_vs_reference", "win_rate"), ("win_rate_vs_reference", "stderr")),
            ("win rate vs previous", ("win_rate", "win_rate"), ("win_rate", "stderr")),
            ("mean tokens", ("length", "current", "mean_tokens"), None),
            ("truncated", ("length", "current", "truncated_fraction"), None)]
    t.add_column("round")
    for name, _, _ in cols:
        t.add_column(name)
    for rec in history:
        t.add_row(str(rec.get("round")), *(fmt(get(rec, p), get(rec, se)) for _, p, se in cols))
    console.print(t)
    w = f"-w {ws.root} " if Path.cwd() / "dpo-workspace" != ws.root else ""
    console.print(_WHERE_TO_LOOK.format(seconds=summary["seconds"], w=w, hh_clean=summary["hh_clean"], root=ws.root,
                                        lc_report=ws.resolve(summary["length_bias"]).path / "report.html",
                                        experiment=summary["experiment"]),
                  soft_wrap=True)
