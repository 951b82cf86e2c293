"""Quality-gate benchmark: planted-defect precision/recall, throughput, near-dup vs datasketch, memory, real data.

    .venv/bin/python benchmarks/bench_gate.py                 # 200k synthetic rows + real data
    .venv/bin/python benchmarks/bench_gate.py --rows 2000000 --executor out_of_core   # memory at 2M out of core
    .venv/bin/python benchmarks/bench_gate.py --no-real --against c1ebc20 --runs 3    # side by side with older code
    .venv/bin/python benchmarks/bench_gate.py --against 9df6a64 --runs 3    # ... and on all the shared data too

`--against REV` gates the same input with this tree and with git revision REV (checked out in a temporary
worktree), alternating, `--runs` times each, and prints median (min-max) CPU, rows/s and peak RSS of both: a
regression check that does not depend on how busy the machine was when an older figure was taken.

Near-dup speed against datasketch is measured like for like on real rows by benchmarks/bench_near_dup.py; the
real-data scale series (rows/s, peak RSS, exponent) is benchmarks/bench_scale.py.

Throughput and memory are measured in a child process pinned to one CPU with Polars on one thread, reading
the input from Parquet, so the figures are the gate's own (not the generator's). Rates use CPU time, which
is what "one core" means on a shared machine; wall time is printed beside it.
"""

from __future__ import annotations

import argparse
import json
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


def child_gate(inp: str, out: str, executor: str) -> None:
    """Run in a fresh process: gate the Parquet file `inp`, write results to `out`, print timings as JSON."""
    import resource

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import pyarrow.parquet as pq

    from data_quality.gate import GateConfig, run_gate

    prompts = json.loads(Path(inp + ".eval.json").read_text())
    cfg = GateConfig.from_dict({"engine": {"executor": executor}})
    w0, c0 = time.perf_counter(), time.process_time()
    res = run_gate(Path(inp), cfg, eval_prompts=prompts)
    stats = res.stats
    pq.write_table(res.rejects.select(["source_row", "rule", "reason"]), out + ".rejects.parquet")
    pq.write_table(res.kept.select(["source_row", "weight"]), out + ".kept.parquet")
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    peak = _vm_hwm_mb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out + ".json").write_text(json.dumps({"cpu": cpu, "wall": wall, "peak_mb": peak, "stats": stats},
                                              default=str))


