"""Ingest throughput: 200k synthetic pairs per format, read from JSONL in a temp dir, on one core; also
AlpacaEval's own shape (a gzip'd JSON array, streamed element by element) and a CSV of TRL standard rows
(streamed in Arrow batches).

    .venv/bin/python benchmarks/bench_ingest.py [--rows 200000] [--gzip]

Prints rows, seconds and rows/s per format (wall clock of `ingest_files`, file generation excluded).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

WORDS = ("the model answer prompt data quality pair chosen rejected token policy reference margin judge "
         "score length bias sample weight round snapshot catalog").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def trl_standard_row(rng: random.Random, i: int) -> dict:
    return {"prompt": f"{i}: {_text(rng, 20)}", "chosen": _text(rng, 60), "rejected": _text(rng, 50)}


def hh_row(rng: random.Random, i: int) -> dict:
    turns = "".join(f"\n\nHuman: {_text(rng, 15)}\n\nAssistant: {_text(rng, 25)}" for _ in range(rng.randint(0, 2)))
    head = f"{turns}\n\nHuman: {i} {_text(rng, 15)}\n\nAssistant:"
    return {"chosen": f"{head} {_text(rng, 60)}", "rejected": f"{head} {_text(rng, 50)}"}


def alpaca_row(rng: random.Random, i: int) -> dict:
    return {"instruction": f"{i}: {_text(rng, 20)}", "output_1": _text(rng, 60), "generator_1": "a",
            "output_2": _text(rng, 50), "generator_2": "b", "annotator": "j",
            "preference": str(1 + rng.random())}


ROWS: dict[str, Callable[[random.Random, int], dict]] = {
    "trl_standard": trl_standard_row,
    "hh": hh_row,
    "alpaca_eval": alpaca_row,
}


def _csv(jsonl: str) -> bytes:
    rows = [json.loads(line) for line in jsonl.splitlines()]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--gzip", action="store_true", help="also time the .jsonl.gz variant")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # the claim is "on one core"

    from data_quality.ingest import ingest_files

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        # Warm-up: first-call imports (pyarrow compute, pandas via pyarrow) are not ingest throughput.
        warm = Path(tmp) / "warm.jsonl"
        warm.write_text(json.dumps(trl_standard_row(random.Random(0), 0)) + "\n")
        ingest_files([warm])
        for fmt, make in ROWS.items():
            rng = random.Random(0)
            text = "".join(json.dumps(make(rng, i)) + "\n" for i in range(args.rows))
            variants = [("jsonl", text.encode())]
            if args.gzip:
                variants.append(("jsonl.gz", gzip.compress(text.encode(), compresslevel=1)))
            if fmt == "alpaca_eval":  # the annotation files are JSON arrays, one element per line
                array = "[\n" + ",\n".join(text.splitlines()) + "\n]"
                variants.append(("json.gz", gzip.compress(array.encode(), compresslevel=1)))
            if fmt == "trl_standard":
                variants.append(("csv", _csv(text)))
            for ext, blob in variants:
                path = Path(tmp) / f"{fmt}.{ext}"
                path.write_bytes(blob)
                t0 = time.perf_counter()
                res = ingest_files([path], format=None)
                dt = time.perf_counter() - t0
                assert res.formats[str(path.absolute())] == fmt and res.pairs.num_rows == args.rows, res.counts
                results.append((f"{fmt} ({ext})", args.rows, len(blob) / 1e6, dt))

    print(f"{'format':28} {'rows':>9} {'MB':>8} {'seconds':>9} {'rows/s':>10}")
    for name, n, mb, dt in results:
        print(f"{name:28} {n:>9} {mb:>8.1f} {dt:>9.2f} {n / dt:>10,.0f}")


if __name__ == "__main__":
    main()
