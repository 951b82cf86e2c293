"""Shared by the format readers: field validation and the collector that turns accepted rows into the pair
table, label ties into rejects and invalid rows into quarantine."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable

import pyarrow as pa

from data_quality.ingest.containers import RawRows, raw_of, safe_text
from data_quality.ingest.options import IngestOptions
from data_quality.ingest.spill import IngestSpill
from storage.schema import REJECTS_SCHEMA, build_pair_table, quarantine_table, rejects_table

ROLES = frozenset({"system", "user", "assistant", "tool"})
# NUL breaks C-string consumers (tokenizers, terminals); lone surrogates are bytes that were not UTF-8.
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
_EVIDENCE = ("chosen_score", "rejected_score", "preference_prob", "chosen_model", "rejected_model", "judge")


class RowError(ValueError):
    """A row that cannot become a pair; `field` names the offending source field."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(f"field {field!r}: {message}" if field else message)
        self.field = field


def text_field(value: object, name: str, opts: IngestOptions) -> str:
    """A non-empty string within the size limit, without NUL or undecodable bytes."""
    if value is None:
        raise RowError(name, "is missing or null")
    if not isinstance(value, str):
        raise RowError(name, f"expected a string, got {type(value).__name__}")
    check_text(value, name, opts)
    return value


def check_text(value: str, name: str, opts: IngestOptions, allow_empty: bool = False, scan: bool = True) -> None:
    """`scan=False` skips the NUL/encoding/size scan for a substring of text already scanned."""
    if not allow_empty and not value.strip():
        raise RowError(name, "is empty" if not value else "is whitespace only")
    if not scan:
        return
    # Encoding costs a copy, so only strings that could be too large pay for it.
    if len(value) * 4 > opts.max_field_bytes:
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > opts.max_field_bytes:
            raise RowError(name, f"is {size} bytes, over the max_field_bytes limit of {opts.max_field_bytes}")
    # isascii() is O(1) in CPython, so the regex only runs on non-ASCII text, the only kind with surrogates.
    bad = value.find("\x00") if value.isascii() else _first_bad(value)
    if bad >= 0:
        what = "a NUL character" if value[bad] == "\x00" else "bytes that are not valid UTF-8"
        raise RowError(name, f"contains {what} at character {bad}")


def _first_bad(value: str) -> int:
    m = _BAD_CHARS.search(value)
    return m.start() if m else -1


def get(rec: dict, *names: str) -> tuple[str, object]:
    """The first present key among `names` (aliases), else a missing-field error naming them all."""
    for n in names:
        if n in rec and rec[n] is not None:
            return n, rec[n]
    raise RowError(names[0], "is missing" + (f" (also looked for {list(names[1:])})" if len(names) > 1 else ""))


