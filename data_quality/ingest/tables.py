"""Columnar containers (Parquet files, `save_to_disk` directories), streamed in small Arrow batches: a row
group is never read whole, so memory holds one batch of rows whatever the file's size."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from data_quality.ingest.containers import RawRows
from data_quality.ingest.options import IngestOptions

# ~3 MB of AlpacaEval-shaped rows (1-3 KB each): small next to the per-row Python cost of the readers.
BATCH_ROWS = 1024
_BUFFER = 1 << 20


def batch_rows(batches: Iterator[pa.RecordBatch], offset: int = 0) -> Iterator[tuple[int, object]]:
    i = offset
    for batch in batches:
        for rec in batch.to_pylist():
            yield i, rec
            i += 1


def read_parquet(path: Path, source: str, opts: IngestOptions) -> RawRows:
    """Parquet, `BATCH_ROWS` rows at a time through a 1 MiB buffered stream (no pre-buffering of whole column
    chunks): a 2.5 GB file costs a few MB. An unreadable file (bad footer) fails here, naming it; one that
    breaks part way fails when that part is read, with the same message."""
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)  # a bad footer fails now; the file is opened again only when its rows are read
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{source}: cannot read Parquet file: {exc}") from exc

    def records() -> Iterator[tuple[int, object]]:
        try:
            with pq.ParquetFile(path, buffer_size=_BUFFER, pre_buffer=False) as pf:
                yield from batch_rows(pf.iter_batches(batch_size=BATCH_ROWS, use_threads=False))
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{source}: cannot read Parquet file: {exc}") from exc

    return RawRows(source, "parquet", records=records())


def _shard_batches(path: Path) -> Iterator[pa.RecordBatch]:
    with pa.memory_map(str(path)) as src:
        try:
            reader = pa.ipc.open_stream(src)
        except pa.ArrowInvalid:
            f = pa.ipc.open_file(src)
            yield from (f.get_batch(i) for i in range(f.num_record_batches))
            return
        yield from reader


def _shard_schema(path: Path) -> pa.Schema:
    with pa.memory_map(str(path)) as src:
        try:
            return pa.ipc.open_stream(src).schema
        except pa.ArrowInvalid:
            return pa.ipc.open_file(src).schema


def read_hf_dir(path: Path, source: str, opts: IngestOptions) -> list[RawRows]:
    """A `Dataset.save_to_disk` directory (Arrow shards listed in state.json), or a DatasetDict of them; shards
    are streamed batch by batch. Shards whose schemas differ are read whole and merged as before (rows then
    hold every column, null where a shard lacks it)."""
    dict_meta = path / "dataset_dict.json"
    if dict_meta.exists():
        splits = json.loads(dict_meta.read_text())["splits"]
        return [read_hf_dir(path / s, f"{source}/{s}", opts)[0] for s in splits]
    state = json.loads((path / "state.json").read_text())
    shards = [path / entry["filename"] for entry in state["_data_files"]]
    if not shards:
        return [RawRows(source, "hf_dataset")]
    schemas = [_shard_schema(s) for s in shards]
    if all(s.equals(schemas[0]) for s in schemas):
        batches = (b for s in shards for b in _shard_batches(s))
    else:
        table = pa.concat_tables([pa.Table.from_batches(list(_shard_batches(s)), schema=sc)
                                  for s, sc in zip(shards, schemas, strict=True)], promote_options="default")
        batches = iter(table.to_batches(BATCH_ROWS))
    return [RawRows(source, "hf_dataset", records=batch_rows(batches))]
