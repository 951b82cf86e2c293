"""An ingest's outputs written to disk as they are made: kept pairs, rejects and quarantine, each one Parquet file
(zstd, row groups of <= 32 MB) in one temporary folder, so memory holds one row group of each whatever the
input's size or how many of its rows fail. The snapshot publish places pairs.parquet as it is and streams the
other two into the snapshot (storage/publish.py) instead of building tables."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.errors import Writing
from storage.schema import PAIR_SCHEMA, QUARANTINE_SCHEMA, REJECTS_SCHEMA, conform


def _disk(path: Path) -> Writing:
    """'No space left on device' while spilling: DiskFullError naming the spill file and $TMPDIR."""
    return Writing(path, "it is the ingest's spill under TMPDIR; nothing was published (free space there, or point "
                         "TMPDIR at a disk with room, and retry)")


class TableSpill:
    """Append-only Parquet file of one schema."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int = 20_000,
                 row_group_bytes: int = 32 << 20) -> None:
        # A row group is written once either bound is reached: few row groups, and at most ~32 MB of Arrow
        # waiting (about 10k AlpacaEval-shaped rows), whatever the row size.
        self.path, self.schema = path, schema
        self.row_group_rows, self.row_group_bytes = row_group_rows, row_group_bytes
        self._pending: list[pa.Table] = []
        self._pending_rows = self._pending_bytes = 0
        self.rows = 0
        with _disk(path):
            self._writer: pq.ParquetWriter | None = pq.ParquetWriter(path, schema, compression="zstd")

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            raise ValueError(f"the ingest spill {self.path.name} is closed")
        if table.num_rows:
            self._pending.append(conform(table, self.schema))
            self._pending_rows += table.num_rows
            self._pending_bytes += table.nbytes
            self.rows += table.num_rows
        if self._pending_rows >= self.row_group_rows or self._pending_bytes >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._writer is not None and self._pending_rows:
            part = pa.concat_tables(self._pending)
            self._pending, self._pending_rows, self._pending_bytes = [], 0, 0
            with _disk(self.path):
                self._writer.write_table(part, row_group_size=part.num_rows)

    def close(self) -> Path:
        """Finish the file (its footer) and return its path; the file stays until its folder is removed."""
        if self._writer is not None:
            self._flush()
            with _disk(self.path):
                self._writer.close()
            self._writer = None
        return self.path


class IngestSpill:
    """The three spills of one ingest in their own temporary folder (under `folder`, default $TMPDIR), deleted
    with this object or by `cleanup`."""

    def __init__(self, folder: str | Path | None = None, **sizes: int) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="dpo-ingest-", dir=folder)
        root = Path(self._dir.name)
        self.pairs = TableSpill(root / "pairs.parquet", PAIR_SCHEMA, **sizes)
        self.rejects = TableSpill(root / "rejects.parquet", REJECTS_SCHEMA, **sizes)
        self.quarantine = TableSpill(root / "quarantine.parquet", QUARANTINE_SCHEMA, **sizes)

    def close(self) -> None:
        for spill in (self.pairs, self.rejects, self.quarantine):
            spill.close()

    def cleanup(self) -> None:
        try:
            self.close()
        finally:
            self._dir.cleanup()
