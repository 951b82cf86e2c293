"""The gate on a local Dask cluster at 1, 2 and 4 workers, and a model that extrapolates to 100M pairs x N workers.

    .venv/bin/python benchmarks/bench_cluster.py                        # AlpacaEval (54k rows), 1 2 4 workers
    .venv/bin/python benchmarks/bench_cluster.py --copies 2 --workers 1 2 4 --cores 1

Data: bench_scale's real-shaped set (all AlpacaEval annotation files, plus `--copies - 1` copies with one word
inserted in one answer per row). Each measurement runs in a child process pinned to `--cores` CPUs (workers
inherit the pinning) that starts a LocalCluster of N worker processes (one thread each), gates the Parquet file
with executor = cluster, and records: wall seconds, CPU seconds of the driver and of all workers (process CPU
time, so time-sharing a core does not inflate it), peak RSS of each worker and of the driver.

The model (`Model`), fitted on the 1-worker runs (on --copies and on --slope-copies for the per-row slopes) and
checked on the 2- and 4-worker runs (the partition terms are fitted only when given a run at another partition
count on the same rows: `Model.fit`):
  wall = D + W / min(workers x threads, cores) + L
  D = d0 + d_row * rows + d_part * P        driver CPU: greedy rounds, length-bias fit, merges, task bookkeeping
  W = w0 + w_row * rows + w_piece * P^2     worker CPU: all checks, plus the P x P pieces of each shuffle
  L = the 1-worker run's wall not spent on a CPU (scheduler round trips, a machine shared with other jobs)
with P = partitions (2 per worker thread). Worker peak = m_w0 + M_w * rows / workers; driver heap
peak = m_d0 + M_d * rows (anonymous memory, sampled; its RSS peak also counts the evictable
memory-mapped pages of the kept rows' files). It assumes per-row costs stay constant (near_dup is near-linear on
this data: bench_scale) and balanced partitions; with fewer cores than workers there is no speed-up (--cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ONE_THREAD = {"POLARS_MAX_THREADS": "1", "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
              "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu() -> float:
    return time.process_time()


class AnonPeak:
    """Peak anonymous RSS of this process (heap, not file pages), sampled every 50 ms: ru_maxrss also counts the
    memory-mapped pages of the kept rows' Arrow files, which the kernel can evict."""

    def __init__(self) -> None:
        import threading

        self.peak, self.stop = 0.0, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stop.wait(0.05):
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    self.peak = max(self.peak, int(line.split()[1]) / 1024)

    def close(self) -> float:
        self.stop.set()
        self.thread.join()
        return self.peak


def measure(path: str, workers: int, threads: int = 1, partitions: int = 0) -> dict:
    """One run in this process: a fresh LocalCluster of `workers` processes gates `path` (executor cluster)."""
    from dask.distributed import Client, LocalCluster

    from data_quality.gate import GateConfig, run_gate

    with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True, dashboard_address=":0",
                      worker_dashboard_address=":0") as lc, Client(lc) as c:
        c.run(lambda: __import__("data_quality.cluster"))  # imports are start-up, not gate work
        base_w, cpu_w0 = c.run(_rss_mb), c.run(_cpu)
        base_d, cpu_d0, t0, anon = _rss_mb(), time.process_time(), time.perf_counter(), AnonPeak()
        # spill_dir: the kept rows come back as files, as when the engine starts the local cluster itself
        cfg = GateConfig.from_dict({"engine": {"executor": "cluster", "address": lc.scheduler_address,
                                               "spill_dir": str(Path(path).parent), "partitions": partitions}})
        res = run_gate(Path(path), cfg)
        wall, cpu_d, anon_peak = time.perf_counter() - t0, time.process_time() - cpu_d0, anon.close()
        cpu_w1, peak_w = c.run(_cpu), c.run(_peak_mb)
    return {"workers": workers, "threads": threads, "rows": res.input_rows, "kept": res.stats["kept"],
            "wall": wall, "driver_cpu": cpu_d, "worker_cpu": sum(cpu_w1[k] - cpu_w0[k] for k in cpu_w1),
            "worker_base_mb": max(base_w.values()), "worker_peak_mb": max(peak_w.values()),
            "driver_base_mb": base_d, "driver_peak_mb": _peak_mb(), "driver_anon_peak_mb": anon_peak,
            "partitions": res.stats["cluster"]["partitions"],
            "near_dup_s": res.stats["checks"].get("near_dup", {}).get("seconds")}


