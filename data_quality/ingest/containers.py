"""Containers: turn a file (JSONL, JSON array, Parquet, CSV, gzip'd or not, or a Hugging Face `save_to_disk`
directory) into parsed rows, quarantining what cannot be parsed without losing the rest of the file.

Row numbering (`source_row`): JSONL uses the 0-based line number (so `sed -n` finds it; blank lines are not
rows), a JSON array the element index, CSV the data-row index (header excluded), Parquet and datasets the row
index.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
    # Why the whole file is unusable (empty, an array cut short): ingest refuses it unless told to keep what it can.
    broken: str | None = None

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


# Byte classes for the array splitter: everything else maps to 0, so one translate() and one nonzero() find them.
_QUOTE, _BSLASH, _OPEN, _CLOSE, _COMMA = 1, 2, 3, 4, 5
_CLASS = bytearray(256)
for _chars, _cls in ((b'"', _QUOTE), (b"\\", _BSLASH), (b"[{", _OPEN), (b"]}", _CLOSE), (b",", _COMMA)):
    for _b in _chars:
        _CLASS[_b] = _cls
_CLASS = bytes(_CLASS)


class _Scan:
    """Where a JSON array's top-level elements end, piece by piece: numpy finds the quotes no odd run of
    backslashes escapes (string state) and the brackets outside strings (depth), so no Python loop runs per
    byte and only the state below crosses piece boundaries."""

    def __init__(self) -> None:
        self.in_str = False
        self.odd_bs = False  # the previous piece ended inside an odd run of backslashes
        self.depth = 0

    def cuts(self, piece: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(positions, depth after) of every `[ ] { } ,` outside strings in `piece`, updating the state."""
        a = np.frombuffer(piece.translate(_CLASS), np.uint8)
        pos = np.flatnonzero(a)
        cls = a[pos]
        q = pos[cls == _QUOTE]
        bs = pos[cls == _BSLASH]
        carry, self.odd_bs = self.odd_bs, False
        if bs.size:
            # Runs of backslashes; a quote right after a run of odd length is escaped (a run at the start of
            # the piece continues one from the last piece).
            first = np.r_[True, np.diff(bs) != 1]
            last = np.r_[first[1:], True]
            length = bs[last] - bs[first] + 1
            length[0] += carry and bs[0] == 0
            odd_end = bs[last][length % 2 == 1]
            self.odd_bs = bool(odd_end.size and odd_end[-1] == a.size - 1)
            if q.size:
                q = q[~np.isin(q - 1, odd_end)]
        if carry and q.size and q[0] == 0:  # the last piece's odd run escapes this quote
            q = q[1:]
        keep = cls >= _OPEN
        s, c = pos[keep], cls[keep]
        in_str = (np.searchsorted(q, s) + self.in_str) % 2 == 1
        self.in_str = bool((q.size + self.in_str) % 2)
        s, c = s[~in_str], c[~in_str]
        delta = (c == _OPEN).astype(np.int64) - (c == _CLOSE)
        depth = self.depth + np.cumsum(delta)
        if depth.size:
            self.depth = int(depth[-1])
        # Element boundaries: a comma at array level (depth 1), the array's opening and its closing bracket.
        top = ((c == _COMMA) & (depth == 1)) | ((delta == 1) & (depth == 1)) | ((delta == -1) & (depth == 0))
        return s[top], depth[top]


