"""Kept pairs written to disk as they are made: one Parquet file (PAIR_SCHEMA, zstd, row groups of <= 32 MB)
for a whole ingest, so memory holds one row group whatever the input's size. The snapshot publish copies
that file as the snapshot's pairs.parquet (storage/publish.py) instead of building a table."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.schema import PAIR_SCHEMA, conform


class PairSpill:
    """Append-only pairs file in its own temporary folder, deleted with this object (or `cleanup`)."""

    def __init__(self, folder: str | Path | None = None, row_group_rows: int = 20_000,
                 row_group_bytes: int = 32 << 20) -> None:
        # A row group is written once either bound is reached: few row groups, and at most ~32 MB of Arrow
        # waiting (about 10k AlpacaEval-shaped rows), whatever the row size.
        self.row_group_rows, self.row_group_bytes = row_group_rows, row_group_bytes
        self._pending: list[pa.Table] = []
        self._pending_rows = self._pending_bytes = 0
        self._dir = tempfile.TemporaryDirectory(prefix="dpo-ingest-", dir=folder)
        self.path = Path(self._dir.name) / "pairs.parquet"
        self.rows = 0
        self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self.path, PAIR_SCHEMA, compression="zstd")

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            raise ValueError("the pairs spill is closed")
        if table.num_rows:
            self._pending.append(conform(table))
            self._pending_rows += table.num_rows
            self._pending_bytes += table.nbytes
            self.rows += table.num_rows
        if self._pending_rows >= self.row_group_rows or self._pending_bytes >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._writer is not None and self._pending_rows:
            part = pa.concat_tables(self._pending)
            self._pending, self._pending_rows, self._pending_bytes = [], 0, 0
            self._writer.write_table(part, row_group_size=part.num_rows)

    def close(self) -> Path:
        """Finish the file (its footer) and return its path; the file stays until `cleanup`."""
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None
        return self.path

    def cleanup(self) -> None:
        self.close()
        self._dir.cleanup()