def _vm_hwm_mb() -> float | None:
    """Peak RSS of this process image. ru_maxrss is not used where avoidable: after fork+exec it can carry
    the parent's high-water mark (here the generator's), which would overstate the gate's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


_TREE_CHILD = """
import json, os, resource, sys, time
from pathlib import Path
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
import pyarrow.parquet as pq
from data_quality.gate import GateConfig, run_gate
inp = sys.argv[1]
prompts = json.loads(Path(inp + ".eval.json").read_text())
table = pq.read_table(inp)
r0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
res = run_gate(table, GateConfig(), eval_prompts=prompts)
r1, cpu = resource.getrusage(resource.RUSAGE_SELF), time.process_time() - c0
user, faults = r1.ru_utime - r0.ru_utime, r1.ru_minflt - r0.ru_minflt
peak = [int(x.split()[1]) / 1024 for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM")]
print(json.dumps({"cpu": cpu, "user": user, "faults": faults, "peak_mb": peak[0], "kept": res.kept.num_rows}))
"""


def against(rev: str, inp: Path, runs: int, label: str = "whole gate") -> list[tuple]:
    """This tree and `rev` on the same input (the in-memory gate, default settings), alternating."""
    import statistics

    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(other), rev], cwd=ROOT, check=True)
        try:
            got: dict[str, list[dict]] = {"this tree": [], rev: []}
            for _ in range(runs):
                for name, tree in (("this tree", ROOT), (rev, other)):
                    env = {**os.environ, **ONE_CORE_ENV, "PYTHONPATH": str(tree)}
                    out = subprocess.run([sys.executable, "-c", _TREE_CHILD, str(inp)], env=env, cwd=tree,
                                         check=True, capture_output=True, text=True)
                    got[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, check=False)
    rows, n = [], pq_rows(inp)
    for name, rs in got.items():
        cpu = sorted(r["cpu"] for r in rs)
        peak = sorted(r["peak_mb"] for r in rs)
        rows.append((f"{label}, {name}", f"{n / statistics.median(cpu):,.0f} rows/s",
                     f"CPU {statistics.median(cpu):.1f} s ({cpu[0]:.1f}-{cpu[-1]:.1f}); peak "
                     f"{statistics.median(peak):,.0f} MB ({peak[0]:,.0f}-{peak[-1]:,.0f}); kept {rs[0]['kept']}"))
    ratio = statistics.median(r["cpu"] for r in got[rev]) / statistics.median(r["cpu"] for r in got["this tree"])
    rows.append((f"{label}: rows/s, this tree / {rev}", f"{ratio:.2f}x", f"{runs} alternating runs each, same input"))
    # CPU above is user + system. On a VM most system time is the host zeroing fresh pages, which swings from run
    # to run; user time alone is the steadier comparison of the code, so it is printed beside it.
    user = {name: statistics.median(r["user"] for r in rs) for name, rs in got.items()}
    rows.append((f"{label}: user CPU only, this tree / {rev}", f"{user[rev] / user['this tree']:.2f}x",
                 f"user CPU {user['this tree']:.1f} s vs {user[rev]:.1f} s (medians)"))
    # Page faults count the fresh memory each side touches (what that system time is spent on); unlike time,
    # they hardly move between runs.
    faults = {name: statistics.median(r["faults"] for r in rs) for name, rs in got.items()}
    rows.append((f"{label}: minor page faults, this tree / {rev}", f"{faults['this tree'] / faults[rev]:.2f}x",
                 f"{faults['this tree']:,.0f} vs {faults[rev]:,.0f} (medians; lower: less fresh memory touched)"))
    return rows


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def run_child(inp: Path, out: Path, executor: str) -> dict:
    env = {**os.environ, **ONE_CORE_ENV, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--child", str(inp), str(out), "--executor", executor]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return json.loads(Path(str(out) + ".json").read_text())


def pr(pred: set, true: set) -> tuple[float, float]:
    tp = len(pred & true)
    return (tp / len(pred) if pred else 1.0), (tp / len(true) if true else 1.0)


def planted_scores(data, rejects, kept) -> list[tuple[str, str, str, str]]:
    import numpy as np

    src = np.asarray(data.table.column("source_row"))
    rule = dict(zip(rejects.column("source_row").to_pylist(), rejects.column("rule").to_pylist(), strict=True))
    by_rule: dict[str, set] = {}
    for r, ru in rule.items():
        by_rule.setdefault(ru, set()).add(r)
    rows = []
    simple = {"degenerate": "empty", "near_identical": "near_copy", "margins": "low_margin",
              "decontam": "contaminated", "contradictions": "contradiction"}
    for ru, defect in simple.items():
        p, r = pr(by_rule.get(ru, set()), set(src[data.defect == defect].tolist()))
        rows.append((ru, defect, f"{p:.3f}", f"{r:.3f}"))
    # Exact duplicates: keep-first may drop the original, so a planted copy is found if either row goes, and a
    # dedup drop is correct if it is a planted copy or the original of one.
    dup = np.flatnonzero(data.defect == "exact_dup")
    base = data.base_row[dup]
    dd = by_rule.get("dedup", set())
    found = np.mean([src[i] in dd or src[b] in dd for i, b in zip(dup, base, strict=True)]) if dup.size else 1.0
    ok = set(src[dup].tolist()) | set(src[base].tolist())
    prec = len(dd & ok) / len(dd) if dd else 1.0
    rows.append(("dedup", "exact_dup", f"{prec:.3f}", f"{found:.3f}"))
    return rows


def near_dup_section(data, threshold: float) -> list[tuple]:
    import numpy as np

    from data_quality.checks import near_dup
    from data_quality.checks.text import jaccard
    from data_quality.scale import tagged_sets

    # The synthetic planted copies edit words anywhere in the pair, so the answer rule is off here.
    cfg = near_dup.NearDupConfig(threshold=threshold, min_answer_jaccard=0.0)
    c0 = time.process_time()
    rep, st = near_dup.find_duplicates(near_dup.TableTexts(data.table), cfg)
    full_cpu = time.process_time() - c0
    sets = tagged_sets(data.table, cfg.fields, cfg.ngram)
    truth = [(b, i) for i, b in enumerate(data.base_row) if b >= 0 and data.defect[i] == "near_dup" and b < i
             and rep[b] < 0 and jaccard(sets[b], sets[i]) >= threshold]
    recall = float(np.mean([rep[i] >= 0 for _, i in truth])) if truth else 1.0
    drops = np.flatnonzero(rep >= 0)[:20_000]
    prec = float(np.mean([jaccard(sets[rep[d]], sets[d]) >= threshold for d in drops])) if drops.size else 1.0
    n = data.table.num_rows
    return [
        (f"near_dup recall (J >= {threshold:.2f})", f"{recall:.4f}", f"{len(truth)} planted copies, target >= 0.95"),
        ("near_dup precision (exact J to the kept row)", f"{prec:.4f}", f"{drops.size} drops, target >= 0.99"),
        ("near_dup bands x rows", f"{st['bands']} x {st['rows_per_band']}", f"candidates {st['candidates']}"),
        (f"near_dup CPU, {n} rows", f"{full_cpu:.2f} s", f"{n / full_cpu:,.0f} rows/s"),
    ]


def real_section() -> list[tuple]:
    from data_quality.gate import GateConfig, run_gate
    from data_quality.ingest import ingest_files

    rows = []
    ann = DATA / "alpaca_eval" / "annotations"
    for tag in ("concise", "verbose"):
        path = ann / f"alpaca-7b_{tag}__weighted_alpaca_eval_gpt4_turbo.json.gz"
        res = ingest_files([path])
        g = run_gate(res.pairs, GateConfig())
        lb = g.stats["checks"]["length_bias"]
        lc = lb["length_controlled"]
        model = {m["model"]: m for m in lc["models"]}.get(f"alpaca-7b_{tag}", {})
        rows.append((f"AlpacaEval alpaca-7b_{tag}", f"{lb['frac_chosen_longer']:.3f} -> "
                     f"{lb['weighted_frac_chosen_longer']:.3f}",
                     f"length coef {lc['length_coef']:.2f} -> weighted {lc['length_coef_weighted']:.2f}; "
                     f"{tag} win rate {model.get('win_rate', float('nan')):.3f}, LC {model.get('lc_win_rate', float('nan')):.3f}"
                     f", {tag} answer longer in {model.get('frac_longer', float('nan')):.2f} of pairs"))
    hh = DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    res = ingest_files([hh])
    g = run_gate(res.pairs, GateConfig())
    drops = ", ".join(f"{k}={v}" for k, v in sorted(g.stats["drops_by_reason"].items()))
    rows.append(("HH-RLHF harmless-base-test", f"{g.stats['input_rows']} -> {g.stats['kept']}", drops))
    return rows


def write_real(path: Path) -> None:
    """Every pair of ../shared/data (70 AlpacaEval annotation files and HH-RLHF) to Parquet, with 250 of its
    prompts (200 AlpacaEval instructions, 50 others) as the eval set, so decontam has work on real text."""
    import pyarrow.parquet as pq

    from data_quality.ingest import ingest_files

    files = sorted((DATA / "alpaca_eval" / "annotations").glob("*.json.gz")) + sorted((DATA / "hh-rlhf").glob("*.jsonl.gz"))
    pairs = ingest_files(files).pairs
    pq.write_table(pairs, path)
    texts, sources = pairs.column("prompt_text").to_pylist(), pairs.column("source").to_pylist()
    alpaca = sorted({p for p, s in zip(texts, sources, strict=True) if "alpaca" in s.lower()})
    Path(str(path) + ".eval.json").write_text(json.dumps(alpaca[::4][:200] + sorted(set(texts))[-50:]))


def write_synthetic(path: Path, rows: int, seed: int, batch: int = 200_000):
    """Write `rows` synthetic pairs to Parquet in batches; returns the in-memory data when it is one batch."""
    import pyarrow.parquet as pq

    from data_quality.synthetic import make_synthetic

    prompts: list[str] = []
    data = None
    writer = None
    for k, lo in enumerate(range(0, rows, batch)):
        d = make_synthetic(min(batch, rows - lo), seed=seed + k, truth=rows <= batch, source_offset=3 * k)
        t = d.table.set_column(d.table.schema.get_field_index("source_row"), "source_row",
                               d.table.column("source_row").combine_chunks().cast("int64"))
        if writer is None:
            writer = pq.ParquetWriter(path, t.schema)
        writer.write_table(t, row_group_size=50_000)
        prompts += d.eval_prompts
        data = d if rows <= batch else None
    writer.close()
    Path(str(path) + ".eval.json").write_text(json.dumps(prompts))
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--executor", default="memory", choices=["auto", "memory", "out_of_core"],
                    help="the gate engine's executor")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--against", metavar="REV", help="also gate the input with this git revision, side by side")
    ap.add_argument("--runs", type=int, default=3, help="alternating runs per side with --against")
    ap.add_argument("--child", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_gate(args.child[0], args.child[1], args.executor)
        return
    os.environ.update(ONE_CORE_ENV)  # before Polars is imported, so in-process timings are one-thread too
    import pyarrow.parquet as pq

    table: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "pairs.parquet", Path(tmp) / "out"
        t0 = time.perf_counter()
        data = write_synthetic(inp, args.rows, args.seed)
        print(f"generated {args.rows} rows in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        r = run_child(inp, out, args.executor)
        mode = r["stats"].get("executor", args.executor)
        table.append((f"whole gate, {args.rows} rows ({mode})", f"{args.rows / r['cpu']:,.0f} rows/s",
                      f"CPU {r['cpu']:.1f} s, wall {r['wall']:.1f} s; target >= 15,000 rows/s"))
        table.append((f"peak RSS at {args.rows} rows", f"{r['peak_mb']:,.0f} MB", "target < 1,500 MB"))
        if data is not None:
            rejects = pq.read_table(str(out) + ".rejects.parquet")
            for ru, defect, p, rc in planted_scores(data, rejects, None):
                table.append((f"{ru} on planted {defect}", f"P {p} / R {rc}", ""))
            lb = r["stats"]["checks"]["length_bias"]
            table.append(("length bias (planted 70% chosen-longer)", f"{lb['frac_chosen_longer']:.3f} -> "
                          f"{lb['weighted_frac_chosen_longer']:.3f}", "fraction chosen-longer, raw -> weighted"))
            table += near_dup_section(data, args.threshold)
        if args.against:
            table += against(args.against, inp, args.runs)
    if not args.no_real:
        table += real_section()
        if args.against:  # the same comparison on all the shared data, with an eval set
            with tempfile.TemporaryDirectory() as tmp:
                write_real(Path(tmp) / "real.parquet")
                table += against(args.against, Path(tmp) / "real.parquet", args.runs, "real data")
    w = [max(len(str(row[i])) for row in table) for i in range(3)]
    print(f"{'measure':<{w[0]}} | {'value':<{w[1]}} | notes")
    print("-" * (w[0] + w[1] + 12))
    for a, b, c in table:
        print(f"{a:<{w[0]}} | {b:<{w[1]}} | {c}")


if __name__ == "__main__":
    main()
