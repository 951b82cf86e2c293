"""Containers: turn a file (JSONL, JSON array, Parquet, CSV, gzip'd or not, or a Hugging Face `save_to_disk`
directory) into parsed rows, quarantining what cannot be parsed without losing the rest of the file.

Row numbering (`source_row`): JSONL uses the 0-based line number (so `sed -n` finds it; blank lines are not
rows), a JSON array the element index, CSV the data-row index (header excluded), Parquet and datasets the row
index.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa

from data_quality.ingest.options import IngestOptions

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
_CHUNK = 1 << 20


@dataclass
class RawRows:
    """What a container yields: parsed rows with their index, plus rows that failed to parse."""

    source: str
    container: str
    records: list[tuple[int, object]] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        return len(self.records) + len(self.quarantine)


def safe_text(text: str) -> str:
    """Text Arrow can store: undecodable bytes (lone surrogates) become visible \\x / \\u escapes."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "backslashreplace")
    return data.decode("utf-8", "backslashreplace")


def clip(text: str, limit: int) -> str:
    if len(text) > limit:
        text = text[:limit] + f"...[truncated: {len(text) - limit} more characters]"
    return safe_text(text)


def raw_of(value: object, limit: int) -> str:
    """A row's raw text for quarantine; bytes that are not UTF-8 are kept as \\x escapes."""
    if isinstance(value, bytes):
        return clip(value.decode("utf-8", "backslashreplace"), limit)
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    except RecursionError:  # nested deeper than Python's printers go (orjson parses up to 1024 levels)
        text = f"<a {type(value).__name__} nested too deeply to show>"
    return clip(text, limit)


def _gunzip(data: bytes) -> tuple[bytes, str | None]:
    """Decompress every gzip member; a truncated or corrupt tail keeps what came before it."""
    out: list[bytes] = []
    while data:
        dec = zlib.decompressobj(wbits=31)
        try:
            for start in range(0, len(data), _CHUNK):
                out.append(dec.decompress(data[start:start + _CHUNK]))
                if dec.eof:
                    break
            out.append(dec.flush())
        except zlib.error as exc:
            return b"".join(out), f"gzip data is corrupt ({exc}); rows after this point are lost"
        if not dec.eof:
            return b"".join(out), "gzip stream is truncated (no end-of-stream marker); rows after this point are lost"
        data = dec.unused_data
        if not data.strip(b"\x00"):
            break
    return b"".join(out), None


def _load(path: Path) -> tuple[bytes, str | None]:
    data = path.read_bytes()
    if data[:2] == GZIP_MAGIC:
        return _gunzip(data)
    return data, None


def _bad_bytes_error(line: bytes) -> str | None:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start} of the row"
    return None


def _decompressed(path: Path, problem: list[str]) -> Iterator[bytes]:
    """The file's bytes in pieces of at most 1 MiB, gunzipped on the fly (every member); a corrupt or truncated
    gzip tail ends the stream and is described in `problem`. Memory stays at a few pieces, whatever the ratio."""
    with path.open("rb") as f:
        head = f.read(2)
        f.seek(0)
        if head != GZIP_MAGIC:
            while piece := f.read(_CHUNK):
                yield piece
            return
        dec = zlib.decompressobj(wbits=31)
        data = b""
        while True:
            if not data:
                data = f.read(_CHUNK)
                if not data:
                    break
            try:
                out = dec.decompress(data, _CHUNK)  # max_length bounds the output of a gzip bomb
            except zlib.error as exc:
                problem.append(f"gzip data is corrupt ({exc}); rows after this point are lost")
                return
            data = dec.unconsumed_tail
            if out:
                yield out
            if dec.eof:  # another gzip member may follow; zero padding after the last one is ignored
                data = (dec.unused_data + data) or f.read(_CHUNK)
                if not data.strip(b"\x00"):
                    return
                dec = zlib.decompressobj(wbits=31)
        if not dec.eof:
            problem.append("gzip stream is truncated (no end-of-stream marker); rows after this point are lost")


