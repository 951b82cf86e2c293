"""Row access on chunked (e.g. memory-mapped) columns that never copies a whole column.

Arrow's take on a chunked string column (pyarrow 26) first concatenates every chunk into one array: taking
five rows of a memory-mapped 2 GB answer column copies 2 GB. `take_rows` takes from each chunk only the rows
that lie in it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def take_rows(col: pa.ChunkedArray | pa.Array, rows: np.ndarray) -> pa.Array:
    """col.take(rows) (same values, same order), touching only the chunks that hold the rows."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(col, pa.Array):
        return col.take(pa.array(rows))
    if rows.size == 0 or col.num_chunks == 0:
        return pa.array([], type=col.type) if rows.size == 0 else col.take(pa.array(rows))  # take raises the error
    order = np.argsort(rows, kind="stable")
    srt = rows[order]
    if srt[0] < 0 or srt[-1] >= len(col):
        return col.take(pa.array(rows))  # out of range: Arrow's own error
    starts = np.cumsum([0] + [len(c) for c in col.chunks])
    chunk = np.searchsorted(starts, srt, side="right") - 1
    cuts = np.flatnonzero(np.diff(chunk)) + 1
    pieces = [col.chunk(int(chunk[s[0]])).take(pa.array(srt[s] - starts[chunk[s[0]]]))
              for s in np.split(np.arange(srt.size), cuts)]
    out = pa.concat_arrays(pieces)
    if np.all(order[1:] > order[:-1]):  # rows were ascending
        return out
    back = np.empty_like(order)
    back[order] = np.arange(order.size)
    return out.take(pa.array(back))
