"""Which container a path holds and its reader: files by suffix (or magic bytes), folders of files, and
`save_to_disk` directories. Every reader returns a RawRows stream; nothing is parsed until it is read."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

from data_quality.ingest.containers import GZIP_MAGIC, PARQUET_MAGIC, RawRows, read_csv, read_jsonl
from data_quality.ingest.json_array import read_json
from data_quality.ingest.options import IngestOptions
from data_quality.ingest.tables import read_hf_dir, read_parquet

FileReader = Callable[[Path, str, IngestOptions], RawRows]
FILE_READERS: dict[str, FileReader] = {
    "jsonl": read_jsonl,
    "json": read_json,
    "parquet": read_parquet,
    "csv": read_csv,
}
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
             ".csv": "csv", ".tsv": "csv"}


def container_of(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    suffix = Path(name).suffix
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    head = path.open("rb").read(4)
    if head[:2] == GZIP_MAGIC:
        head = zlib.decompressobj(wbits=31).decompress(path.read_bytes()[:4096])[:4]
    if head == PARQUET_MAGIC:
        return "parquet"
    if head.lstrip()[:1] in (b"[", b"{"):
        return "json"
    raise ValueError(f"{path}: unknown file format (expected .jsonl, .json, .parquet, .csv, optionally .gz, "
                     "or a datasets directory)")


def read_path(path: str | Path, opts: IngestOptions) -> list[RawRows]:
    """Every source inside `path`: one for a file, one per split for a datasets directory, one per data file
    for a plain directory. The source name is the absolute path."""
    p = Path(path)
    source = str(p.absolute())
    if not p.exists():
        raise FileNotFoundError(f"{source}: no such file or directory")
    if p.is_dir():
        if (p / "state.json").exists() or (p / "dataset_dict.json").exists():
            return read_hf_dir(p, source, opts)
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                       and Path(f.name.lower().removesuffix(".gz")).suffix in _SUFFIXES)
        if not files:
            raise ValueError(f"{source}: directory holds no data files (.jsonl/.json/.parquet/.csv[.gz])")
        return [rows for f in files for rows in read_path(f, opts)]
    # An empty file is marked `broken` once its stream is read (RawRows): rows are not counted up front.
    return [FILE_READERS[container_of(p)](p, source, opts)]