def _parse_element(raw: bytes) -> object:
    """One element as the whole-file parse would give it; bytes that are not UTF-8 become lone surrogates
    (as in a JSON Lines row) so the row validators name the field that holds them."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit"):
            raise ValueError(f"element is nested deeper than JSON's 1024-level limit ({exc})") from None
        try:  # orjson refuses integers over 64 bits and invalid UTF-8, which json reads
            return json.loads(raw.decode("utf-8", "surrogateescape"))
        except (json.JSONDecodeError, RecursionError):
            raise ValueError(f"invalid JSON: {exc}") from None


def read_json(path: Path, source: str, opts: IngestOptions) -> RawRows:
    """A JSON array of rows, streamed element by element: memory holds one element (at most
    `opts.max_line_bytes`, over which it is quarantined before it is read whole) and a 1 MiB piece. A bad
    element costs its row; an array the file ends inside is refused: a cut file is a broken download."""
    problem: list[str] = []
    pieces = _decompressed(path, problem)
    head, lead = b"", 0
    for piece in pieces:
        head = piece.lstrip()
        lead += len(piece) - len(head)
        if head:
            break
    if head[:1] != b"[":  # many ".json" files in the wild are JSON Lines
        pieces.close()
        return read_jsonl(path, source, opts)
    out = RawRows(source, "json")
    scan = _Scan()
    elem, size, offset = bytearray(), 0, lead  # size counts an element's bytes even once it is no longer kept
    opened = closed = False
    tail = b""

    def add(part: bytes, in_str: bool = False) -> None:
        nonlocal elem, size
        if not in_str and part.isspace():  # padding between tokens (no quote in it) is not the element's text
            return
        size += len(part)
        if size > opts.max_line_bytes:
            elem = bytearray()
        else:
            elem += part

    def finish(last: bool, part: bytes) -> None:
        nonlocal elem, size
        if size:
            add(part)
            raw = bytes(elem).strip()
        else:  # the common case, an element inside one piece: no copy into `elem`
            raw = part.strip()
            size = len(raw)
        if size > opts.max_line_bytes:
            error = f"element is over the max_line_bytes limit of {opts.max_line_bytes} bytes ({size} bytes)"
            out.quarantine.append(_q(source, out.n_rows, None, error, None))
        elif raw:
            try:
                out.records.append((out.n_rows, _parse_element(raw)))
            except ValueError as exc:
                out.quarantine.append(_q(source, out.n_rows, None, str(exc), raw_of(raw, opts.max_raw_chars)))
        elif not last or out.n_rows:  # `[]` holds no element; `[1,,2]` and `[1,]` hold an empty one
            out.quarantine.append(_q(source, out.n_rows, None, "invalid JSON: empty array element", None))
        elem, size = bytearray(), 0

    for piece in itertools.chain([head], pieces):
        cuts, depth = scan.cuts(piece)
        start = 0
        for p, d in zip(cuts.tolist(), depth.tolist(), strict=True):
            if closed:
                break
            if opened:
                closed = d == 0
                finish(closed, piece[start:p])
            opened, start = True, p + 1
        if closed:
            tail = tail or piece[start:].strip()
        else:
            add(piece[start:], scan.in_str)
        offset += len(piece)
    if problem or not closed:
        where = f"inside element {out.n_rows}" if opened else "before the array starts"
        cause = problem[0].split(";")[0] if problem else "the JSON array is never closed"
        out.broken = (f"{source}: truncated file, refused (a broken download?): {cause}; the text ends "
                      f"at byte {offset} {where}")
        raw = raw_of(bytes(elem), opts.max_raw_chars) if elem.strip() else None
        out.quarantine.append(_q(source, out.n_rows, None, f"truncated file: {cause} at byte {offset}", raw))
        return out
    if tail:
        out.quarantine.append(_q(source, out.n_rows, None, "content after the array's closing ']'",
                                 raw_of(tail, opts.max_raw_chars)))
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


class _PieceReader(io.RawIOBase):
    """A file object over `_decompressed` pieces, so the CSV readers stream (gzip'd or not) like JSON Lines."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces, self._buf = pieces, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001 - a writable buffer
        if not self._buf:
            self._buf = next(self._pieces, b"")
        n = min(len(b), len(self._buf))
        b[:n], self._buf = self._buf[:n], self._buf[n:]
        return n


def _csv_batches(path: Path, sep: str, problem: list[str]) -> Iterator[pa.RecordBatch]:
    """Arrow's streaming CSV reader, every column read as text (empty cells null, as polars reads them)."""
    import pyarrow.csv as pcsv

    def open_(types: dict | None) -> pcsv.CSVStreamingReader:
        stream = io.BufferedReader(_PieceReader(_decompressed(path, problem)), _CHUNK)
        return pcsv.open_csv(stream, read_options=pcsv.ReadOptions(block_size=_CHUNK),
                             parse_options=pcsv.ParseOptions(delimiter=sep),
                             convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=True,
                                                                 null_values=[""], quoted_strings_can_be_null=False))

    names = open_(None).schema.names  # the header; a reader with every column typed as text reads the rows
    yield from open_(dict.fromkeys(names, pa.string()))


def _text_lines(path: Path, problem: list[str]) -> Iterator[str]:
    """Decoded lines with their endings (the csv module joins quoted newlines), bad bytes as surrogates."""
    dec = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    rest = ""
    for piece in _decompressed(path, problem):
        lines = (rest + dec.decode(piece)).splitlines(keepends=True)
        rest = lines.pop() if lines and not lines[-1].endswith(("\n", "\r")) else ""
        yield from lines
    if rest := rest + dec.decode(b"", final=True):
        yield rest


def read_csv(path: Path, source: str, opts: IngestOptions) -> RawRows:
    """CSV or TSV, streamed in 1 MiB batches by Arrow; a file Arrow refuses (ragged rows, bad bytes, a cut
    gzip) is read again by the csv module, also streamed, so each bad row costs only itself."""
    sep = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
    out = RawRows(source, "csv")
    problem: list[str] = []
    try:
        for batch in _csv_batches(path, sep, problem):
            out.records.extend(enumerate(batch.to_pylist(), start=len(out.records)))
        if not problem:
            return out
    except (pa.ArrowException, OSError):
        pass
    out.records, problem = [], []
    reader = csv.reader(_text_lines(path, problem), delimiter=sep)
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
    if problem:
        out.quarantine.append(_q(source, idx, None, problem[0], None))
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
    rows = FILE_READERS[container_of(p)](p, source, opts)
    if not rows.n_rows:  # an empty or cut download must not pass as a dataset of 0 rows
        rows.broken = f"{source}: no rows (the {rows.container} file is empty)"
    return [rows]
