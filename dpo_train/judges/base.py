"""The judge interface: score a table of (prompt, response) rows, record which judge and version did it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import xxhash

from storage.schema import hash_text, render_messages
from storage.templates import Labels, row_labels


class Judge:
    """A judge maps rows with `prompt` (chat messages) and `response` to one float score per row.

    Subclasses are dataclasses (their fields are the judge's settings) and set `kind`, the registry key.
    """

    kind: ClassVar[str] = ""
    # Each source's plain-template turn labels (storage.templates.snapshot_turn_labels of the snapshot the
    # prompts come from; make_judge sets it). A judge that feeds a prompt to a model without a chat template
    # renders each row with its `source`'s labels, the prompt text `dpo train` and `dpo export` use.
    labels_by_source: Mapping[str, Labels] | None = None

    @property
    def version(self) -> str:
        """Identifies weights/code/settings; two scores are comparable only under the same version."""
        raise NotImplementedError

    @property
    def label(self) -> str:
        """The value of the pair table's `judge` column: kind and version."""
        return f"{self.kind}:{self.version}"

    def score(self, table: pa.Table) -> np.ndarray:
        raise NotImplementedError

    def turn_labels(self, table: pa.Table) -> list[Labels | None]:
        """The plain-template turn labels of each row of `table`, from its `source` column (None: defaults)."""
        sources = table.column("source").to_pylist() if "source" in table.column_names else None
        return row_labels(sources, self.labels_by_source, table.num_rows)

    def compare(self, prompts: Sequence[list[dict]], a: Sequence[str], b: Sequence[str],
                sources: Sequence[str | None] | None = None) -> np.ndarray:
        """P(a preferred over b) per row, in [0, 1]. Pointwise judges compare their two scores (tie: 0.5).
        `sources`: the prompts' sources, which pick their turn labels (see `labels_by_source`)."""
        n = len(prompts)
        cols = {"prompt": list(prompts) * 2, "response": list(a) + list(b)}
        if sources is not None:
            cols["source"] = list(sources) * 2
        s = self.score(pa.table(cols))
        return np.where(s[:n] > s[n:], 1.0, np.where(s[:n] < s[n:], 0.0, 0.5))


def check_rows(table: pa.Table) -> None:
    missing = [c for c in ("prompt", "response") if c not in table.column_names]
    if missing:
        raise ValueError(f"a judge needs columns 'prompt' and 'response'; missing {missing}")


def prompt_id_column(table: pa.Table) -> list[str]:
    if "prompt_id" in table.column_names:
        return table.column("prompt_id").to_pylist()
    return [hash_text(render_messages(m)) for m in table.column("prompt").to_pylist()]


def fingerprint_files(paths: Sequence[Path], extra: str = "") -> str:
    """Short content hash of files (weights, config): the version of a model-backed judge."""
    h = xxhash.xxh3_64()
    h.update(extra.encode())
    for p in sorted(paths):
        h.update(p.name.encode())
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:12]


def fingerprint_model_dir(path: str | Path, extra: str = "") -> str:
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"model directory not found: {d}")
    files = [p for p in d.iterdir() if p.suffix == ".safetensors" or p.name == "config.json"]
    if not any(p.suffix == ".safetensors" for p in files):
        raise FileNotFoundError(f"{d} holds no .safetensors weights (only safetensors checkpoints are loaded)")
    return fingerprint_files(files, extra)


def score_table(table: pa.Table, judge: Judge) -> pa.Table:
    """`table` plus `score` (float64), `judge` (kind:version) and `judge_version` columns."""
    check_rows(table)
    scores = np.asarray(judge.score(table), dtype=np.float64)
    if scores.shape != (table.num_rows,):
        raise RuntimeError(f"judge {judge.kind!r} returned {scores.shape} scores for {table.num_rows} rows")
    out = table
    for name, arr in (("score", pa.array(scores, pa.float64(), from_pandas=True)),
                      ("judge", pa.array([judge.label] * table.num_rows, pa.string())),
                      ("judge_version", pa.array([judge.version] * table.num_rows, pa.string()))):
        if name in out.column_names:
            out = out.set_column(out.schema.get_field_index(name), name, arr)
        else:
            out = out.append_column(name, arr)
    return out


def seeded_unit(seed: int, *keys: Any) -> float:
    """A uniform number in [0, 1) fixed by a seed and keys, independent of call order."""
    key = "\x1f".join([str(seed), *map(str, keys)])
    return xxhash.xxh3_64_intdigest(key.encode()) / 2.0**64
