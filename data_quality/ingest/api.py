"""`ingest_files`: read sources, detect or apply a format, and account for every input row."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

from data_quality.ingest import hub
from data_quality.ingest._common import Collector, RowHandler, run_rows
from data_quality.ingest.containers import RawRows
from data_quality.ingest.formats import FORMATS, MAPPED, REGISTRY, detect_row, format_hint
from data_quality.ingest.options import IngestOptions
from data_quality.ingest.sources import read_path
from data_quality.ingest.spill import IngestSpill
from storage.schema import PAIR_SCHEMA, QUARANTINE_SCHEMA, REJECTS_SCHEMA

Reader = Callable[[RawRows, IngestOptions], Collector]


def _reader(handle: RowHandler) -> Reader:
    return lambda rows, opts: run_rows(rows, opts, handle)


READERS: dict[str, Reader] = {name: _reader(f.handle) for name, f in REGISTRY.items()}


class IngestError(ValueError):
    """A source whose rows all failed (a wrong or forced format, a file of non-rows); `result` holds them."""

    def __init__(self, message: str, result: IngestResult) -> None:
        super().__init__(message)
        self.result = result


class IngestResult:
    """What an ingest produced. Each output (kept pairs, rejects, quarantine) is either a table or, from
    `ingest_files`, a Parquet file written as rows were read (`pairs_file`, `rejects_file`, `quarantine_file`):
    the table attribute then reads that file on first use, and a publish given the files never holds a table."""

    def __init__(self, pairs: pa.Table | None = None, *, quarantine: pa.Table | None = None,
                 rejects: pa.Table | None = None, input_rows: int, per_source: list[dict] | None = None,
                 formats: dict[str, str] | None = None, spill: IngestSpill | None = None) -> None:
        self._tables = {"pairs": pairs, "rejects": rejects, "quarantine": quarantine}
        self._spill = spill  # owns the temporary folder of the files: deleted with this result
        self.input_rows = input_rows
        self.per_source = per_source or []
        self.formats = formats or {}

    def _file(self, name: str) -> Path | None:
        return getattr(self._spill, name).close() if self._spill is not None else None

    @property
    def pairs_file(self) -> Path | None:
        return self._file("pairs")

    @property
    def rejects_file(self) -> Path | None:
        return self._file("rejects")

    @property
    def quarantine_file(self) -> Path | None:
        return self._file("quarantine")

    def _table(self, name: str, schema: pa.Schema) -> pa.Table:
        if self._tables[name] is None:
            import pyarrow.parquet as pq

            path = self._file(name)
            self._tables[name] = pq.read_table(path) if path is not None else schema.empty_table()
        return self._tables[name]

    @property
    def pairs(self) -> pa.Table:
        return self._table("pairs", PAIR_SCHEMA)

    @property
    def rejects(self) -> pa.Table:
        return self._table("rejects", REJECTS_SCHEMA)

    @property
    def quarantine(self) -> pa.Table:
        return self._table("quarantine", QUARANTINE_SCHEMA)

    def _rows(self, name: str) -> int:
        table = self._tables[name]
        if table is None and self._spill is not None:
            return getattr(self._spill, name).rows
        return table.num_rows if table is not None else 0

    @property
    def kept_rows(self) -> int:
        return self._rows("pairs")

    @property
    def counts(self) -> dict[str, int]:
        return {"input_rows": self.input_rows, "kept": self._rows("pairs"), "rejected": self._rows("rejects"),
                "quarantined": self._rows("quarantine")}


def detect_format(rows: RawRows, opts: IngestOptions) -> str | None:
    """The format most of the first parsed rows look like; None when no row is an object at all."""
    sample = rows.peek(opts.detect_rows)
    if not sample:
        return None
    votes = Counter(f for f in map(detect_row, sample) if f is not None)
    if not votes:
        keys = sorted({k for rec in sample[:5] for k in rec})
        hint = " (AlpacaEval model outputs: use multi_completion_from_model_outputs)" if "output" in keys else ""
        raise ValueError(f"{rows.source}: cannot detect the preference format from columns {keys}{hint}; "
                         f"pass --format (one of {list(FORMATS)}) or map the columns with "
                         "--map prompt=...,chosen=...,rejected=...")
    return votes.most_common(1)[0][0]


def _per_row(default: str, used: Counter[str]) -> RowHandler:
    """Each row read by the format its fields match (rows matching none: by the file's main format, whose
    error then names the missing field), so a file mixing layouts never becomes garbage pairs."""

    def handle(out: Collector, row: int, rec: dict) -> None:
        fmt = detect_row(rec) or default
        used[fmt] += 1
        REGISTRY[fmt].handle(out, row, rec)

    return handle


def _sources(path: str | Path, opts: IngestOptions) -> list[RawRows]:
    name = hub.hub_id(str(path))
    if name is not None:
        return hub.read_hub(name)
    try:
        return read_path(path, opts)
    except RecursionError:
        raise ValueError(f"{Path(path).absolute()}: JSON nested too deeply to parse (over ~1000 levels); "
                         "this is not a file of preference rows") from None


def _read_one(rows: RawRows, format: str | None, opts: IngestOptions, sink: IngestSpill | None = None
              ) -> tuple[Collector, str, dict]:
    """One source through its reader: (collector, format name, rows per format when a file mixes them)."""
    if format == MAPPED or (format is None and opts.columns):
        from data_quality.ingest.mapping import mapped_handler

        return run_rows(rows, opts, mapped_handler(opts.columns or {}), sink), MAPPED, {}
    if format is not None:
        # Forced: every row is read as `format`, but rows whose fields say otherwise are counted for a warning.
        other: Counter[str] = Counter()
        handle = REGISTRY[format].handle

        def forced(out: Collector, row: int, rec: dict) -> None:
            seen = detect_row(rec)
            if seen is not None and seen != format:
                other[seen] += 1
            handle(out, row, rec)

        return run_rows(rows, opts, forced, sink), format, dict(other)
    main = detect_format(rows, opts)
    if main is None:  # no row is an object: each one is quarantined as such
        out = run_rows(rows, opts, lambda out, row, rec: None, sink)
        return out, "unknown", {}
    used: Counter[str] = Counter()
    out = run_rows(rows, opts, _per_row(main, used), sink)
    name = "+".join(sorted(used)) if len(used) > 1 else main
    return out, name, dict(used) if len(used) > 1 else {}


def ingest_files(paths: Sequence[str | Path], format: str | None = None,
                 options: IngestOptions | None = None, require_pairs: bool = True) -> IngestResult:
    """Read every path (file, folder of files, `save_to_disk` folder, hub id) into one pair table plus rejects
    and quarantine.

    Raises on whole-file failures (missing file, unknown container or format, unreadable Parquet) naming the
    file; row-level problems never raise, they are quarantined with source, source_row, field and error.
    With `require_pairs`, a source whose rows all end in quarantine raises IngestError (the format does not
    fit), with the top reasons and a hint of the format the rows look like, and an empty or truncated file
    raises ValueError naming it; without, such a file gives what it holds (a cut array: the rows before the
    cut, the cut itself quarantined).
    """
    opts = options or IngestOptions()
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {list(FORMATS)}")
    if format not in (None, MAPPED) and opts.columns:
        raise ValueError(f"a column map reads rows itself: drop --format {format} or use --format {MAPPED}")
    if format == MAPPED and not opts.columns:
        raise ValueError(f"--format {MAPPED} needs a column map (--map prompt=...,chosen=...,rejected=...)")
    if isinstance(paths, str | Path):
        paths = [paths]
    per_source: list[dict] = []
    fmts: dict[str, str] = {}
    failed: list[str] = []
    # Every source's kept pairs, rejects and quarantine, written as they are made: memory never holds them all.
    spill = IngestSpill()
    try:
        for path in paths:
            for rows in _sources(path, opts):
                sample = rows.peek(opts.detect_rows)  # kept for the hint: the reader releases rows as it goes
                out, fmt, used = _read_one(rows, format, opts, spill)
                out.finish()
                # An empty or truncated file is known once its stream is read; nothing of it is published.
                if require_pairs and rows.broken:
                    raise ValueError(rows.broken)
                fmts[rows.source] = fmt
                kept, rejected, quarantined = out.counts
                entry = {"source": rows.source, "container": rows.container, "format": fmt,
                         "records": rows.n_rows, "input_rows": kept + rejected + quarantined, "kept": kept,
                         "rejected": rejected, "quarantined": quarantined}
                if used and format is None:
                    entry["format_rows"] = used  # a file read row by row: rows per format
                elif used:
                    entry["rows_like"] = used  # forced, yet these rows' fields say another format
                per_source.append(entry)
                if require_pairs and quarantined and not kept and not rejected:
                    failed.append(_nothing_kept(entry, out.reasons, sample, format))
        spill.close()
    except BaseException:
        spill.cleanup()
        raise
    result = IngestResult(spill=spill, input_rows=sum(s["input_rows"] for s in per_source), per_source=per_source,
                          formats=fmts)
    _check_accounting(result, opts)
    if failed:
        raise IngestError("\n".join(failed), result)
    return result


def _nothing_kept(entry: dict, reasons: Counter[str], sample: list[dict], forced: str | None) -> str:
    top = "; ".join(f"{n} x {e}" for e, n in reasons.most_common(3))
    how = "forced" if forced else "detected"
    return (f"{entry['source']}: format {entry['format']!r} ({how}) kept none of {entry['input_rows']} rows; "
            f"top reasons: {top}. {format_hint(sample, entry['format'])}")


def _check_accounting(res: IngestResult, opts: IngestOptions) -> None:
    c = res.counts
    if c["input_rows"] != c["kept"] + c["rejected"] + c["quarantined"]:
        raise AssertionError(f"ingest lost rows: {c}")
    for s in res.per_source:
        # Only all-pairs binarisation of ranked formats turns one record into several pairs.
        expands = opts.pairing == "all_above_margin" and any(
            REGISTRY[f].expands for f in s["format"].split("+") if f in REGISTRY)
        if not expands and s["input_rows"] != s["records"]:
            raise AssertionError(f"ingest lost rows in {s['source']}: {s}")