def measure_in_child(path: str, workers: int, cores: int, threads: int = 1, partitions: int = 0) -> dict:
    """`measure` in a child process pinned to the first `cores` CPUs this process may use (clean peak RSS)."""
    cpus = sorted(os.sched_getaffinity(0))[:cores]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = ["taskset", "-c", ",".join(map(str, cpus)), sys.executable, __file__, "--child", path, str(workers),
               str(threads), out.name, str(partitions)]
        subprocess.run(cmd, check=True, env={**os.environ, **ONE_THREAD}, cwd=ROOT)
        return {**json.loads(Path(out.name).read_text()), "cores": len(cpus)}


@dataclass
class Model:
    driver_s_fixed: float
    driver_s_per_row: float
    driver_s_per_partition: float
    worker_s_fixed: float
    worker_s_per_row: float
    worker_s_per_piece: float  # per shuffle piece: partitions^2 of them per shuffle
    latency_s: float
    worker_base_mb: float
    worker_mb_per_row: float
    driver_base_mb: float
    driver_mb_per_row: float  # heap (anonymous) memory

    @classmethod
    def fit(cls, runs: list[dict]) -> Model:
        """From the first run (best: 1 worker); per-row slopes from a run of the same workers on more rows
        (else all of the first run's cost counts as per-row); partition terms from a run on the first run's
        rows at another partition count (else 0)."""
        m = runs[0]
        rows, p, par = m["rows"], m["partitions"], min(m["workers"] * m["threads"], m["cores"])
        more = next((r for r in runs[1:] if r["rows"] > rows and r["workers"] == m["workers"]), None)
        other = next((r for r in runs[1:] if r["rows"] == rows and r["partitions"] != p), None)
        d_part = w_piece = 0.0
        if other is not None:
            d_part = max(0.0, (other["driver_cpu"] - m["driver_cpu"]) / (other["partitions"] - p))
            w_piece = max(0.0, (other["worker_cpu"] - m["worker_cpu"]) / (other["partitions"] ** 2 - p**2))
        d_cpu, w_cpu = m["driver_cpu"] - d_part * p, m["worker_cpu"] - w_piece * p**2
        if more is None:
            d_row, w_row = d_cpu / rows, w_cpu / rows
            wm_row = (m["worker_peak_mb"] - m["worker_base_mb"]) * m["workers"] / rows
            dm_row = max(0.0, m["driver_anon_peak_mb"] - m["driver_base_mb"]) / rows
        else:
            extra = more["rows"] - rows
            d_row = (more["driver_cpu"] - m["driver_cpu"]) / extra
            w_row = (more["worker_cpu"] - m["worker_cpu"]) / extra
            wm_row = (more["worker_peak_mb"] - m["worker_peak_mb"]) * m["workers"] / extra
            dm_row = max(0.0, (more["driver_anon_peak_mb"] - m["driver_anon_peak_mb"]) / extra)
        latency = max(0.0, m["wall"] - m["driver_cpu"] - m["worker_cpu"] / par)
        # A slope steeper than the first run's mean (noise on a shared machine) would make a negative fixed
        # cost: then the first run's mean per row is used and the fixed cost is 0.
        d_row, w_row = min(d_row, d_cpu / rows), min(w_row, w_cpu / rows)
        wm_row = min(wm_row, m["worker_peak_mb"] * m["workers"] / rows)
        dm_row = min(dm_row, m["driver_anon_peak_mb"] / rows)
        return cls(d_cpu - d_row * rows, d_row, d_part, w_cpu - w_row * rows, w_row, w_piece, latency,
                   m["worker_peak_mb"] - wm_row * rows / m["workers"], wm_row,
                   m["driver_anon_peak_mb"] - dm_row * rows, dm_row)

    def predict(self, rows: float, workers: int, cores: int, threads: int = 1, partitions: int = 0) -> dict:
        par, p = min(workers * threads, cores), partitions or 2 * workers * threads
        driver = self.driver_s_fixed + self.driver_s_per_row * rows + self.driver_s_per_partition * p
        work = self.worker_s_fixed + self.worker_s_per_row * rows + self.worker_s_per_piece * p**2
        return {"wall": driver + work / par + self.latency_s,
                "worker_peak_mb": self.worker_base_mb + self.worker_mb_per_row * rows / workers,
                "driver_peak_mb": self.driver_base_mb + self.driver_mb_per_row * rows}


