"""This trainer vs TRL's DPOTrainer (default, precomputed reference, its speed options) vs a plain
forward+backward, side by side in one process, each configuration run --repeats times (median and spread).

    .venv/bin/python benchmarks/bench_train.py [--pairs 512] [--threads 1] [--repeats 3]

TRL's speed options: precompute_ref_log_probs and padding_free. TRL >= 1 has no use_logits_to_keep switch, and
its length grouping (train_sampling_strategy="group_by_length") cannot run on DPO rows (see TRL_FAST).
Runs of one repeat go in sequence ours, TRL default, TRL precomputed, TRL fast, plain, so machine noise hits
every configuration alike; the load average is printed with the table.

Same tiny Llama (4 layers, hidden 256, 4 heads, vocab 8k), same pairs (prompts ~32 tokens, answers 64-96),
batch 8, max length 192, fp32, one epoch, AdamW at the same lr, dropout off. TRL is a benchmark-only import.

"Plain forward+backward" is the floor for the unshared layout: `model(labels=...).loss.backward()` over the
same tokens (each pair as two rows, prompt+chosen and prompt+rejected), the same batches, optimizer and
clipping. This trainer may beat it: it encodes each prompt once (dpo_train/prefix.py) and runs the LM head
on answer positions only, which the plain causal-LM loss does not.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from dpo_train.batching import collate, epoch_order, tokenize_pairs
from dpo_train.losses import Batch, LossParams, compute_loss
from dpo_train.prefix import collate_shared, shared_forward
from dpo_train.tiny import default_corpus, make_tiny_model
from dpo_train.trainer import TrainConfig, train
from storage.schema import build_pair_table
from storage.workspace import Workspace

BATCH, MAX_LEN, LR, BETA = 8, 192, 1e-4, 0.1


def make_pairs(tok, n: int, seed: int = 0):
    """Spans of real hh-rlhf text cut to target token counts (prompt ~32, answers 64-96)."""
    rng = random.Random(seed)
    ids = tok(" ".join(default_corpus(2000)), add_special_tokens=False)["input_ids"]
    specials = set(tok.all_special_ids)
    ids = [i for i in ids if i not in specials]

    def span(k: int) -> str:
        start = rng.randrange(0, len(ids) - k)
        return tok.decode(ids[start:start + k]).strip()

    rows = [(span(rng.randint(24, 30)), span(rng.randint(60, 90)), span(rng.randint(60, 90))) for _ in range(n)]
    return build_pair_table({"prompt": [[{"role": "user", "content": p}] for p, _, _ in rows],
                             "chosen": [c for _, c, _ in rows], "rejected": [r for _, _, r in rows],
                             "source": ["bench"] * n, "source_row": list(range(n))})


class _Clock:
    """Per-step timestamps; the training phase is timed from the end of step 1 (no warm-up effects)."""

    def __init__(self) -> None:
        self.t: list[float] = []

    def tick(self, *_a, **_k) -> None:
        self.t.append(time.perf_counter())

    def pairs_per_s(self) -> float:
        return (len(self.t) - 1) * BATCH / (self.t[-1] - self.t[0])


def run_ours(model_dir: Path, table, root: Path) -> dict:
    """End to end twice in one workspace: with the reference pass, then reusing the cached reference."""
    ws = Workspace(root)
    snap = ws.publish("bench", table)
    cfg = TrainConfig(snapshot=snap.snapshot_id, model=str(model_dir), lr=LR, beta=BETA, per_device_batch_size=BATCH,
                      max_length=MAX_LEN, max_prompt_length=96, epochs=1, save_steps=0, report=False,
                      warmup_steps=0, max_grad_norm=1.0, device="cpu", run_id="ours")
    clock = _Clock()
    t0 = time.perf_counter()
    res = train(cfg, ws, on_step=clock.tick)
    e2e = time.perf_counter() - t0
    clock2 = _Clock()
    t1 = time.perf_counter()
    again = train(cfg.replace(run_id="ours-again"), ws, on_step=clock2.tick)
    e2e_cached = time.perf_counter() - t1
    assert not again.reference_computed
    return {"e2e": e2e, "train_pps": clock.pairs_per_s(), "e2e_cached": e2e_cached, "steps": res.steps,
            "train_pps_cached": clock2.pairs_per_s()}


def _trl_dataset(tok, table):
    from datasets import Dataset

    from dpo_train.batching import render_prompts

    prompts, _ = render_prompts(tok, table.column("prompt").to_pylist())
    return Dataset.from_dict({"prompt": prompts, "chosen": table.column("chosen").to_pylist(),
                              "rejected": table.column("rejected").to_pylist()})


def _trl_trainer(model_dir: Path, tok, table, out: Path, *, precompute: bool, ref_dir: Path | None = None,
                 callbacks=(), **speed):
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    # TRL's configs default to bf16=True, and accelerate then wraps the *reference* model's forward in a CPU bf16
    # autocast (prepare_model), which alone moved the first-batch rewards by ~3e-3. The benchmark is fp32, so bf16
    # is off. Gradient checkpointing (another TRL default) is off too: it re-runs the forward to save memory we
    # do not need here, and leaving it on would make TRL look slower than it has to be.
    args = DPOConfig(output_dir=str(out), per_device_train_batch_size=BATCH, max_length=MAX_LEN, beta=BETA,
                     learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0, num_train_epochs=1,
                     max_grad_norm=1.0, logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True,
                     precompute_ref_log_probs=precompute, dataloader_num_workers=0, seed=0, disable_tqdm=True,
                     bf16=False, gradient_checkpointing=False, loss_type=["sigmoid"], label_smoothing=0.0,
                     disable_dropout=True, **speed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32) if ref_dir else None
    from transformers.trainer_callback import PrinterCallback

    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=_trl_dataset(tok, table),
                         processing_class=tok, callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # disable_tqdm swaps the bar for a printer of log dicts
    return trainer


def run_trl(model_dir: Path, tok, table, out: Path, *, precompute: bool, **speed) -> dict:
    from transformers import TrainerCallback

    clock = _Clock()

    class Tick(TrainerCallback):
        def on_step_end(self, *a, **k):
            clock.tick()

    t0 = time.perf_counter()
    trainer = _trl_trainer(model_dir, tok, table, out, precompute=precompute, callbacks=[Tick()], **speed)
    trainer.train()
    return {"e2e": time.perf_counter() - t0, "train_pps": clock.pairs_per_s()}


def run_plain(model_dir: Path, tok, table) -> dict:
    """The floor: model(labels=...).loss.backward() over exactly our batches (both answers of each pair)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)  # as this trainer and TRL (adamw_torch_fused)
    data = tokenize_pairs(table, tok, max_length=MAX_LEN, max_prompt_length=96)
    clock = _Clock()
    for idx in epoch_order(data.lengths(), BATCH, seed=0, epoch=0):
        b = collate(data, idx, tok.pad_token_id)
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        clock.tick()
    return {"train_pps": clock.pairs_per_s()}