def iter_lines(path: Path, max_line_bytes: int, problem: list[str]) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, line bytes, line size) for every non-blank line, streamed. A line over `max_line_bytes` is
    refused as soon as it passes the limit: it is yielded with None and its size, the rest of it skipped."""
    pending = bytearray()
    skipping = 0  # bytes of an oversized line seen so far (0 = not skipping)
    lineno = 0
    for piece in _decompressed(path, problem):
        parts = piece.split(b"\n")
        for k, part in enumerate(parts):
            last = k == len(parts) - 1
            if skipping:
                skipping += len(part)
            else:
                pending += part
                if len(pending) > max_line_bytes:
                    skipping = len(pending)
                    pending = bytearray()
            if last:
                break
            if skipping:
                yield lineno, None, skipping
                skipping = 0
            elif pending.strip():
                yield lineno, bytes(pending), len(pending)
            pending = bytearray()
            lineno += 1
    if skipping:
        yield lineno, None, skipping
    elif pending.strip():
        yield lineno, bytes(pending), -1  # -1: the file ended inside this line


def read_jsonl(path: Path, source: str, opts: IngestOptions) -> RawRows:
    """JSON Lines, streamed: neither the file nor its decompressed text is ever held whole, blank lines cost
    nothing, and a line over `opts.max_line_bytes` is quarantined (file, line, size) before it is read whole."""
    out = RawRows(source, "jsonl")
    problem: list[str] = []
    last = -1
    for i, line, size in iter_lines(path, opts.max_line_bytes, problem):
        last = i
        if line is None:
            error = f"line is over the max_line_bytes limit of {opts.max_line_bytes} bytes ({size} bytes seen)"
            out.quarantine.append(_q(source, i, None, error, None))
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            error = _bad_bytes_error(line) or f"invalid JSON: {exc}"
            if problem and size < 0:
                error = f"{problem[0]} (last line is incomplete: {error})"
            out.quarantine.append(_q(source, i, None, error, raw_of(line, opts.max_raw_chars)))
            continue
        out.records.append((i, value))
    if problem and not (out.quarantine and out.quarantine[-1]["source_row"] == last
                        and out.quarantine[-1]["error"].startswith(problem[0])):
        out.quarantine.append(_q(source, last + 1, None, problem[0], None))
    return out


_NEXT_OBJECT = re.compile(r"\}\s*,\s*\{")


def _salvage_array(text: str, source: str, opts: IngestOptions, out: RawRows, truncated: str | None) -> None:
    """Element by element, so one broken element costs one row; resyncs at the next '},{' (a heuristic that
    can misfire when the broken element itself holds nested objects)."""
    dec = json.JSONDecoder()
    ws = re.compile(r"\s*")
    i = ws.match(text, 0).end()
    if text[i:i + 1] != "[":
        raise ValueError(f"{source}: a JSON file must hold an array of row objects")
    i = ws.match(text, i + 1).end()
    idx = 0
    while i < len(text) and text[i] != "]":
        try:
            value, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            nxt = _NEXT_OBJECT.search(text, i)
            stop = nxt.start() + 1 if nxt else len(text)
            error = f"invalid JSON: {exc.msg} (element starting at character {i})"
            if nxt is None and truncated:
                error = f"{truncated} ({error})"
            out.quarantine.append(_q(source, idx, None, error, clip(text[i:stop], opts.max_raw_chars)))
            idx += 1
            if nxt is None:
                return
            i = nxt.end() - 1
            continue
        out.records.append((idx, value))
        idx += 1
        i = ws.match(text, end).end()
        if text[i:i + 1] == ",":
            i = ws.match(text, i + 1).end()
        elif text[i:i + 1] != "]" and i < len(text):
            nxt = _NEXT_OBJECT.search(text, i)
            if nxt is None:
                return
            i = nxt.end() - 1
    if truncated:
        out.quarantine.append(_q(source, idx, None, truncated, None))


def read_json(path: Path, source: str, opts: IngestOptions) -> RawRows:
    data, truncated = _load(path)
    stripped = data.lstrip()
    if not stripped.startswith(b"["):
        # Many ".json" files in the wild are JSON Lines.
        return read_jsonl(path, source, opts)
    out = RawRows(source, "json")
    if truncated is None:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, list):
            out.records = list(enumerate(value))
            return out
    # Slow path only for broken files: surrogateescape keeps bad bytes visible to the row validators.
    _salvage_array(data.decode("utf-8", "surrogateescape"), source, opts, out, truncated)
    return out


def _table_rows(table: pa.Table, source: str, container: str, offset: int = 0) -> RawRows:
    out = RawRows(source, container)
    out.records = list(enumerate(table.to_pylist(), start=offset))
    return out


def read_parquet(path: Path, source: str, opts: IngestOptions) -> RawRows:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{source}: cannot read Parquet file: {exc}") from exc
    return _table_rows(table, source, "parquet")


def read_csv(path: Path, source: str, opts: IngestOptions) -> RawRows:
    import polars as pl

    data, truncated = _load(path)
    sep = "\t" if path.name.removesuffix(".gz").endswith(".tsv") else ","
    if truncated is None:
        try:
            df = pl.read_csv(io.BytesIO(data), separator=sep, infer_schema=False)
            return _table_rows(df.to_arrow(), source, "csv")
        except Exception:  # noqa: BLE001 - any polars failure means: parse row by row below
            pass
    out = RawRows(source, "csv")
    reader = csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""), delimiter=sep)
    try:
        header = next(reader)
    except (StopIteration, csv.Error) as exc:
        raise ValueError(f"{source}: CSV file has no readable header row") from exc
    idx = -1
    while True:
        idx += 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            out.quarantine.append(_q(source, idx, None, f"invalid CSV: {exc}", None))
            continue
        if not cells:
            idx -= 1
            continue
        if len(cells) != len(header):
            error = f"row has {len(cells)} cells but the header has {len(header)}"
            out.quarantine.append(_q(source, idx, None, error, clip(sep.join(cells), opts.max_raw_chars)))
            continue
        out.records.append((idx, dict(zip(header, cells, strict=True))))
    if truncated:
        out.quarantine.append(_q(source, idx, None, truncated, None))
    return out


def read_hf_dir(path: Path, source: str, opts: IngestOptions) -> list[RawRows]:
    """A `Dataset.save_to_disk` directory (Arrow stream shards listed in state.json), or a DatasetDict of them."""
    dict_meta = path / "dataset_dict.json"
    if dict_meta.exists():
        splits = json.loads(dict_meta.read_text())["splits"]
        return [read_hf_dir(path / s, f"{source}/{s}", opts)[0] for s in splits]
    state = json.loads((path / "state.json").read_text())
    tables = []
    for entry in state["_data_files"]:
        with pa.memory_map(str(path / entry["filename"])) as src:
            try:
                tables.append(pa.ipc.open_stream(src).read_all())
            except pa.ArrowInvalid:
                tables.append(pa.ipc.open_file(src).read_all())
    if not tables:
        return [RawRows(source, "hf_dataset")]
    return [_table_rows(pa.concat_tables(tables, promote_options="default"), source, "hf_dataset")]


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


def _q(source: str, row: int, fld: str | None, error: str, raw: str | None) -> dict:
    return {"source": source, "source_row": row, "field": fld, "error": safe_text(error), "raw": raw,
            "stage": "parse"}


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
    return [FILE_READERS[container_of(p)](p, source, opts)]
