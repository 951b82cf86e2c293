"""Normalisation: unicode form, whitespace and stray role markers, on prompt messages and both answers.

Never drops a row (empty results are the degenerate check's business), but ids are recomputed afterwards
because two sources that differ only in whitespace must hash to the same pair.
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
_IDS = ["prompt_text", "prompt_id", "pair_id"]
# A leading speaker label on an answer is an artefact of splitting dialogues (HH-RLHF style).
_LEADING_ROLE = r"^\s*(?:Assistant|AI|Bot|Answer)\s*:\s*"
# An answer that runs on into the next human turn: everything from the marker on is not the answer.
_TRAILING_TURN = r"(?s)\n+\s*(?:Human|User|H)\s*:.*$"
_TURN_MARK = r"\n\s*(?:Human|User|H)\s*:"


@dataclass(frozen=True)
class NormaliseConfig:
    enabled: bool = True
    unicode_form: str | None = "NFC"  # NFC | NFKC | NFD | NFKD | None
    collapse_whitespace: bool = True
    strip_role_markers: bool = True

    def __post_init__(self) -> None:
        if self.unicode_form not in (None, "NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"normalise.unicode_form must be NFC/NFKC/NFD/NFKD or null, not {self.unicode_form!r}")


_ODD_SPACE = r"[^\S\n]{2,}|[\t\x0b\x0c\xa0\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"


def normalise_text(arr: pa.Array | pa.ChunkedArray, cfg: NormaliseConfig) -> pa.Array:
    """Unicode form (Arrow's utf8proc, fast on ASCII) then whitespace rules (Polars' Rust regex)."""
    if cfg.unicode_form:
        arr = pc.utf8_normalize(arr, form=cfg.unicode_form)
    if not cfg.collapse_whitespace:
        return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    # Patterns only match where there is something to change, so clean text costs one scan per rule.
    # One chunk out: Arrow's take() concatenates a chunked column first, on every later check.
    s = (pl.Series(arr).rechunk()
         .str.replace_many(["\r\n", "\r", "\u200b", "\ufeff", "\u200c", "\u200d"], ["\n", "\n", "", "", "", ""])
         .str.replace_all(_ODD_SPACE, " ")
         .str.replace_all(r" \n ?|\n ", "\n")
         .str.replace_all(r"\n{3,}", "\n\n")
         .str.strip_chars())
    return s.to_arrow().cast(pa.string())


def _strip_roles(arr: pa.Array) -> tuple[pa.Array, int]:
    s = pl.Series(arr)
    out = s.str.replace(_LEADING_ROLE, "")
    tail = out.str.contains(_TURN_MARK)
    if tail.any():
        out = pl.select(pl.when(tail).then(out.str.replace(_TRAILING_TURN, "")).otherwise(out)).to_series()
    out = out.str.strip_chars()
    changed = int((out != s.str.strip_chars()).sum())
    return out.to_arrow().cast(pa.string()), changed


def _normalise_prompt(col: pa.ChunkedArray, cfg: NormaliseConfig) -> pa.ChunkedArray:
    chunks = []
    for chunk in [col.combine_chunks()]:
        values = chunk.flatten()  # respects slicing, so offsets must be rebased to 0
        offsets = pc.subtract(chunk.offsets, chunk.offsets[0])
        content = normalise_text(values.field("content"), cfg)
        struct = pa.StructArray.from_arrays([values.field("role"), content], fields=list(MESSAGE_TYPE))
        chunks.append(pa.ListArray.from_arrays(offsets, struct, mask=chunk.is_null()))
    return pa.chunked_array(chunks, type=col.type)


def run(table: pa.Table, cfg: NormaliseConfig) -> CheckResult:
    if table.num_rows == 0:
        return apply(table, Decision.keep_all(0), RULE, cfg)
    stats: dict[str, int] = {}
    before = {name: table.column(name) for name in ("chosen", "rejected")}
    for name in ("chosen", "rejected"):
        col = normalise_text(table.column(name), cfg)
        if cfg.strip_role_markers:
            col, n_roles = _strip_roles(col)
            stats[f"{name}_role_markers_stripped"] = n_roles
        stats[f"{name}_changed"] = int((pl.Series(col) != pl.Series(before[name])).sum())
        table = table.set_column(table.schema.get_field_index(name), name, col)
    table = table.set_column(table.schema.get_field_index("prompt"), "prompt",
                             _normalise_prompt(table.column("prompt"), cfg))
    old_ids = table.column("pair_id").to_numpy(zero_copy_only=False) if "pair_id" in table.column_names else None
    # with_ids builds Python objects per row; slices keep that transient memory bounded, and the id columns
    # are joined back into single chunks.
    parts = [with_ids(table.slice(lo, 50_000)).select(_IDS) for lo in range(0, table.num_rows, 50_000)]
    for name in _IDS:
        arr = pa.concat_arrays([c for p in parts for c in p.column(name).chunks])
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    table = table.combine_chunks()  # only the small columns are still chunked; the text is already one chunk
    if old_ids is not None:
        stats["pair_id_changed"] = int(np.sum(old_ids != table.column("pair_id").to_numpy(zero_copy_only=False)))
    return apply(table, Decision.keep_all(table.num_rows, stats), RULE, cfg)
