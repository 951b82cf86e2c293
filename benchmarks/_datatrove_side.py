"""bench_near_dup's third side: datatrove's own MinHash dedup (stages 1-4) on the check's shingles and banding.

How it is made like for like with the datasketch side:
- shingles: `MinhashDedupSignature.get_shingles` is overridden to return the check's field-tagged 32-bit
  word-3-gram hashes of the row's chosen and rejected answers, the very arrays datasketch's `update_batch`
  gets (computed once, untimed, for both; datatrove's own text normalisation, tokenizer and n-gram hashing
  never run). Each document's text is just its row number.
- permutations: datatrove's own universal hashing ((a*x + b) mod 2^61-1, 32-bit precision, its own seeded
  parameters), num_buckets * hashes_per_bucket = 2 x 63 values per row: 63 per answer, as on the datasketch
  side; `get_signature` is overridden only to take the min per answer (the first 63 parameter pairs for chosen,
  the next 63 for rejected) instead of over one set, and an empty answer gets all-max values (as datasketch's
  empty MinHash does).
- banding: num_buckets = bands (21) and hashes_per_bucket = 2 x rows (3 chosen + 3 rejected values per bucket),
  the check's answer-pair bands.
- stages run by LocalPipelineExecutor in this process (workers=1): signature with 1 task, buckets with one task
  per bucket (datatrove requires world_size = num_buckets there), cluster and filter with 1 task.
Two rows come out of one run of stages 1-2:
- "datatrove + verify": its candidate pairs (the .dups files: neighbours with equal bucket signatures) go through
  the check's exact verification and greedy, exactly as datasketch's candidates do;
- "datatrove as shipped": its own stages 3-4 (union-find over unverified candidates, then the filter).
Charged: building Documents, stages 1-2 (signatures, bucket files written, sorted and verified, bucket
matching), reading the .dups files, then verification + greedy, or stages 3-4. Not charged: shingling (as for
datasketch), turning the cluster files into a representative per row (scoring only). The executor's
multiprocess.Manager runs in a child process whose CPU time is not counted (it only serves the rank queue).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # read by tqdm when datatrove imports it: no progress bars

# Shingles live here, not on the step: the executor deep-copies its pipeline for every task.
_SHINGLES: dict[str, list[np.ndarray]] = {}


def available() -> bool:
    return importlib.util.find_spec("datatrove") is not None


def _quiet() -> None:
    """Logs to stderr at WARNING and up only (task logs still go to their files at DEBUG, as datatrove always
    writes them)."""
    import sys

    import datatrove.executor.base as base
    import datatrove.utils.logging as dlog
    from loguru import logger

    if getattr(base.add_task_logger, "_quiet", False):
        return
    orig = base.add_task_logger

    def add_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):
        return orig(logging_dir, rank, 1, node_rank)  # local_rank != 0: its stderr sink logs ERROR only

    def setup_default_logger():
        logger.remove()
        logger.add(sys.stderr, level="WARNING")

    add_task_logger._quiet = True
    base.add_task_logger = add_task_logger
    dlog.setup_default_logger = setup_default_logger
    setup_default_logger()


def _signature_step():
    import datatrove.pipeline.dedup.minhash as mh

    class PairSignature(mh.MinhashDedupSignature):
        """Stage 1 on the check's shingles (see the module docstring); the rest of stage 1 is datatrove's."""

        def __init__(self, output_folder, config):
            orig = mh.load_word_tokenizer
            mh.load_word_tokenizer = lambda language: None  # its tokenizer (spaCy) would only serve get_shingles
            try:
                super().__init__(output_folder, config)
            finally:
                mh.load_word_tokenizer = orig

        def get_shingles(self, text: str) -> np.ndarray:
            i = int(text)
            c, r = _SHINGLES["chosen"][i], _SHINGLES["rejected"][i]
            self._split = c.size
            return np.concatenate([c, r]).astype(np.uint64).reshape(-1, 1) if c.size + r.size else np.zeros((0, 1))

        def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
            a, b = self.parameters
            k = self.num_hashes // 2
            cfg = self.config
            halves = []
            for part, pa, pb in ((shingles[:self._split], a[:, :k], b[:, :k]),
                                 (shingles[self._split:], a[:, k:], b[:, k:])):
                if part.size:
                    phv = np.bitwise_and((part * pa + pb) % mh._mersenne_prime, cfg.hash_config.max)
                    halves.append(np.min(phv, axis=0).astype(cfg.hash_config.np_dtype))
                else:
                    halves.append(np.full(k, cfg.hash_config.max, cfg.hash_config.np_dtype))
            rows = cfg.hashes_per_bucket // 2
            sig = np.stack([h.reshape(cfg.num_buckets, rows) for h in halves], axis=1)
            return sig.reshape(cfg.num_buckets, 2 * rows).tolist()

    return PairSignature


def _run(pipeline, tasks: int, logs: str) -> None:
    from datatrove.executor import LocalPipelineExecutor

    LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=logs, skip_completed=False).run()


def _docs(n: int):
    from datatrove.data import Document

    docs = [Document(text=str(i), id=str(i)) for i in range(n)]

    def reader(data, rank: int = 0, world_size: int = 1):
        yield from docs

    return reader


def _read_pairs(folder: str) -> np.ndarray:
    """All (a, b) row pairs of the .dups files (rank 0 only, so the doc ids are row numbers), a < b, distinct."""
    parts = [np.fromfile(os.path.join(folder, f), dtype="<u4").reshape(-1, 4)[:, [1, 3]]
             for f in sorted(os.listdir(folder)) if f.endswith(".dups")]
    p = np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 2), np.int64)
    return np.unique(np.sort(p, axis=1), axis=0)


def _cluster_rep(folder: str, n: int) -> np.ndarray:
    """Representative per row from stage 3's files: each removed row names its cluster's kept row."""
    rep = np.full(n, -1, np.int64)
    path = os.path.join(folder, "000000.clusters")
    if not os.path.exists(path):
        return rep
    dc = np.fromfile(path, dtype="<u4").reshape(-1, 2).astype(np.int64)
    rm = os.path.join(folder, "000000.remove")
    removed = np.zeros(n, bool)
    if os.path.exists(rm):
        removed[np.fromfile(rm, dtype="<u4").astype(np.int64)] = True
    kept = dc[~removed[dc[:, 0]]]
    keeper = np.full(int(dc[:, 1].max()) + 1, -1, np.int64)
    keeper[kept[:, 1]] = kept[:, 0]
    gone = dc[removed[dc[:, 0]]]
    rep[gone[:, 0]] = keeper[gone[:, 1]]
    return rep


def run(n: int, shingles: dict[str, list[np.ndarray]], check, bands: int, rows: int, seed: int) -> dict:
    """One end-to-end run: {"verified": rep, "shipped": rep, "t12", "t_verify", "t34" (CPU s), "candidates"}.

    `check(cand) -> rep` is the check's exact verification + greedy (the same callable as datasketch's)."""
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.utils.hashing import HashConfig

    _quiet()
    _SHINGLES.clear()
    _SHINGLES.update(shingles)
    cfg = MinhashConfig(num_buckets=bands, hashes_per_bucket=2 * rows, seed=seed,
                        hash_config=HashConfig(precision=32))
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench_dt_") as d:
        sig, dups, rem, logs = (os.path.join(d, x) for x in ("sigs", "dups", "remove", "logs"))
        c0 = time.process_time()
        docs = _docs(n)
        _run([docs, _signature_step()(sig, cfg)], 1, f"{logs}/1")
        _run([MinhashDedupBuckets(sig, dups, config=cfg)], bands, f"{logs}/2")
        cand = _read_pairs(dups)
        out["t12"] = time.process_time() - c0
        c0 = time.process_time()
        out["verified"] = check(cand)
        out["t_verify"] = time.process_time() - c0
        c0 = time.process_time()
        _run([MinhashDedupCluster(dups, rem, config=cfg, save_cluster_id=True)], 1, f"{logs}/3")
        _run([docs, MinhashDedupFilter(rem)], 1, f"{logs}/4")
        out["t34"] = time.process_time() - c0
        out["shipped"] = _cluster_rep(rem, n)
        out["candidates"] = cand
    return out
