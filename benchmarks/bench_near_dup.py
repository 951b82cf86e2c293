"""near_dup against datasketch MinHashLSH and datatrove's MinHash dedup on real rows with planted near-duplicates.

    taskset -c 1 .venv/bin/python benchmarks/bench_near_dup.py   # all AlpacaEval pairs (~50k after exact dedup)
    .venv/bin/python benchmarks/bench_near_dup.py --rows 20000 --runs 3 [--no-datatrove]

Rows: every AlpacaEval annotation file in ../shared/data, exact duplicates removed, plus --planted copies of
random rows with one word inserted into each answer (planted near-duplicates inside real data; the truth is the
subset within the rule by exact Jaccard). All sides:
- use the same shingles: the check's field-tagged 32-bit word-3-gram hashes (computed once, untimed, and handed
  to datasketch and datatrove as per-row arrays; neither hashes text itself; timed from raw text for ours,
  tokenising included),
- the same number of permutations (63 per answer) and the banding the check itself uses (answer-pair bands:
  rows of the chosen signature and of the rejected signature in every band; datasketch gets one MinHash per
  answer and a band key made of both, via MinHashLSH on the interleaved hash values with the same bands x rows;
  datatrove gets num_buckets = bands, hashes_per_bucket = 2 x rows; see _datatrove_side.py),
- the same exact verification (whole pair >= threshold, each answer >= min_answer_jaccard) and the same greedy
  keep-first decisions (the check's own code), timed on every side. "datatrove as shipped" is its own
  stages 3-4 (union-find over unverified candidates) instead, for reference.
Protocol: one process pinned to one CPU, Polars on one thread, the sides alternate, --runs each; median and
spread (min..max) of CPU time. Recall = planted copies dropped / planted copies within the rule; precision =
drops whose named kept row is within the rule (recomputed with Python sets). Peak MB: the peak RSS one more run
of a side adds to the loaded process (a forked child each, after the timed runs). datatrove is skipped when it
is not installed (it is in the `bench` extra only).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DPO_SHARED_DATA", ROOT.parent / "shared" / "data"))
for k in ("POLARS_MAX_THREADS", "RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[k] = "1"
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402


def load(rows: int | None, planted: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    """Real pairs (exact duplicates removed) + planted copies; returns the table and (original, copy) rows."""
    import polars as pl

    from data_quality.ingest import ingest_files
    from data_quality.scale import edited_copy

    real = ingest_files(sorted((DATA / "alpaca_eval" / "annotations").glob("*.json.gz"))).pairs
    keep = pl.Series(real.column("pair_id")).is_first_distinct().to_numpy()
    real = real.filter(pa.array(keep))
    if rows:
        real = real.slice(0, rows)
    rng = np.random.default_rng(seed)
    src = np.sort(rng.choice(real.num_rows, size=min(planted, real.num_rows), replace=False))
    copy = edited_copy(edited_copy(real.take(pa.array(src)), 1, seed), 2, seed)  # one word in each answer
    t = pa.concat_tables([real, copy.select(real.column_names).cast(real.schema)]).combine_chunks()
    return t, np.stack([src, real.num_rows + np.arange(src.size)], axis=1)


def ours(t: pa.Table, cfg) -> tuple[np.ndarray, dict]:
    from data_quality.checks import near_dup

    return near_dup.find_duplicates(near_dup.TableTexts(t), cfg)


def row_shingles(fields) -> dict[str, list[np.ndarray]]:
    """Each row's answer shingles (the check's own arrays), handed to datasketch and datatrove untimed."""
    out = {}
    for name in ("chosen", "rejected"):
        f = fields[name]
        out[name] = [f.values[f.offsets[i]:f.offsets[i + 1]] for i in f.inv]
    return out


def datasketch_side(t: pa.Table, cfg, fields, vals, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """MinHashLSH on the same shingles and banding, then the check's own exact verification and greedy."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(num_perm=2 * bands * rows, params=(bands, 2 * rows))
    sigs = []
    for i in range(t.num_rows):
        both = []
        for name in ("chosen", "rejected"):
            m = MinHash(num_perm=bands * rows, seed=cfg.seed, hashfunc=int)
            m.update_batch(vals[name][i].tolist())
            both.append(m.hashvalues)
        # Interleave so each band holds `rows` values of each answer's signature, like the check's bands.
        hv = np.stack([b.reshape(bands, rows) for b in both], axis=1).reshape(-1)
        m = MinHash(num_perm=hv.size, hashvalues=hv, scheme="affine32")
        lsh.insert(i, m, check_duplication=False)
        sigs.append(m)
    pairs = {(min(i, j), max(i, j)) for i, m in enumerate(sigs) for j in lsh.query(m) if j != i}
    cand = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
    return verified(t, cfg, fields, cand), cand


