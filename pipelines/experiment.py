"""`dpo experiment`: a controlled experiment that checks the whole DPO setup against a known reward.

The DPO paper's sentiment experiment, on CPU in minutes: a tiny local policy is SFT'd briefly on real AlpacaEval
answers (the reference), a programmatic reward the policy never sees (dpo_train.judges.functions:sentiment, a
lexicon score) labels pairs of the reference's own samples, and these compete on held-out prompts:

    reference (SFT) | best-of-n of the reference | Preferred-FT (SFT on the chosen answers) |
    offline DPO at two betas | iterative DPO rounds (pipelines.rounds, the same reward as judge)

Each policy answers the same held-out prompts with the same seeds (common random numbers: the comparison between
methods is paired), and the table reports the true reward (mean ± s.e., clustered by prompt) against the KL to
the reference measured on the sampled ids (dpo_train.kl, mean ± s.e.). Best-of-n's KL is the analytic
log n - (n-1)/n. A working setup shows DPO above the reference and above Preferred-FT at equal or lower KL.
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from storage.workspace import Workspace

REWARD = "dpo_train.judges.functions:sentiment"
# Every pair of a prompt's answers with different rewards: the lexicon reward is sparse (most answers score 0),
# and all the ordered pairs give DPO many more comparisons per sampled answer than best-vs-worst.
PAIRS = {"rule": "all_above_margin", "min_margin": 0.0}
ALPACA = "alpaca_eval/annotations/alpaca-7b__alpaca_eval_gpt4.json.gz"
EVAL_SEED = 123_457
# Short prompts and sequences keep the whole experiment to minutes on two CPU cores.
MAX_PROMPT_CHARS, MAX_LENGTH, MAX_PROMPT_LENGTH = 400, 128, 96  # shared by every method: paired comparison on the same prompts and seeds


@dataclass(frozen=True)
class ExperimentSettings:
    sft_steps: int = 40  # SFT of the tiny model on AlpacaEval answers: the reference policy
    train_prompts: int = 128  # prompts whose sampled answers become the offline pairs
    n: int = 8  # answers per prompt (offline pairs and rounds; best-of-n uses BEST_OF)
    max_new_tokens: int = 24
    steps: int = 80  # optimizer steps of each offline method (DPO, Preferred-FT)
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.1, 0.5)
    rounds: int = 2  # iterative DPO rounds (each: train_prompts // rounds fresh prompts)
    eval_prompts: int = 24
    eval_samples: int = 8
    batch_size: int = 8
    best_of: int = 4
    seed: int = 0

    @classmethod
    def quick(cls) -> ExperimentSettings:
        return cls(sft_steps=8, train_prompts=12, n=3, max_new_tokens=8, steps=3, rounds=1, eval_prompts=4,
                   eval_samples=2, batch_size=4, best_of=3)


def _train(ws: Workspace, run_id: str, **kw: Any) -> Any:
    from dpo_train.config import TrainConfig
    from dpo_train.trainer import train

    base = {"max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH, "save_steps": 0, "report": False,
            "run_id": run_id, "per_device_batch_size": 8}
    return train(TrainConfig.from_dict({**base, **kw}), ws)


def _evaluate(name: str, policy: str, reference: str, prompts: pa.Table, s: ExperimentSettings,
              judge: Any) -> dict[str, Any]:
    from dpo_train.evaluation import clustered_mean_se
    from dpo_train.generation import GenerationConfig, generate
    from dpo_train.judges import score
    from dpo_train.kl import kl_to_reference

    gens = score(generate(prompts, GenerationConfig(model=policy, n=s.eval_samples, max_new_tokens=s.max_new_tokens,
                                                    temperature=1.0, top_p=1.0, seed=EVAL_SEED)), judge)
    reward, se = clustered_mean_se(gens.column("score").to_pylist(), gens.column("prompt_id").to_pylist())
    kl = kl_to_reference(policy, reference, gens)
    truncated = float(np.mean([r == "length" for r in gens.column("stop_reason").to_pylist()]))
    return {"method": name, "policy": policy, "reward": reward, "reward_se": se, "kl": kl["kl"],
            "kl_se": kl["stderr"], "kl_mc": kl["kl_mc"], "kl_mc_se": kl["kl_mc_stderr"], "truncated": truncated,
            "mean_tokens": kl["mean_tokens"]}


def _best_of_n(reference: str, prompts: pa.Table, s: ExperimentSettings, judge: Any) -> dict[str, Any]:
    """Best of n reference samples by the true reward; KL = log n - (n-1)/n (exact without reward ties)."""
    from dpo_train.evaluation import clustered_mean_se
    from dpo_train.generation import GenerationConfig, generate
    from dpo_train.judges import score

    n = s.best_of
    g = score(generate(prompts, GenerationConfig(model=reference, n=s.eval_samples * n,
                                                 max_new_tokens=s.max_new_tokens, seed=EVAL_SEED + 1)), judge)
    scores = np.asarray(g.column("score").to_pylist(), dtype=float).reshape(-1, s.eval_samples, n)
    best = scores.max(-1)
    groups = np.repeat(np.arange(best.shape[0]), s.eval_samples)
    reward, se = clustered_mean_se(best.ravel(), groups)
    return {"method": f"best-of-{n}", "policy": reference, "reward": reward, "reward_se": se,
            "kl": math.log(n) - (n - 1) / n, "kl_se": 0.0, "kl_mc": None, "kl_mc_se": None,
            "truncated": None, "mean_tokens": None}


def run_experiment(workspace: str | os.PathLike[str] | None = None, *, quick: bool = False,
                   settings: ExperimentSettings | None = None, out_dir: str | os.PathLike[str] | None = None,
                   ) -> dict[str, Any]:
    """Run (or resume: snapshots, runs and rounds are reused) the controlled experiment; returns its results."""
    import torch

    threads = torch.get_num_threads()
    # One thread: the tiny model gains nothing from more, and on a shared machine extra threads spin against
    # other processes (measured 5x slower with 2 threads on a loaded 2-core box).
    torch.set_num_threads(1)
    try:
        return _run(workspace, quick, settings, out_dir)
    finally:
        torch.set_num_threads(threads)


def _run(workspace: str | os.PathLike[str] | None, quick: bool, settings: ExperimentSettings | None,
         out_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    from dpo_train.generation import GenerationConfig, generate
    from dpo_train.judges import PythonFunctionJudge, score
    from dpo_train.pairing import build_pairs
    from dpo_train.tiny import make_tiny_model, shared_data_dir
    from pipelines import steps
    from pipelines.iterate_config import parse_iterate_config
    from pipelines.rounds import iterate, prompt_pool

    s = settings or (ExperimentSettings.quick() if quick else ExperimentSettings())
    tag = "experiment-quick" if quick else "experiment"
    t0 = time.perf_counter()
    ws = Workspace(workspace)
    out = Path(out_dir) if out_dir else ws.path("experiments", tag)
    judge = PythonFunctionJudge(REWARD)
    if not ws.list_snapshots(f"{tag}-alpaca"):
        raw = steps.ingest(ws, [str(shared_data_dir() / ALPACA)], f"{tag}-alpaca-raw")
        steps.clean(ws, raw.snapshot_id, {}, dataset=f"{tag}-alpaca")
    tiny = make_tiny_model(ws.path("models", "tiny"), seed=s.seed)
    sft = str(_train(ws, f"{tag}-sft", mode="sft", snapshot=f"{tag}-alpaca", model=str(tiny), lr=s.lr,
                     max_steps=s.sft_steps, epochs=s.sft_steps, per_device_batch_size=s.batch_size).checkpoint)

    per_round = max(s.train_prompts // s.rounds, 1)
    icfg = parse_iterate_config({
        "experiment": f"{tag}-iterative", "workspace": str(ws.root), "rounds": s.rounds, "policy": sft,
        "reference": "initial",
        "prompts": {"snapshot": f"{tag}-alpaca", "per_round": per_round, "eval_prompts": s.eval_prompts,
                    "seed": s.seed, "max_prompt_chars": MAX_PROMPT_CHARS},
        "generation": {"n": s.n, "max_new_tokens": s.max_new_tokens, "temperature": 1.0, "top_p": 1.0,
                       "seed": s.seed},
        "judge": {"type": "python", "function": REWARD},
        "pairs": PAIRS,
        "train": {"beta": s.betas[0], "lr": s.lr, "max_steps": max(s.steps // s.rounds, 1),
                  "per_device_batch_size": s.batch_size, "max_length": MAX_LENGTH,
                  "max_prompt_length": MAX_PROMPT_LENGTH,
                  "save_steps": 0, "report": False},
        "eval": {"samples": s.eval_samples},
    })
    # The held-out prompts of the rounds are every method's evaluation prompts; the offline pairs come from
    # the same pool the rounds draw from, so no method trains on an evaluation prompt.
    eval_prompts, pool, _ = prompt_pool(ws, icfg)
    train_prompts = pool.slice(0, min(s.train_prompts, pool.num_rows))
    if not ws.list_snapshots(f"{tag}-pairs"):
        gens = score(generate(train_prompts, GenerationConfig(model=sft, n=s.n, max_new_tokens=s.max_new_tokens,
                                                              seed=s.seed)), judge)
        res = build_pairs(gens, PAIRS, round=0, judge=judge.label)
        ws.publish(f"{tag}-pairs", res.pairs, rejects=res.dropped, kind="generated", parents=[f"{tag}-alpaca"],
                   params={"pairing": res.stats, "judge": judge.label, "policy": sft})
    pairs = ws.resolve(f"{tag}-pairs")
    # Offline methods: the same pairs, steps, learning rate and batch size; only the objective differs.
    # Each is also evaluated at half its steps, so the table has two points of each method's reward-vs-KL curve
    # and DPO can be compared with Preferred-FT at equal or lower KL, not only at equal steps.
    half = s.steps // 2
    offline = {"snapshot": pairs.snapshot_id, "model": sft, "max_steps": s.steps, "epochs": s.steps, "lr": s.lr,
               "per_device_batch_size": s.batch_size, "save_steps": half if 0 < half < s.steps else 0,
               "save_total_limit": 0}
    policies = {"reference (SFT)": sft}
    methods = {f"DPO beta={beta:g}": {"run_id": f"{tag}-dpo-b{beta:g}", "mode": "dpo", "beta": beta}
               for beta in s.betas}
    methods["Preferred-FT"] = {"run_id": f"{tag}-pft", "mode": "sft"}
    for name, kw in methods.items():
        final = _train(ws, **kw, **offline).checkpoint
        halfway = final.parent / f"checkpoint-{half:06d}"
        if offline["save_steps"] and halfway.exists():
            policies[f"{name} at step {half}"] = str(halfway)
        policies[name] = str(final)
    iterate(icfg, ws)
    for r in ws.get_rounds(icfg.experiment):
        if r["step"] == "train" and r["status"] == "done":
            policies[f"iterative round {r['round']}"] = r["details"]["checkpoint"]

    rows = [_evaluate(name, path, sft, eval_prompts, s, judge) for name, path in policies.items()]
    rows.insert(1, _best_of_n(sft, eval_prompts, s, judge))
    result = {"settings": asdict(s), "reward": REWARD, "rows": rows, "seconds": time.perf_counter() - t0,
              "pairs": pairs.snapshot_id, "workspace": str(ws.root)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    (out / "reward_vs_kl.png").write_bytes(base64.b64decode(plot_png(rows)))
    result["plot"] = str(out / "reward_vs_kl.png")
    return result


def _family(method: str) -> str:
    """The curve a row belongs to: a method at several steps, or the iterative rounds."""
    return "iterative DPO" if method.startswith("iterative round") else method.split(" at step ")[0]


def plot_png(rows: list[dict[str, Any]]) -> str:
    """Each method's points joined from the reference in order of KL, so their reward-vs-KL curves compare."""
    from storage.figures import png_base64

    reference = rows[0]
    curves: dict[str, list[dict[str, Any]]] = {}
    for r in rows[1:]:
        curves.setdefault(_family(r["method"]), []).append(r)

    def draw(ax: Any) -> None:
        ax.errorbar([reference["kl"]], [reference["reward"]], yerr=[reference["reward_se"] or 0.0], marker="o",
                    color="black", capsize=3, label=reference["method"])
        for name, pts in curves.items():
            # best-of-n is not a trained policy: its point stands alone
            pts = sorted(pts, key=lambda r: r["kl"]) if name.startswith("best-of") else \
                [reference, *sorted(pts, key=lambda r: r["kl"])]
            ax.errorbar([r["kl"] for r in pts], [r["reward"] for r in pts],
                        xerr=[r["kl_se"] or 0.0 for r in pts], yerr=[r["reward_se"] or 0.0 for r in pts],
                        marker="o", capsize=3, label=name, linestyle="none" if name.startswith("best-of") else "-")
        ax.set_xlabel("KL(policy || reference), nats per answer (sampled ids)")
        ax.set_ylabel("true reward (mean ± s.e.)")
        ax.set_title("controlled experiment: reward vs KL (each curve starts at the reference)",
                     fontsize=8)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.grid(alpha=0.3)

    return png_base64(draw, 8, 4, dpi=100)


def format_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    def pm(v: float | None, se: float | None) -> str:
        return "-" if v is None else (f"{v:.3f} ± {se:.3f}" if se is not None else f"{v:.3f}")

    return [[r["method"], pm(r["reward"], r["reward_se"]), pm(r["kl"], r["kl_se"]), pm(r["kl_mc"], r["kl_mc_se"]),
             "-" if r["truncated"] is None else f"{r['truncated']:.2f}"] for r in rows]


TABLE_HEADER = ["method", "reward", "KL (exact/pos)", "KL (Monte Carlo)", "truncated"]
