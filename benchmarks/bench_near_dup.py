"""near_dup against datasketch MinHashLSH on real rows with planted near-duplicates, like for like.

    .venv/bin/python benchmarks/bench_near_dup.py              # all AlpacaEval pairs (~50k after exact dedup)
    .venv/bin/python benchmarks/bench_near_dup.py --rows 20000 --runs 3

Rows: every AlpacaEval annotation file in ../shared/data, exact duplicates removed, plus --planted copies of
random rows with one word inserted into each answer (planted near-duplicates inside real data; the truth is the
subset within the rule by exact Jaccard). Both sides:
- use the same shingles: the check's field-tagged 32-bit word-3-gram hashes (computed once, untimed, for
  datasketch, which then hashes nothing itself; timed from raw text for ours, tokenising included),
- the same 64 permutations and the banding the check itself uses (answer-pair bands: rows of the chosen
  signature and of the rejected signature in every band; datasketch gets one MinHash per answer and a band key
  made of both, via MinHashLSH on the concatenated hash values with the same bands x rows),
- the same exact verification (whole pair >= threshold, each answer >= min_answer_jaccard) and the same greedy
  keep-first decisions (the check's own code), timed on both sides.
Protocol: one process pinned to one CPU, Polars on one thread, the two sides alternate, --runs each; median and
spread (min..max) of CPU time. Recall = planted copies dropped / planted copies within the rule; precision =
drops whose named kept row is within the rule (recomputed with Python sets).
"""

from __future__ import annotations

import argparse
import os
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


def datasketch_side(t: pa.Table, cfg, fields, bands: int, rows: int) -> np.ndarray:
    """MinHashLSH on the same shingles and banding, then the check's own exact verification and greedy."""
    from datasketch import MinHash, MinHashLSH

    from data_quality.checks import near_dup

    vals = {}
    for name in ("chosen", "rejected"):
        f = fields[name]
        vals[name] = [f.values[f.offsets[i]:f.offsets[i + 1]] for i in f.inv]
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
    rep, _ = near_dup.greedy(cand, t.num_rows, lambda p: near_dup.check_pairs(fields, p, cfg))
    return rep


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
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    from data_quality.checks import near_dup

    cfg = near_dup.NearDupConfig()
    t, truth = load(args.rows, args.planted, args.seed)
    bands, rows = near_dup.choose_bands(cfg.threshold, cfg.num_perm, cfg.target_recall, 2)
    src = near_dup.TableTexts(t)
    fields = {n: near_dup.Field(src, n, cfg) for n in ("prompt_text", "chosen", "rejected")}  # shingles, untimed
    times: dict[str, list[float]] = {"ours": [], "datasketch": []}
    reps = {}
    for _ in range(args.runs):
        c0 = time.process_time()
        reps["ours"], st = ours(t, cfg)
        times["ours"].append(time.process_time() - c0)
        c0 = time.process_time()
        reps["datasketch"] = datasketch_side(t, cfg, fields, bands, rows)
        times["datasketch"].append(time.process_time() - c0)
    lines = []
    for name in ("ours", "datasketch"):
        rc, pr, n_true = score(t, reps[name], truth, cfg)
        ts = times[name]
        lines.append((name, f"{statistics.median(ts):.2f} s", f"{min(ts):.2f}..{max(ts):.2f}",
                      f"{t.num_rows / statistics.median(ts):,.0f}", f"{rc:.4f}", f"{pr:.4f}",
                      f"{int((reps[name] >= 0).sum()):,}"))
    head = ("side", "CPU median", "spread", "rows/s", f"recall ({n_true} planted)", "precision", "drops")
    w = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    print(f"{t.num_rows:,} rows ({truth.shape[0]} planted copies), {args.runs} runs each, one core; "
          f"bands {bands} x ({rows} chosen + {rows} rejected rows), 64 permutations per answer")
    print(" | ".join(h.ljust(w[i]) for i, h in enumerate(head)))
    print("-|-".join("-" * x for x in w))
    for x in lines:
        print(" | ".join(v.ljust(w[i]) for i, v in enumerate(x)))
    ratio = statistics.median(times["datasketch"]) / statistics.median(times["ours"])
    print(f"\nours is {ratio:.1f}x datasketch (median CPU; target >= 10x at equal or better recall); "
          f"ours: {st['candidates']:,} candidates, {st['checked_pairs']:,} checked")


if __name__ == "__main__":
    main()