def verified(t: pa.Table, cfg, fields, cand: np.ndarray) -> np.ndarray:
    """The check's exact verification and greedy keep-first decisions over someone else's candidate pairs."""
    from data_quality.checks import near_dup

    return near_dup.greedy(cand, t.num_rows, lambda p: near_dup.check_pairs(fields, p, cfg))[0]


_CHILD_TIMEOUT_S = 1800


def peak_mb(fn) -> float:
    """Peak RSS (MB) that one call of `fn` adds to this process's loaded state, measured in a forked child
    (so the sides do not inherit each other's peaks; the timed runs are separate and unaffected)."""
    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith(key))

    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back so the child's baseline is what is live
    except (OSError, AttributeError):
        pass
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak to the current RSS
            base = status("VmRSS:")
            fn()
            os.write(w, str((status("VmHWM:") - base) / 1024).encode())
        finally:
            os._exit(0)
    os.close(w)
    # A child that waits on a lock or thread pool the fork did not copy would hang the benchmark silently.
    if not select.select([r], [], [], _CHILD_TIMEOUT_S)[0]:
        os.kill(pid, signal.SIGKILL)
        print(f"peak_mb: the forked child gave no answer in {_CHILD_TIMEOUT_S} s; killed", file=sys.stderr)
    with os.fdopen(r) as f:
        got = f.read()
    os.waitpid(pid, 0)
    return float(got) if got else float("nan")


