"""Command line: `python -m dpo_train.generation --model DIR --prompts FILE --out FILE.parquet [...]`.

Prompts come from a Parquet file with a `prompt` column of chat messages (e.g. a snapshot's pairs file) or
from JSON lines whose `prompt` is a message list or a plain string (one user turn).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dpo_train.generation.api import BACKENDS, generate
from dpo_train.generation.config import GenerationConfig
from dpo_train.generation.core import shard


def read_prompts(path: Path) -> list[list[dict]]:
    if path.suffix == ".parquet":
        return pq.read_table(path, columns=["prompt"]).column("prompt").to_pylist()
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                p = json.loads(line)["prompt"]
                out.append([{"role": "user", "content": p}] if isinstance(p, str) else p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dpo_train.generation", description=__doc__)
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--num-shards", type=int, default=1)
    ap.add_argument("--shard-index", type=int, default=0)
    defaults = GenerationConfig()
    for f in dataclasses.fields(GenerationConfig):
        if f.name == "extra":
            continue
        if f.name == "stop":
            ap.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            ap.add_argument(flag, action="store_true", default=getattr(defaults, f.name))
        else:
            conv = {"int": int, "float": float}.get(str(f.type), str)
            ap.add_argument(flag, type=conv, default=getattr(defaults, f.name),
                            choices=sorted(BACKENDS) if f.name == "backend" else None)
    args = vars(ap.parse_args(argv))
    prompts = shard(read_prompts(args.pop("prompts")), args.pop("num_shards"), args.pop("shard_index"))
    out: Path = args.pop("out")
    cfg = GenerationConfig.from_dict(args)
    table: pa.Table = generate(prompts, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    print(f"wrote {table.num_rows} answers for {len(prompts)} prompts to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
