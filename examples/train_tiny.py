"""Build the tiny local model, publish a small snapshot from the shared hh-rlhf data and train it briefly.

    .venv/bin/python examples/train_tiny.py [--workspace DIR] [--pairs 64] [--steps 8]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging

from dpo_train.tiny import make_tiny_model, shared_data_dir
from dpo_train.trainer import TrainConfig, train
from storage.schema import build_pair_table
from storage.workspace import Workspace


def hh_pairs(n: int):
    """First n single-turn-ish pairs of hh-rlhf: prompt = text before the last 'Assistant:' turn."""
    rows = []
    with gzip.open(shared_data_dir() / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt") as fh:
        for line in fh:
            r = json.loads(line)
            cut = r["chosen"].rfind("\n\nAssistant:")
            prompt, chosen = r["chosen"][:cut].strip(), r["chosen"][cut + 12:].strip()
            rejected = r["rejected"][r["rejected"].rfind("\n\nAssistant:") + 12:].strip()
            if chosen and rejected and chosen != rejected:
                rows.append((prompt, chosen, rejected))
            if len(rows) == n:
                break
    return build_pair_table({"prompt": [[{"role": "user", "content": p}] for p, _, _ in rows],
                             "chosen": [c for _, c, _ in rows], "rejected": [r for _, _, r in rows],
                             "source": ["hh-rlhf/harmless-base-test"] * len(rows),
                             "source_row": list(range(len(rows)))})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", default="./dpo-workspace")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO)
    ws = Workspace(args.workspace)
    model = make_tiny_model(ws.path("models", "tiny"))
    snap = ws.publish("hh-tiny", hh_pairs(args.pairs), params={"example": "train_tiny"})
    cfg = TrainConfig(snapshot=snap.snapshot_id, model=str(model), lr=5e-4, per_device_batch_size=8,
                      max_length=256, max_prompt_length=128, max_steps=args.steps, save_steps=4)
    res = train(cfg, ws)
    print(f"run {res.run_id}: {res.steps} steps on {res.snapshot_id}, losses {[round(v, 4) for v in res.losses.values()]}")
    print(f"checkpoint {res.checkpoint}\nreport {res.report}")
    print(ws.sql(f"SELECT name, round(avg(value), 4) AS mean FROM metrics WHERE run_id = '{res.run_id}' "  # noqa: S608
                 "GROUP BY name ORDER BY name"))


if __name__ == "__main__":
    main()