def score(t: pa.Table, rep: np.ndarray, truth: np.ndarray, cfg) -> tuple[float, float, int]:
    from data_quality.checks.text import jaccard
    from data_quality.scale import tagged_sets

    def within(a: int, b: int) -> bool:
        sub = t.take(pa.array([a, b]))
        whole = tagged_sets(sub, cfg.fields, cfg.ngram)
        ans = [tagged_sets(sub, (f,), cfg.ngram) for f in ("chosen", "rejected")]
        return jaccard(*whole) >= cfg.threshold and all(jaccard(*s) >= cfg.min_answer_jaccard for s in ans)

    true = [c for o, c in truth if rep[o] < 0 and within(int(o), int(c))]
    recall = float(np.mean([rep[c] >= 0 for c in true])) if true else 1.0
    drops = np.flatnonzero(rep >= 0)
    sample = drops[np.linspace(0, drops.size - 1, min(drops.size, 2000)).astype(int)] if drops.size else drops
    precision = float(np.mean([within(int(rep[d]), int(d)) for d in sample])) if sample.size else 1.0
    return recall, precision, len(true)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=None, help="real rows to use (default: all)")
    ap.add_argument("--planted", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-datatrove", action="store_true", help="skip the datatrove side even if installed")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from data_quality.checks import near_dup

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _datatrove_side as dts

    use_dt = dts.available() and not args.no_datatrove
    if not use_dt:
        print("datatrove side skipped (" + ("--no-datatrove" if args.no_datatrove else "datatrove not installed: "
              "pip install -e '.[bench]'") + ")")
    cfg = near_dup.NearDupConfig()
    t, truth = load(args.rows, args.planted, args.seed)
    bands, rows = near_dup.choose_bands(cfg.threshold, cfg.num_perm, cfg.target_recall, 2)
    src = near_dup.TableTexts(t)
    fields = {n: near_dup.Field(src, n, cfg) for n in ("prompt_text", "chosen", "rejected")}  # shingles, untimed
    vals = row_shingles(fields)  # untimed, for datasketch and datatrove alike

    def dt_run() -> dict:
        return dts.run(t.num_rows, vals, lambda c: verified(t, cfg, fields, c), bands, rows, cfg.seed)

    import datasketch  # noqa: F401  (imports outside every measurement, like ours already is)

    if use_dt:
        import datatrove.executor  # noqa: F401
        import datatrove.pipeline.dedup.minhash  # noqa: F401
    # Memory first, each side forked from the same freshly loaded state (no freed heap of earlier runs to reuse).
    mem = {"ours": peak_mb(lambda: ours(t, cfg)),
           "datasketch": peak_mb(lambda: datasketch_side(t, cfg, fields, vals, bands, rows))}
    if use_dt:
        mem["datatrove + verify"] = mem["datatrove as shipped"] = peak_mb(dt_run)
    names = ["ours", "datasketch"] + (["datatrove + verify", "datatrove as shipped"] if use_dt else [])
    times: dict[str, list[float]] = {n: [] for n in names}
    reps, cands = {}, {}
    parts: dict[str, list[float]] = {"stages 1-2 + reading pairs": [], "verify + greedy": [], "stages 3-4": []}
    for _ in range(args.runs):
        c0 = time.process_time()
        reps["ours"], st = ours(t, cfg)
        times["ours"].append(time.process_time() - c0)
        c0 = time.process_time()
        reps["datasketch"], cands["datasketch"] = datasketch_side(t, cfg, fields, vals, bands, rows)
        times["datasketch"].append(time.process_time() - c0)
        if use_dt:
            r = dt_run()
            reps["datatrove + verify"], reps["datatrove as shipped"] = r["verified"], r["shipped"]
            cands["datatrove"] = r["candidates"]
            times["datatrove + verify"].append(r["t12"] + r["t_verify"])
            times["datatrove as shipped"].append(r["t12"] + r["t34"])
            for k, v in zip(parts, (r["t12"], r["t_verify"], r["t34"]), strict=True):
                parts[k].append(v)
    lines = []
    for name in names:
        rc, pr, n_true = score(t, reps[name], truth, cfg)
        ts = times[name]
        lines.append((name, f"{statistics.median(ts):.2f} s", f"{min(ts):.2f}..{max(ts):.2f}",
                      f"{t.num_rows / statistics.median(ts):,.0f}", f"{rc:.4f} of {n_true:,}", f"{pr:.4f}",
                      f"{int((reps[name] >= 0).sum()):,}", f"{mem[name]:,.0f}"))
    head = ("side", "CPU median", "spread", "rows/s", "recall (of planted within rule)", "precision", "drops",
            "peak MB")
    w = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    print(f"{t.num_rows:,} rows ({truth.shape[0]} planted copies), {args.runs} runs each, one core; "
          f"bands {bands} x ({rows} chosen + {rows} rejected rows), 63 of 64 permutations per answer used")
    print(" | ".join(h.ljust(w[i]) for i, h in enumerate(head)))
    print("-|-".join("-" * x for x in w))
    for x in lines:
        print(" | ".join(v.ljust(w[i]) for i, v in enumerate(x)))
    med = {n: statistics.median(times[n]) for n in names}
    print("\n" + "; ".join(f"ours is {med[n] / med['ours']:.1f}x {n}" for n in names[1:])
          + " (median CPU; target >= 10x at equal or better recall)")
    print(f"candidate pairs: ours {st['candidates']:,} ({st['checked_pairs']:,} checked), "
          f"datasketch {len(cands['datasketch']):,}", end="")
    if use_dt:
        a, b = ({tuple(p) for p in cands[k].tolist()} for k in ("datasketch", "datatrove"))
        print(f", datatrove {len(b):,} (bucket neighbours; {len(a & b):,} also datasketch's)", end="")
        print("\ndatatrove CPU medians: " + ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in parts.items()),
              end="")
    print()


if __name__ == "__main__":
    main()