def first_batch_check(model_dir: Path, ref_dir: Path, tok, table, out: Path) -> dict:
    """Loss and rewards on the same 8 pairs, with a reference different from the policy so they are not trivial."""
    from transformers import AutoModelForCausalLM

    sub = table.slice(0, BATCH)
    trainer = _trl_trainer(model_dir, tok, sub, out, precompute=False, ref_dir=ref_dir)
    trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(BATCH)])
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))
    m = trainer._metrics["eval"]
    trl_c, trl_r = m["rewards/chosen"][-1], m["rewards/rejected"][-1]

    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32).eval()
    data = tokenize_pairs(sub, tok, max_length=MAX_LEN, max_prompt_length=96)
    b = collate_shared(data, np.arange(BATCH), tok.pad_token_id)  # the layout the trainer trains with
    with torch.no_grad():
        p, r = shared_forward(policy, b), shared_forward(ref, b)
        losses, cr, rr = compute_loss("sigmoid", Batch(p["chosen_logps"], p["rejected_logps"], r["chosen_logps"],
                                                       r["rejected_logps"]), LossParams(beta=BETA))
    return {"ours": (float(losses.mean()), float(cr.mean()), float(rr.mean())), "trl": (trl_loss, trl_c, trl_r)}


# Length grouping is not in it: TRL 1.16's DPO rows have no `input_ids`, and transformers' LengthGroupedSampler
# then refuses to run ("Can only automatically infer lengths ..."), with or without a `length` column.
TRL_FAST = {"padding_free": True}
RUNS = ("ours", "trl_default", "trl_precomputed", "trl_fast", "plain")


