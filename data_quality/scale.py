"""Real-shaped data from real rows: copies with small edits (scale series) and planted near-duplicates.

Benchmarks and tests judge the gate on data shaped like real preference collections (many pairs per prompt,
one reference answer shared by many pairs), so they start from real rows and only add small, seeded edits.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from data_quality.checks.text import shingles, tokens
from storage.schema import conform, with_ids


def insert_word(texts: pa.ChunkedArray | pa.Array, word: str, rng: np.random.Generator) -> pa.Array:
    """Each text with `word` inserted at a random space (or appended when it has none): a one-word edit."""
    s = pl.Series(texts).fill_null("")
    spaces = s.str.count_matches(" ", literal=True).to_numpy()
    nth = (rng.random(s.len()) * (spaces + 1)).astype(np.int64)  # insert before the nth space (== end if nth = n)
    df = pl.DataFrame({"w": s.str.split(" "), "k": nth, "n": spaces + 1})
    head = pl.col("w").list.head(pl.col("k")).list.join(" ")
    tail = pl.col("w").list.slice(pl.col("k")).list.join(" ")
    out = df.select(pl.when(pl.col("k") == 0).then(pl.lit(word + " ") + tail)
                    .when(pl.col("k") >= pl.col("n")).then(head + pl.lit(" " + word))
                    .otherwise(head + pl.lit(" " + word + " ") + tail)).to_series()
    return out.to_arrow().cast(pa.large_string())


def edited_copy(pairs: pa.Table, copy: int, seed: int = 0) -> pa.Table:
    """A copy of `pairs` whose chosen or rejected answer (one per row, at random) has one word inserted."""
    rng = np.random.default_rng([seed, copy])
    t = conform(pairs)
    side = rng.random(t.num_rows) < 0.5
    word = f"edit{copy}"
    for name, mask in (("chosen", side), ("rejected", ~side)):
        col = pl.Series(t.column(name).combine_chunks())
        edited = pl.Series(insert_word(col.to_arrow(), word, rng))
        new = pl.select(pl.when(pl.Series(mask)).then(edited).otherwise(col)).to_series()
        t = t.set_column(t.schema.get_field_index(name), name, new.to_arrow().cast(pa.string()))
    src = (pl.Series(t.column("source")) + f"#copy{copy}").to_arrow().cast(pa.string())
    t = t.set_column(t.schema.get_field_index("source"), "source", src)
    return with_ids(t)


def tagged_sets(table: pa.Table, fields: tuple[str, ...], ngram: int) -> list[set]:
    """Per row, the field-tagged shingle set near_dup compares (a slow reference for tests and benchmarks)."""
    out: list[set] = [set() for _ in range(table.num_rows)]
    for k, name in enumerate(fields):
        h, row = shingles(*tokens(pl.Series(table.column(name))), ngram)
        for r, x in zip(row.tolist(), h.tolist(), strict=True):
            out[r].add((k, x))
    return out
