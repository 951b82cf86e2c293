"""Normalisation builds comparison keys, never the published text.

Published text is the text the source wrote: an answer's indentation, its runs of spaces and a line that
happens to start with "User:" are content (a Python answer, an example log). What two sources may legitimately
differ in without a reader seeing a different text - unicode composition, line endings, zero-width characters,
trailing spaces, runs of blank lines - is folded into a *key*. Keys give the ids (`pair_id` hashes the
normalised prompt + chosen + rejected, `prompt_id` the normalised prompt) and are what dedup, contradictions
and near-identical compare. Format-specific clean-up (HH's role markers) belongs to that format's reader.
Never drops a row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from storage.schema import MESSAGE_TYPE, with_ids

from .base import CheckResult, Decision, apply

RULE = "normalise"
_IDS = ["prompt_id", "pair_id"]
# The answers' keys, carried from normalise to the later checks so each check does not rebuild them: null where
# the key is the text itself (most rows), so they cost a few bytes a row. `conform` drops them from the output.
KEY_COLUMNS = {"chosen": "_key_chosen", "rejected": "_key_rejected"}


@dataclass(frozen=True)
class NormaliseConfig:
    enabled: bool = True
    unicode_form: str | None = "NFC"  # NFC | NFKC | NFD | NFKD | None
    collapse_whitespace: bool = True  # in keys only: line endings, odd spaces, trailing spaces, blank-line runs

    def __post_init__(self) -> None:
        if self.unicode_form not in (None, "NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"normalise.unicode_form must be NFC/NFKC/NFD/NFKD or null, not {self.unicode_form!r}")


DEFAULT = NormaliseConfig()
_ODD_SPACE = r"[\x0b\x0c\xa0\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
_DIRTY = (r"\r|[\u200b\ufeff\u200c\u200d]|" + _ODD_SPACE
          + r"|[^\S\n]\n|\S[^\S\n]{2,}|\n\n\n")


def key_text(arr: pa.Array | pa.ChunkedArray, cfg: NormaliseConfig = DEFAULT) -> pa.Array:
    """The comparison key of each text: unicode form, then whitespace a reader cannot see.

    Leading indentation is kept (it is content in code and in ASCII art); a run of spaces inside a line
    becomes one space, trailing spaces and runs of 3+ newlines go, and the ends are stripped.
    """
    # 64-bit offsets: joining a column's chunks into one 32-bit string array fails past 2 GiB of text
    # ("input array too large", seen at 1.6M rows).
    arr = arr.cast(pa.large_string())
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    # Most texts are their own key. Only those a fold could change are folded and put back in place, so a
    # clean column costs one scan, not three copies of its text (each of them fresh pages to fault in).
    todo = _may_change(arr, cfg)
    if not todo.any():
        return arr
    mask = pa.array(todo)
    return pc.replace_with_mask(arr, mask, _fold(arr.filter(mask), cfg))


def _may_change(arr: pa.Array, cfg: NormaliseConfig) -> np.ndarray:
    """Texts whose key may differ from them: non-ASCII (a unicode form can rewrite only those), anything the
    rewrite passes of `_fold` match, whitespace at either end (`\\s` is the White_Space set strip_chars uses)."""
    todo = np.zeros(len(arr), dtype=bool)
    if cfg.unicode_form:
        todo |= ~pc.string_is_ascii(arr).fill_null(True).to_numpy(zero_copy_only=False)
    if cfg.collapse_whitespace:
        todo |= pl.Series(arr).str.contains(_DIRTY + r"|^\s|\s$").fill_null(False).to_numpy()
    return todo


def _fold(arr: pa.Array, cfg: NormaliseConfig) -> pa.Array:
    """The key of every text of `arr` (large_string)."""
    if cfg.unicode_form:
        arr = pc.utf8_normalize(arr, form=cfg.unicode_form)
    if not cfg.collapse_whitespace:
        return arr
    s = pl.Series(arr).rechunk()
    # One scan finds the texts with anything to fold; only those pay for the rewrite passes. The ends are
    # stripped everywhere (strip is cheap).
    dirty = s.str.contains(_DIRTY).fill_null(False)
    if dirty.any():
        fixed = (s.filter(dirty)
                 .str.replace_all(r"\r\n?", "\n")
                 .str.replace_all("[\u200b\ufeff\u200c\u200d]", "")
                 .str.replace_all(_ODD_SPACE, " ")
                 .str.replace_all(r"[^\S\n]+\n", "\n")
                 .str.replace_all(r"(\S)[^\S\n]{2,}", "${1} ")
                 .str.replace_all(r"\n{3,}", "\n\n"))
        s = s.scatter(np.flatnonzero(dirty.to_numpy()), fixed)
    return s.str.strip_chars().to_arrow().cast(pa.large_string())


def answer_key(table: pa.Table, side: str) -> pa.Array | pa.ChunkedArray:
    """The default-config key of the `side` answer of each row: the carried key column where normalise left one
    (`KEY_COLUMNS`), else built now. Equal to `key_text(table.column(side))` either way."""
    name = KEY_COLUMNS[side]
    if name not in table.column_names:
        return key_text(table.column(side))
    text = table.column(side).cast(pa.large_string())
    return pc.coalesce(table.column(name), text)


def _differs(key: pa.Array, text: pa.ChunkedArray) -> np.ndarray:
    return (pl.Series(key) != pl.Series(text).cast(pl.String)).fill_null(True).to_numpy()


def _only_where(key: pa.Array, differs: np.ndarray) -> pa.Array:
    """`key` where `differs`, null elsewhere, built by a take from those keys plus one null: the data holds only
    their bytes (masking the whole key array would keep every key's bytes behind the nulls)."""
    few = pa.concat_arrays([key.filter(pa.array(differs)), pa.nulls(1, pa.large_string())])
    return few.take(pa.array(np.where(differs, np.cumsum(differs) - 1, len(few) - 1)))


def _key_prompt(col: pa.ChunkedArray, cfg: NormaliseConfig) -> pa.ChunkedArray:
    """Chunk by chunk: combining the prompt column would join its message text into one 32-bit string array."""
    fields = [MESSAGE_TYPE.field("role"), pa.field("content", pa.large_string())]
    out = []
    for chunk in col.chunks:
        values = chunk.flatten()  # respects slicing, so offsets must be rebased to 0
        offsets = pc.subtract(chunk.offsets, chunk.offsets[0])
        struct = pa.StructArray.from_arrays([values.field("role"), key_text(values.field("content"), cfg)],
                                            fields=fields)
        out.append(pa.ListArray.from_arrays(offsets, struct, mask=chunk.is_null()))
    return pa.chunked_array(out, pa.list_(pa.struct(fields)))


def key_table(table: pa.Table, cfg: NormaliseConfig = DEFAULT) -> pa.Table:
    """prompt/chosen/rejected as keys (plus prompt_text rendered from the key prompt): what ids hash."""
    return pa.table({"prompt": _key_prompt(table.column("prompt"), cfg),
                     "chosen": key_text(table.column("chosen"), cfg),
                     "rejected": key_text(table.column("rejected"), cfg)})


def run(table: pa.Table, cfg: NormaliseConfig) -> CheckResult:
    if table.num_rows == 0:
        return apply(table, Decision.keep_all(0), RULE, cfg)
    keys = key_table(table, cfg)
    answers = {side: keys.column(side).combine_chunks() for side in KEY_COLUMNS}  # one chunk each: no copy
    differs = {side: _differs(key, table.column(side)) for side, key in answers.items()}
    stats: dict[str, int] = {f"{side}_key_differs": int(d.sum()) for side, d in differs.items()}
    old_ids = table.column("pair_id").to_numpy(zero_copy_only=False) if "pair_id" in table.column_names else None
    # with_ids builds Python objects per row; slices keep that transient memory bounded, and the id columns
    # are joined back into single chunks. The text columns of `table` are left exactly as they came.
    parts = [with_ids(keys.slice(lo, 50_000)).select(_IDS) for lo in range(0, keys.num_rows, 50_000)]
    added = {name: pa.concat_arrays([c for p in parts for c in p.column(name).chunks]) for name in _IDS}
    # Later checks compare default-config keys; only those are carried (other settings: each check builds them).
    if cfg == DEFAULT:
        added.update({KEY_COLUMNS[side]: _only_where(answers[side], differs[side]) for side in KEY_COLUMNS})
    for name, arr in added.items():
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    table = table.combine_chunks()
    if old_ids is not None:
        stats["pair_id_changed"] = int(np.sum(old_ids != table.column("pair_id").to_numpy(zero_copy_only=False)))
    return apply(table, Decision.keep_all(table.num_rows, stats), RULE, cfg)
