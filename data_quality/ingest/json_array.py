"""JSON array containers, streamed element by element: numpy finds the top-level element boundaries piece by
piece, so neither the file nor its decompressed text is ever held whole."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson

from data_quality.ingest.containers import RawRows, _decompressed, _q, raw_of, read_jsonl
from data_quality.ingest.options import IngestOptions

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
    out.records = _array_records(itertools.chain([head], pieces), lead, problem, source, opts, out)
    return out


def _array_records(pieces: Iterator[bytes], lead: int, problem: list[str], source: str, opts: IngestOptions,
                   out: RawRows) -> Iterator[tuple[int, object]]:
    """The elements of a JSON array whose first piece starts at '['; `n` counts rows (parsed or quarantined)."""
    quarantine = out.quarantine
    scan = _Scan()
    elem, size, offset = bytearray(), 0, lead  # size counts an element's bytes even once it is no longer kept
    opened = closed = False
    tail = b""
    n = 0

    def add(part: bytes, in_str: bool = False) -> None:
        nonlocal elem, size
        if not in_str and part.isspace():  # padding between tokens (no quote in it) is not the element's text
            return
        size += len(part)
        if size > opts.max_line_bytes:
            elem = bytearray()
        else:
            elem += part

    def finish(last: bool, part: bytes) -> tuple[int, object] | None:
        nonlocal elem, size, n
        if size:
            add(part)
            raw = bytes(elem).strip()
        else:  # the common case, an element inside one piece: no copy into `elem`
            raw = part.strip()
            size = len(raw)
        item = None
        if size > opts.max_line_bytes:
            error = f"element is over the max_line_bytes limit of {opts.max_line_bytes} bytes ({size} bytes)"
            quarantine.append(_q(source, n, None, error, None))
        elif raw:
            try:
                item = (n, _parse_element(raw))
            except ValueError as exc:
                quarantine.append(_q(source, n, None, str(exc), raw_of(raw, opts.max_raw_chars)))
        elif not last or n:  # `[]` holds no element; `[1,,2]` and `[1,]` hold an empty one
            quarantine.append(_q(source, n, None, "invalid JSON: empty array element", None))
        else:
            n -= 1  # no row at all
        n += 1
        elem, size = bytearray(), 0
        return item

    for piece in pieces:
        cuts, depth = scan.cuts(piece)
        start = 0
        for p, d in zip(cuts.tolist(), depth.tolist(), strict=True):
            if closed:
                break
            if opened:
                closed = d == 0
                item = finish(closed, piece[start:p])
                if item is not None:
                    yield item
            opened, start = True, p + 1
        if closed:
            tail = tail or piece[start:].strip()
        else:
            add(piece[start:], scan.in_str)
        offset += len(piece)
    if problem or not closed:
        where = f"inside element {n}" if opened else "before the array starts"
        cause = problem[0].split(";")[0] if problem else "the JSON array is never closed"
        out.broken = (f"{source}: truncated file, refused (a broken download?): {cause}; the text ends "
                      f"at byte {offset} {where}")
        raw = raw_of(bytes(elem), opts.max_raw_chars) if elem.strip() else None
        quarantine.append(_q(source, n, None, f"truncated file: {cause} at byte {offset}", raw))
        return
    if tail:
        quarantine.append(_q(source, n, None, "content after the array's closing ']'",
                             raw_of(tail, opts.max_raw_chars)))
