"""Ingest memory at scale (issue 11): peak RSS and wall time of `dpo ingest` of AlpacaEval-shaped Parquet files
(built from real rows by bench_scale.build), each in a fresh child process on one core, into a fresh workspace.

    .venv/bin/python benchmarks/bench_ingest_memory.py --files /tmp/ingmem/p2.parquet /tmp/ingmem/p8.parquet \
        [--repo /tmp/ingest_before] [--label before] [--build COPIES ...]

`--repo` runs the CLI from another checkout (say a `git worktree` of an older commit) to compare code versions;
`--build N` first writes `<dir>/pN.parquet` with N copies of the 54,425 AlpacaEval pairs (base cached at
--base). Peak RSS is the child's own ru_maxrss (os.wait4), so files and page cache never count.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
MAP = ("prompt=prompt_text,chosen=chosen,rejected=rejected,chosen_score=chosen_score,"
       "rejected_score=rejected_score,preference_prob=preference_prob,chosen_model=chosen_model,"
       "rejected_model=rejected_model,judge=judge")


def run_ingest(path: Path, repo: Path, cpu: int) -> tuple[float, float, int]:
    """(peak RSS MB, wall s, exit status) of one `dpo ingest` child run from `repo`."""
    with tempfile.TemporaryDirectory(prefix="bench-ingest-mem-") as ws, tempfile.TemporaryFile() as err:
        cmd = ["taskset", "-c", str(cpu), sys.executable, "-m", "pipelines.cli", "ingest", "-w", ws, "-d", "bench",
               str(path), "--map", MAP]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
        if rc:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace")[-2000:])
        return usage.ru_maxrss / 1024, wall, rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=Path, nargs="*", default=[])
    ap.add_argument("--build", type=int, nargs="*", default=[], help="copies of the base pairs per built file")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "ingmem")
    ap.add_argument("--base", type=Path, default=Path(tempfile.gettempdir()) / "ingmem" / "base.parquet")
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose code runs the ingest")
    ap.add_argument("--label", default="this checkout")
    ap.add_argument("--cpu", type=int, default=1)
    args = ap.parse_args()
    files = list(args.files)
    if args.build:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_scale import build

        args.dir.mkdir(parents=True, exist_ok=True)
        for copies in args.build:
            target = args.dir / f"p{copies}.parquet"
            if not target.exists():
                build(target, copies, args.base)
            files.append(target)
    print("| code | rows | file MB | peak RSS MB | wall s |\n|---|---:|---:|---:|---:|")
    for f in files:
        rows = pq.ParquetFile(f).metadata.num_rows
        peak, wall, rc = run_ingest(f, args.repo, args.cpu)
        note = "" if rc == 0 else f" (exit {rc})"
        print(f"| {args.label} | {rows:,} | {f.stat().st_size / 1e6:,.0f} | {peak:,.0f}{note} | {wall:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
