"""Which executor runs the gate (data_quality.engine, .out_of_core, .cluster), and running it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from data_quality.engine import EngineConfig, GateResult, Step, run_in_memory
from data_quality.out_of_core import parquet_file, run_out_of_core

_SIZE_SAMPLE = 10_000  # rows read to estimate the Arrow size of a Parquet input
_WORK_FACTOR = 7  # peak RSS of an in-memory run / Arrow size of its input (bench_scale, AlpacaEval copies: ~6.8)


def choose_executor(source: pa.Table | str | Path, cfg: EngineConfig) -> str:
    if cfg.executor != "auto":
        return cfg.executor
    return "memory" if _WORK_FACTOR * arrow_size(source) <= cfg.memory_budget_mb * 2**20 else "out_of_core"


def arrow_size(source: pa.Table | str | Path) -> int:
    """Bytes the input takes as Arrow in memory; for Parquet, estimated from its first rows (Parquet's own sizes
    count dictionary-encoded text, far smaller than the decoded strings when answers repeat). Not from a whole
    row group: a snapshot's first row group holds ~1M rows, GBs once decoded."""
    if isinstance(source, pa.Table):
        return source.nbytes
    f = parquet_file(source)
    if f.metadata.num_rows == 0:
        return 0
    first = next(f.iter_batches(batch_size=_SIZE_SAMPLE))
    return int(first.nbytes / max(first.num_rows, 1) * f.metadata.num_rows)


def execute(source: pa.Table | str | Path, steps: Sequence[Step], config: dict[str, Any],
            cfg: EngineConfig | None = None) -> GateResult:
    """Run `steps` over a pair table or a Parquet file of pairs with the executor `cfg` asks for."""
    cfg = cfg or EngineConfig()
    kind = choose_executor(source, cfg)
    if kind == "memory":
        table = source if isinstance(source, pa.Table) else pq.read_table(str(source))
        return run_in_memory(table, steps, config)
    if kind == "cluster":
        # Imported on demand: dask.distributed takes a second to import, and only this executor needs it.
        from data_quality.cluster import run_cluster

        return run_cluster(source, steps, config, cfg)
    return run_out_of_core(source, steps, config, cfg)