def build_data(copies: int, workdir: Path) -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_scale import build

    path = workdir / f"alpaca_x{copies}.parquet"
    if not path.exists():
        build(path, copies, workdir / "alpaca_base.parquet")
    return path


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        path, workers, threads, out, parts = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
        Path(out).write_text(json.dumps(measure(path, workers, threads, int(parts))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "dpo-bench-cluster"))
    ap.add_argument("--target-rows", type=float, default=100e6)
    ap.add_argument("--slope-copies", type=int, default=2, help="data for the per-row slopes (0: none)")
    ap.add_argument("--runs", help="re-fit and print from a previous run's JSON (its last line) without measuring")
    args = ap.parse_args()
    if args.runs:
        saved = json.loads(Path(args.runs).read_text().strip().splitlines()[-1])["runs"]
        fit, runs = saved[:-len(args.workers)], saved[-len(args.workers):]
        args.cores = runs[0]["cores"]
    else:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
        path = build_data(args.copies, Path(args.workdir))
        fit = []
        if args.slope_copies > args.copies:  # per-row slopes from a run on more rows
            more = build_data(args.slope_copies, Path(args.workdir))
            fit.append(measure_in_child(str(more), args.workers[0], args.cores))
        runs = [measure_in_child(str(path), w, args.cores) for w in args.workers]
    # Fitted on the first worker count only: the other worker counts are out-of-sample checks.
    model = Model.fit([runs[0], *fit])
    print(f"rows {runs[0]['rows']:,}, cores {args.cores}; model fitted on runs of "
          + ", ".join(f"{m['workers']} worker(s) x {m['rows']:,} rows" for m in [runs[0], *fit]) + ":")
    print(json.dumps(asdict(model), indent=1))
    print("| workers | rows | wall s (predicted) | driver CPU s | workers CPU s | worker peak MB (predicted) "
          "| driver heap peak MB (predicted) | driver RSS peak MB | near_dup s | kept |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in runs:
        p = model.predict(m["rows"], m["workers"], args.cores)
        print(f"| {m['workers']} | {m['rows']:,} | {m['wall']:.1f} ({p['wall']:.1f}) | {m['driver_cpu']:.1f} | "
              f"{m['worker_cpu']:.1f} | {m['worker_peak_mb']:.0f} ({p['worker_peak_mb']:.0f}) | "
              f"{m['driver_anon_peak_mb']:.0f} ({p['driver_peak_mb']:.0f}) | {m['driver_peak_mb']:.0f} | "
              f"{m['near_dup_s']:.1f} | {m['kept']:,} |")
    print(f"\nExtrapolation to {args.target_rows:,.0f} pairs, one core per worker (1 thread):")
    print("| workers | wall h | worker peak GB | driver heap peak GB |")
    print("| ---: | ---: | ---: | ---: |")
    for n in (8, 32, 128, 512):
        p = model.predict(args.target_rows, n, cores=n)
        print(f"| {n} | {p['wall'] / 3600:.2f} | {p['worker_peak_mb'] / 1024:.1f} | {p['driver_peak_mb'] / 1024:.1f} |")
    print(json.dumps({"runs": fit + runs, "model": asdict(model)}))


if __name__ == "__main__":
    main()