def _stat(values: list[float]) -> str:
    """median (min-max) of the repeats."""
    v = [x for x in values if x == x]
    if not v:
        return ""
    return f"{np.median(v):.2f} ({min(v):.2f}-{max(v):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS),
                    help="which setups to run (e.g. `ours trl_default` for the end-to-end ratio alone)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")  # TRL's reference-pass bar ignores disable_tqdm
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    kw = dict(vocab_size=8192, n_layers=4, hidden=256, heads=4, max_positions=512)
    model_dir = make_tiny_model(work / "policy", seed=0, **kw)
    ref_dir = make_tiny_model(work / "ref", seed=1, **kw)
    tok = AutoTokenizer.from_pretrained(model_dir)
    table = make_pairs(tok, args.pairs)
    data = tokenize_pairs(table, tok, max_length=MAX_LEN, max_prompt_length=96)
    pl = np.mean([len(p) for p in data.prompt])
    al = np.mean([len(c) for c in data.chosen] + [len(r) for r in data.rejected])
    load_before = os.getloadavg()

    check = first_batch_check(model_dir, ref_dir, tok, table, work / "trl-check")
    found: dict[str, list[dict]] = {k: [] for k in RUNS}
    notes = []
    setups = {
        "ours": lambda r: run_ours(model_dir, table, work / f"ws{r}"),
        "trl_default": lambda r: run_trl(model_dir, tok, table, work / f"trl-default{r}", precompute=False),
        "trl_precomputed": lambda r: run_trl(model_dir, tok, table, work / f"trl-pre{r}", precompute=True),
        "trl_fast": lambda r: run_trl(model_dir, tok, table, work / f"trl-fast{r}", precompute=True, **TRL_FAST),
        "plain": lambda r: run_plain(model_dir, tok, table),
    }
    chosen = [k for k in RUNS if k in args.runs]
    for r in range(args.repeats):
        # The order rotates every repeat: no setup always runs first in a cold process or last on a warm one.
        for run in chosen[r % len(chosen):] + chosen[:r % len(chosen)]:
            try:
                found[run].append(setups[run](r))
            except Exception as exc:  # noqa: BLE001 - an option this TRL or attention kernel refuses: say so
                if run != "trl_fast":
                    raise
                note = f"TRL fast options {TRL_FAST} failed: {type(exc).__name__}: {str(exc)[:160]}"
                if note not in notes:
                    notes.append(note)
                continue
            print(f"repeat {r} {run}: " + ", ".join(f"{k} {v:.2f}" for k, v in found[run][-1].items()
                                                   if isinstance(v, float)), flush=True)
    load_after = os.getloadavg()

    def col(run: str, key: str) -> list[float]:
        return [x.get(key, float("nan")) for x in found[run]]

    def med(run: str, key: str) -> float:
        v = [x for x in col(run, key) if x == x]
        return float(np.median(v)) if v else float("nan")

    print(f"\n{args.pairs} pairs (prompt {pl:.0f} tok, answers {al:.0f} tok; {2 * pl + 2 * al:.0f} tok/pair as two "
          f"rows, {pl + 2 * al:.0f} with the prompt shared), batch {BATCH}, max_length {MAX_LEN}, "
          f"fp32, {args.threads} thread(s), torch {torch.__version__}, {args.repeats} repeat(s); "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (a shared machine: figures are "
          f"ratios measured side by side)")
    diffs = [abs(a - b) for a, b in zip(check["ours"], check["trl"], strict=True)]
    print("\nfirst batch (sigmoid DPO, reference != policy)   loss        reward_c    reward_r")
    print(f"  this trainer                                 {check['ours'][0]:.7f}  {check['ours'][1]:+.7f}  "
          f"{check['ours'][2]:+.7f}")
    print(f"  TRL DPOTrainer                               {check['trl'][0]:.7f}  {check['trl'][1]:+.7f}  "
          f"{check['trl'][2]:+.7f}")
    print(f"  max |diff| = {max(diffs):.2e}  ({'PASS' if max(diffs) <= 1e-5 else 'FAIL'} at 1e-5)")
    print("\n| run (median (min-max) of repeats) | end-to-end s | train pairs/s |")
    print("| --- | ---: | ---: |")
    print(f"| this trainer (reference pass + train) | {_stat(col('ours', 'e2e'))} | {_stat(col('ours', 'train_pps'))} |")
    print(f"| this trainer, 2nd run (cached reference) | {_stat(col('ours', 'e2e_cached'))} | "
          f"{_stat(col('ours', 'train_pps_cached'))} |")
    for run, label in (("trl_default", "TRL DPOTrainer default"),
                       ("trl_precomputed", "TRL precompute_ref_log_probs"),
                       ("trl_fast", "TRL precompute + padding_free")):
        print(f"| {label} | {_stat(col(run, 'e2e'))} | {_stat(col(run, 'train_pps'))} |")
    print(f"| plain forward+backward (same tokens) | | {_stat(col('plain', 'train_pps'))} |")
    best = max(("trl_precomputed", "trl_fast"), key=lambda k: med(k, "train_pps") if found[k] else 0.0)
    paired = [t["e2e"] / o["e2e"] for o, t in zip(found["ours"], found["trl_default"], strict=False)]
    if paired:
        print(f"\nend-to-end TRL default / ours per repeat: {', '.join(f'{x:.2f}x' for x in paired)}")
    rows = [("end-to-end: TRL default / ours", med("trl_default", "e2e") / med("ours", "e2e"), 2.0, True),
            (f"train pairs/s: ours / TRL best ({best})", med("ours", "train_pps") / med(best, "train_pps"), 1.5, True),
            ("train pairs/s: plain fwd+bwd / ours", med("plain", "train_pps") / med("ours", "train_pps"), 1.1, False)]
    print("\n| ratio (of medians) | value | target | met |")
    print("| --- | ---: | --- | --- |")
    for name, value, target, at_least in rows:
        if value != value:  # a setup of the ratio was not run (--runs)
            print(f"| {name} | - | {'>=' if at_least else '<='} {target}x | not run |")
            continue
        met = value >= target if at_least else value <= target
        print(f"| {name} | {value:.2f}x | {'>=' if at_least else '<='} {target}x | {'yes' if met else 'MISS'} |")
    for note in notes:
        print(f"\nnote: {note}")


if __name__ == "__main__":
    main()
