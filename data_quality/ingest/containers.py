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
import json
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson
import pyarrow as pa

from data_quality.ingest.options import IngestOptions

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"
_CHUNK = 1 << 20


class QuarantineLog(list):
    """A source's quarantined rows in read order: the container appends parse failures, the reader validation
    failures. With a `spill` (a callable taking a list of rows) held rows are handed to it every `flush_rows`,
    so a file of millions of bad rows holds a few thousand. `total` counts every row ever appended, `unparsed`
    those the container could not parse, and `reasons` the leading text of each error (for the message when a
    whole source fails)."""

    flush_rows = 5_000
    _MAX_REASONS = 1_000

    def __init__(self) -> None:
        super().__init__()
        self.spill: Callable[[list[dict]], None] | None = None
        self.spilled = 0
        self.reasons: Counter[str] = Counter()
        self.last: dict | None = None  # the last row appended, even once spilled
        self.unparsed = 0

    @property
    def total(self) -> int:
        return self.spilled + len(self)

    def append(self, row: dict) -> None:
        super().append(row)
        self.last = row
        self.unparsed += row.get("stage") == "parse"
        reason = str(row.get("error") or "")[:160]
        if reason in self.reasons or len(self.reasons) < self._MAX_REASONS:
            self.reasons[reason] += 1
        if self.spill is not None and len(self) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if self.spill is not None and len(self):
            rows = list(self)
            self.clear()
            self.spilled += len(rows)
            self.spill(rows)


class RawRows:
    """What a container yields: a stream of parsed rows with their index, read once, plus rows that failed to
    parse (filled as the stream is read). `peek` buffers the first rows for format detection; `n_rows` and
    `broken` are final once the stream is exhausted, so a file's size never decides what memory holds."""

    def __init__(self, source: str, container: str, records: Iterable[tuple[int, object]] = ()) -> None:
        self.source, self.container = source, container
        self.quarantine = QuarantineLog()
        # Why the whole file is unusable (empty, an array cut short): ingest refuses it unless told to keep
        # what it can.
        self.broken: str | None = None
        self._stream: Iterator[tuple[int, object]] = iter(records)
        self._head: list[tuple[int, object]] = []  # read from the stream, not yet handed out
        self._seen = 0

    @property
    def records(self) -> list[tuple[int, object]]:
        """Every row not yet handed out, as a list: reads the rest of the stream into memory (tests, small
        sources); ingest itself iterates the RawRows instead."""
        self._head.extend(self._pull())
        return list(self._head)

    @records.setter
    def records(self, rows: Iterable[tuple[int, object]]) -> None:
        self._stream, self._head = iter(rows), []

    @property
    def n_rows(self) -> int:
        return self._seen + self.quarantine.unparsed

    def _pull(self) -> Iterator[tuple[int, object]]:
        for item in self._stream:
            self._seen += 1
            yield item
        if not self.n_rows and self.broken is None:  # an empty or cut download must not pass as 0 rows
            self.broken = f"{self.source}: no rows (the {self.container} file is empty)"

    def peek(self, limit: int) -> list[dict]:
        """The first `limit` rows that are objects (fewer if the source has fewer), kept for the real pass."""
        out = [r for _, r in self._head if isinstance(r, dict)][:limit]
        pull = self._pull()
        while len(out) < limit:
            item = next(pull, None)
            if item is None:
                break
            self._head.append(item)
            if isinstance(item[1], dict):
                out.append(item[1])
        return out

    def __iter__(self) -> Iterator[tuple[int, object]]:
        """Every row once: the buffered ones, then the rest of the stream (each released once handed out)."""
        head, self._head = deque(self._head), []
        while head:
            yield head.popleft()
        yield from self._pull()


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
    out.records = _jsonl_records(path, source, opts, out.quarantine)
    return out


def _jsonl_records(path: Path, source: str, opts: IngestOptions, quarantine: QuarantineLog
                   ) -> Iterator[tuple[int, object]]:
    problem: list[str] = []
    last = -1
    for i, line, size in iter_lines(path, opts.max_line_bytes, problem):
        last = i
        if line is None:
            error = f"line is over the max_line_bytes limit of {opts.max_line_bytes} bytes ({size} bytes seen)"
            quarantine.append(_q(source, i, None, error, None))
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            error = _bad_bytes_error(line) or f"invalid JSON: {exc}"
            if problem and size < 0:
                error = f"{problem[0]} (last line is incomplete: {error})"
            quarantine.append(_q(source, i, None, error, raw_of(line, opts.max_raw_chars)))
            continue
        yield i, value
    prev = quarantine.last
    if problem and not (prev is not None and prev["source_row"] == last and prev["error"].startswith(problem[0])):
        quarantine.append(_q(source, last + 1, None, problem[0], None))


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
    """CSV or TSV, streamed in 1 MiB batches by Arrow; when Arrow refuses the file (ragged rows, bad bytes, a
    cut gzip) the csv module reads it again, also streamed, from the first row Arrow did not hand out, so each
    bad row costs only itself."""
    sep = "\t" if path.name.lower().removesuffix(".gz").endswith(".tsv") else ","
    out = RawRows(source, "csv")
    out.records = _csv_records(path, source, sep, opts, out.quarantine)
    return out


def _csv_records(path: Path, source: str, sep: str, opts: IngestOptions, quarantine: QuarantineLog
                 ) -> Iterator[tuple[int, object]]:
    problem: list[str] = []
    done = 0  # rows Arrow handed out: the csv module's pass resumes after them
    try:
        for batch in _csv_batches(path, sep, problem):
            for rec in batch.to_pylist():
                yield done, rec
                done += 1
        if not problem:
            return
    except (pa.ArrowException, OSError):
        pass
    problem = []
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
            if idx >= done:
                quarantine.append(_q(source, idx, None, f"invalid CSV: {exc}", None))
            continue
        if not cells:
            idx -= 1
            continue
        if idx < done:
            continue
        if len(cells) != len(header):
            error = f"row has {len(cells)} cells but the header has {len(header)}"
            quarantine.append(_q(source, idx, None, error, clip(sep.join(cells), opts.max_raw_chars)))
            continue
        yield idx, dict(zip(header, cells, strict=True))
    if problem:
        quarantine.append(_q(source, idx, None, problem[0], None))


def _q(source: str, row: int, fld: str | None, error: str, raw: str | None) -> dict:
    return {"source": source, "source_row": row, "field": fld, "error": safe_text(error), "raw": raw,
            "stage": "parse"}
