"""The whole gate on real-shaped data at growing size: rows/s, peak RSS, per-check time, time-vs-rows exponent.

    .venv/bin/python benchmarks/bench_scale.py                     # 1, 2, 5, 10 copies (54k .. 544k rows)
    .venv/bin/python benchmarks/bench_scale.py --copies 2 5 20 37  # up to ~2M rows (long; run it once)
    .venv/bin/python benchmarks/bench_scale.py --executor out_of_core --copies 2 5 20 37  # the executor forced

The data: all AlpacaEval annotation files in ../shared/data (~54k pairs, ~70 per prompt, one reference answer
shared by most), then copies of them in which one answer of every row has one word inserted (a distinct pair,
a near-duplicate of its original): the shape of a mixture of many sources. Each size is written to Parquet
copy by copy (the generator never holds more than one copy) and gated by `dpo clean`'s engine
(`data_quality.gate.run_gate` on the Parquet file, executor `auto`, memory budget --budget-mb) in a child
process pinned to one CPU with Polars on one thread. Peak memory is the child's VmHWM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DPO_SHARED_DATA", ROOT.parent / "shared" / "data"))
ONE_CORE_ENV = {"POLARS_MAX_THREADS": "1", "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(inp: str, out: str, budget_mb: int, executor: str) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from data_quality.gate import GateConfig, run_gate

    cfg = GateConfig.from_dict({"engine": {"executor": executor, "memory_budget_mb": budget_mb,
                                           "spill_dir": str(Path(out).parent)}})
    w0, c0 = time.perf_counter(), time.process_time()
    res = run_gate(Path(inp), cfg)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    checks = {k: v.get("cpu_seconds", v.get("seconds")) for k, v in res.stats["checks"].items()}
    Path(out).write_text(json.dumps({"cpu": cpu, "wall": wall, "peak_mb": vm_hwm_mb(), "rows": res.input_rows,
                                     "kept": res.stats["kept"], "executor": res.stats["executor"],
                                     "checks": checks}))


def build(path: Path, copies: int, base_cache: Path) -> int:
    """Write `copies` copies of the AlpacaEval pairs (copy 0 = the originals) to `path`; returns rows."""
    import pyarrow.parquet as pq

    from data_quality.scale import edited_copy

    if not base_cache.exists():
        from data_quality.ingest import ingest_files

        pq.write_table(ingest_files(sorted((DATA / "alpaca_eval" / "annotations").glob("*.json.gz"))).pairs,
                       base_cache)
    base = pq.read_table(base_cache)
    writer = None
    rows = 0
    for c in range(copies):
        part = base if c == 0 else edited_copy(base, c).select(base.column_names).cast(base.schema)
        writer = writer or pq.ParquetWriter(path, base.schema)
        writer.write_table(part, row_group_size=20_000)
        rows += part.num_rows
    if writer is not None:
        writer.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 2, 5, 10])
    ap.add_argument("--budget-mb", type=int, default=3000)
    ap.add_argument("--executor", default="auto", choices=["auto", "memory", "out_of_core"])
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.child[3])
        return
    env = {**os.environ, **ONE_CORE_ENV, "PYTHONPATH": str(ROOT)}
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        base_cache = Path(tmp) / "base.parquet"
        for copies in args.copies:
            inp, out = Path(tmp) / f"pairs{copies}.parquet", Path(tmp) / f"out{copies}.json"
            t0 = time.perf_counter()
            rows = build(inp, copies, base_cache)
            print(f"built {rows:,} rows ({copies} copies) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            subprocess.run([sys.executable, __file__, "--child", str(inp), str(out), str(args.budget_mb),
                            args.executor], check=True, env=env, cwd=ROOT)
            results.append(json.loads(out.read_text()))
            r = results[-1]  # each point as it comes: the big ones take long, and a later failure keeps them
            print(f"{r['rows']:,} rows: CPU {r['cpu']:.0f} s, wall {r['wall']:.0f} s, peak {r['peak_mb']:,.0f} MB, "
                  f"kept {r['kept']:,}", file=sys.stderr)
            inp.unlink()
    names = list(dict.fromkeys(k for r in results for k in r["checks"]))
    top = sorted(names, key=lambda k: -max(r["checks"].get(k) or 0 for r in results))[:5]
    head = ["rows", "executor", "CPU s", "wall s", "rows/s (CPU)", "peak RSS MB", "kept"] + [f"{k} s" for k in top]
    lines = [[f"{r['rows']:,}", r["executor"], f"{r['cpu']:.0f}", f"{r['wall']:.0f}", f"{r['rows'] / r['cpu']:,.0f}",
              f"{r['peak_mb']:,.0f}", f"{r['kept']:,}"] + [f"{r['checks'].get(k) or 0:.1f}" for k in top]
             for r in results]
    w = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    print(" | ".join(h.ljust(w[i]) for i, h in enumerate(head)))
    print("-|-".join("-" * x for x in w))
    for x in lines:
        print(" | ".join(v.ljust(w[i]) for i, v in enumerate(x)))
    big = [r for r in results if r["rows"] >= 100_000]
    if len(big) >= 2:
        xs = [math.log(r["rows"]) for r in big]
        ys = [math.log(r["cpu"]) for r in big]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
        print(f"\ntime ~ rows^{slope:.2f} (least squares on CPU time, {big[0]['rows']:,}..{big[-1]['rows']:,} rows; "
              "target <= 1.15); the whole gate at 2M rows: target <= 3,000 MB peak")


if __name__ == "__main__":
    main()
