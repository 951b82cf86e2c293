"""Printing results exactly: every verb's table, JSON-lines and CSV output goes through here.

Output is the data. Values are never read as markup (rich would turn `[name]` into a style, `:thumbs_up:` into
an emoji and crash on `[/]`), JSON lines are valid JSON with the text as stored (non-ASCII kept, floats in their
shortest exact form, timestamps ISO 8601), and CSV writes nested columns (lists, structs, maps) as JSON text.
The table view is for eyes: cells are literal text, but long values fold and control characters are dropped.
JSON cannot hold NaN or infinities: they print as null (DuckDB's `isnan()` finds them in SQL).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("table", "json", "csv")
_BATCH = 8192

# Data goes to stdout; messages (progress, warnings, errors) to stderr. Neither interprets markup or emoji
# codes: a message quotes file names, values and errors that may contain `[...]` or `:word:`.
out = Console(width=None if sys.stdout.isatty() else 200, markup=False, emoji=False, highlight=False)
err = Console(stderr=True, markup=False, emoji=False, highlight=False)


def message(text: str, *, style: str | None = None, label: str | None = None) -> None:
    """A line on stderr: an optional styled label (ours), then the text exactly as given."""
    line = Text()
    if label:
        line.append(label, style=style or "bold")
        line.append(" ")
    line.append(text)
    err.print(line, soft_wrap=True)


def line(text: str) -> None:
    """A line of result text on stdout, printed literally."""
    out.print(Text(text), soft_wrap=True)


# -- values ------------------------------------------------------------------------------------------------
def _default(obj: Any) -> Any:
    """What orjson cannot serialise itself: exact decimals, bytes, durations, numpy-free fallbacks."""
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj)) if obj.is_finite() else None
    if isinstance(obj, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, dt.timedelta):
        return obj.total_seconds()
    if hasattr(obj, "isoformat"):  # pandas Timestamp for nanosecond columns
        return obj.isoformat()
    return str(obj)


def _std_default(obj: Any) -> Any:
    value = _default(obj)
    return json.loads(bytes(value.contents)) if isinstance(value, orjson.Fragment) else value


def json_bytes(value: Any) -> bytes:
    """One value as compact JSON (UTF-8, non-ASCII kept)."""
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:  # integers beyond 64 bits (HUGEINT): the standard library writes them exactly
        return json.dumps(value, default=_std_default, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def cell_text(value: Any) -> str:
    """A value as one text cell: strings as they are, nested values as JSON, nulls empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    return json_bytes(value).decode("utf-8")


# -- tables --------------------------------------------------------------------------------------------------
def as_table(rows: pa.Table | Sequence[Mapping[str, Any]]) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    dicts = [dict(r) for r in rows]
    try:
        return pa.Table.from_pylist(dicts)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column of mixed types: show each value as its text
        names = list(dict.fromkeys(k for d in dicts for k in d))
        return pa.table({n: pa.array([None if d.get(n) is None else cell_text(d[n]) for d in dicts], pa.string())
                         for n in names})


def iter_json_lines(table: pa.Table) -> Iterable[bytes]:
    for batch in table.to_batches(max_chunksize=_BATCH):
        for row in batch.to_pylist():
            yield json_bytes(row) + b"\n"


def write_json(table: pa.Table, fh: IO[bytes]) -> None:
    """One JSON object per row, keys in column order."""
    for chunk in iter_json_lines(table):
        fh.write(chunk)


def _csv_column(col: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    t = col.type
    if pa.types.is_nested(t) or pa.types.is_decimal(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return pa.array([None if v is None else cell_text(v) for v in col.to_pylist()], pa.string())
    if pa.types.is_timestamp(t):  # Arrow writes "2026-01-01 01:02:03Z"; ISO 8601 has a "T"
        return pc.strftime(col, format="%Y-%m-%dT%H:%M:%S" + ("%z" if t.tz else ""))
    if pa.types.is_duration(t) or pa.types.is_interval(t):
        return pa.array([cell_text(v) for v in col.to_pylist()], pa.string())
    return col


def write_csv(table: pa.Table, fh: IO[bytes]) -> None:
    """RFC 4180 CSV with a header; strings always quoted, so an empty string ("") differs from null (nothing)."""
    if table.num_columns == 0:
        return
    first = True
    for batch in table.to_batches(max_chunksize=_BATCH):
        part = pa.table({name: _csv_column(pa.chunked_array([batch.column(i)], batch.schema.field(i).type))
                         for i, name in enumerate(batch.schema.names)})
        pacsv.write_csv(part, fh, write_options=pacsv.WriteOptions(include_header=first))
        first = False
    if first:  # no rows: still the header
        pacsv.write_csv(pa.table({n: pa.array([], pa.string()) for n in table.column_names}), fh)


def print_table(rows: pa.Table | Sequence[Mapping[str, Any]], *, title: str | None = None,
                limit: int | None = None, max_width: int = 60) -> None:
    """A rich table whose cells are literal text (no markup, no emoji codes)."""
    table = as_table(rows)
    if table.num_rows == 0:
        line("(no rows)" if title is None else f"{title}: (no rows)")
        return
    shown = table if limit is None else table.slice(0, limit)
    view = Table(title=Text(title) if title else None, show_lines=False)
    for name in shown.column_names:
        view.add_column(Text(str(name)), overflow="fold", max_width=max_width)
    for batch in shown.to_batches(max_chunksize=_BATCH):
        for row in batch.to_pylist():
            view.add_row(*(Text(cell_text(v)) for v in row.values()))
    out.print(view)
    if limit is not None and table.num_rows > limit:
        message(f"({table.num_rows} rows, showing {limit}; use --limit or --format json/csv)")


def emit(rows: pa.Table | Sequence[Mapping[str, Any]], fmt: str = "table", *, title: str | None = None,
         limit: int | None = None) -> None:
    """Print `rows` in `fmt` (table, json or csv) on stdout."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "table":
        print_table(rows, title=title, limit=limit)
        return
    out.file.flush()
    buf = sys.stdout.buffer
    if fmt == "json" and not isinstance(rows, pa.Table):  # records as they are, whatever their types
        for r in rows:
            buf.write(json_bytes(dict(r)) + b"\n")
    else:
        (write_json if fmt == "json" else write_csv)(as_table(rows), buf)
    buf.flush()