def maybe_json_list(value: object, name: str) -> object:
    """CSV cells and some exports hold lists as JSON text."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(name, f"holds text that looks like a JSON list but does not parse: {exc.msg}") from exc
    return value


def messages_field(value: object, name: str, opts: IngestOptions) -> list[dict]:
    """A list of {role, content} chat messages with known roles and text content."""
    value = maybe_json_list(value, name)
    if not isinstance(value, list):
        raise RowError(name, f"expected a list of {{role, content}} messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise RowError(where, f"expected a {{role, content}} object, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise RowError(f"{where}.role", f"unknown role {role!r}; expected one of {sorted(ROLES)}")
        content = m.get("content")
        if not isinstance(content, str):
            raise RowError(f"{where}.content", f"expected a string, got {type(content).__name__}")
        check_text(content, f"{where}.content", opts, allow_empty=role != "assistant")
        out.append({"role": role, "content": content})
    return out


def label(value: object) -> str | None:
    """A free-text label (model or judge name): never rejects a row, only made storable."""
    return None if value is None else safe_text(str(value))


def user_prompt(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


_FLUSH_ROWS = 5_000


class Collector:
    """Accumulates one source's outcome as plain column lists, turned into Arrow every `_FLUSH_ROWS` rows; with a
    `sink` (ingest's IngestSpill) kept pairs, rejects and quarantine go to disk as they are made instead of staying
    in memory, so memory holds a few thousand rows of each whatever the source's size."""

    def __init__(self, rows: RawRows, opts: IngestOptions, sink: IngestSpill | None = None) -> None:
        self.source = rows.source
        self.sink = sink
        self.opts = opts
        self.kept: dict[str, list] = {k: [] for k in ("prompt", "chosen", "rejected", "source", "source_row",
                                                      *_EVIDENCE)}
        self.dropped: dict[str, list] = {k: [] for k in (*self.kept, "rule", "reason", "params")}
        # One log per source, in read order: the container's parse failures, then (as rows are handled) ours.
        self._log = rows.quarantine
        if sink is not None:
            self._log.spill = lambda bad: sink.quarantine.write(quarantine_table(bad))
        self._kept_tables: list[pa.Table] = []
        self._reject_tables: list[pa.Table] = []
        self._kept_count = self._rejected_count = 0

    def keep(self, row: int, prompt: list[dict], chosen: str, rejected: str, **evidence: object) -> None:
        self._append(self.kept, row, prompt, chosen, rejected, evidence)
        if len(self.kept["chosen"]) >= _FLUSH_ROWS:
            # Python lists of messages and strings cost several times their Arrow size: convert as we go.
            self._flush_kept()

    def _flush_kept(self) -> None:
        table = self._table(self.kept)
        if self.sink is not None:
            self.sink.pairs.write(table)
        else:
            self._kept_tables.append(table)
        self._kept_count += len(self.kept["chosen"])
        self.kept = {k: [] for k in self.kept}

    @property
    def quarantine(self) -> list[dict]:
        """The quarantined rows still held (all of them without a sink)."""
        return list(self._log)

    @property
    def reasons(self) -> Counter[str]:
        """How many quarantined rows gave each error (its first 160 characters; the first 1,000 kinds)."""
        return self._log.reasons

    def reject(self, rule: str, reason: str, params: dict | None, row: int, prompt: list[dict], chosen: str,
               rejected: str, **evidence: object) -> None:
        cols = self.dropped
        self._append(cols, row, prompt, chosen, rejected, evidence)
        cols["rule"].append(rule)
        cols["reason"].append(reason)
        cols["params"].append(json.dumps(params, sort_keys=True) if params is not None else None)
        if len(cols["chosen"]) >= _FLUSH_ROWS:
            self._flush_rejects()

    def _flush_rejects(self) -> None:
        """The held rejects as one REJECTS_SCHEMA table, grouped by rule, to the sink or the held tables."""
        cols = self.dropped
        if not cols["chosen"]:
            return
        table = self._table(cols)
        parts = []
        for rule in sorted(set(cols["rule"])):
            idx = [i for i, r in enumerate(cols["rule"]) if r == rule]
            params = {cols["params"][i] for i in idx}
            parts.append(rejects_table(table.take(idx), rule, [cols["reason"][i] for i in idx],
                                       params.pop() if len(params) == 1 else None))
        if self.sink is not None:
            self.sink.rejects.write(pa.concat_tables(parts))
        else:
            self._reject_tables.extend(parts)
        self._rejected_count += len(cols["chosen"])
        self.dropped = {k: [] for k in cols}

    def _append(self, cols: dict[str, list], row: int, prompt: list[dict], chosen: str, rejected: str,
                evidence: dict[str, object]) -> None:
        cols["prompt"].append(prompt)
        cols["chosen"].append(chosen)
        cols["rejected"].append(rejected)
        cols["source_row"].append(row)
        # Only readers that merge files (model outputs grouped by instruction) name a per-pair source.
        cols["source"].append(evidence.get("source", self.source))
        for k in _EVIDENCE:
            cols[k].append(evidence.get(k))

    def bad_row(self, row: int, record: object, exc: Exception, source: str | None = None) -> None:
        fld = safe_text(exc.field) if isinstance(exc, RowError) and exc.field else None
        error = str(exc) if isinstance(exc, RowError) else f"invalid row ({type(exc).__name__}: {exc})"
        self._log.append({"source": source or self.source, "source_row": row, "field": fld,
                          "error": safe_text(error), "raw": raw_of(record, self.opts.max_raw_chars),
                          "stage": "validate"})

    def _table(self, cols: dict[str, list]) -> pa.Table:
        return build_pair_table({k: cols[k] for k in ("prompt", "chosen", "rejected", "source", "source_row",
                                                      *_EVIDENCE)})

    def pairs(self) -> pa.Table:
        """The kept pairs (with a sink: an empty table, the rows having gone to the sink)."""
        if self.sink is not None:
            if self.kept["chosen"]:
                self._flush_kept()
            return self._table(self.kept)
        return pa.concat_tables([*self._kept_tables, self._table(self.kept)])

    def rejects(self) -> pa.Table:
        """The rejects (with a sink: an empty table, the rows having gone to the sink)."""
        self._flush_rejects()
        if self.sink is not None or not self._reject_tables:
            return REJECTS_SCHEMA.empty_table()
        return pa.concat_tables(self._reject_tables)

    def quarantined(self) -> pa.Table:
        """The quarantine (with a sink: an empty table, the rows having gone to the sink)."""
        self._log.flush()
        return quarantine_table(self.quarantine)

    def finish(self) -> None:
        """Everything still held to the sink (the end of a source)."""
        self.pairs()
        self.rejects()
        self.quarantined()

    @property
    def counts(self) -> tuple[int, int, int]:
        return (self._kept_count + len(self.kept["chosen"]), self._rejected_count + len(self.dropped["chosen"]),
                self._log.total)


RowHandler = Callable[[Collector, int, dict], None]


def run_rows(rows: RawRows, opts: IngestOptions, handle: RowHandler, sink: IngestSpill | None = None) -> Collector:
    """Apply a per-row handler to the rows' stream (read once, each record released once handled); any failure
    of one row quarantines that row only."""
    out = Collector(rows, opts, sink)
    for row, record in rows:
        if not isinstance(record, dict):
            out.bad_row(row, record, RowError(None, f"row is a {type(record).__name__}, expected an object"))
            continue
        try:
            handle(out, row, record)
        except (RowError, TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as exc:
            out.bad_row(row, record, exc)
    return out


def common_prefix_len(a: str, b: str) -> int:
    """Length of the longest common prefix, by bisection on slices (C speed, no per-character loop)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def first_diff(items: Iterable[tuple[object, object]]) -> int:
    n = 0
    for x, y in items:
        if x != y:
            break
        n += 1
    return n
