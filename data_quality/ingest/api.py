"""`ingest_files`: read sources, detect or apply a format, and account for every input row."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from data_quality.ingest import alpaca_eval, hh, multi_completion, trl
from data_quality.ingest._common import Collector
from data_quality.ingest.containers import RawRows, read_path
from data_quality.ingest.options import IngestOptions
from storage.schema import PAIR_SCHEMA, QUARANTINE_SCHEMA, REJECTS_SCHEMA

Reader = Callable[[RawRows, IngestOptions], Collector]

READERS: dict[str, Reader] = {
    "hh": hh.read_hh,
    "alpaca_eval": alpaca_eval.read_alpaca_eval,
    "trl_standard": trl.read_trl_standard,
    "trl_conversational": trl.read_trl_conversational,
    "multi_completion": multi_completion.read_multi_completion,
}

# Checked in order on each sampled row; the first match votes for that format.
DETECTORS: list[tuple[str, Callable[[dict], bool]]] = [
    ("alpaca_eval", alpaca_eval.looks_like),
    ("multi_completion", multi_completion.looks_like),
    ("hh", hh.looks_like),
    ("trl_conversational", trl.looks_conversational),
    ("trl_standard", trl.looks_standard),
]
FORMATS = tuple(READERS)


@dataclass
class IngestResult:
    pairs: pa.Table
    quarantine: pa.Table
    rejects: pa.Table
    input_rows: int
    per_source: list[dict] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {"input_rows": self.input_rows, "kept": self.pairs.num_rows, "rejected": self.rejects.num_rows,
                "quarantined": self.quarantine.num_rows}


def detect_format(rows: RawRows, opts: IngestOptions) -> str | None:
    """The format most of the first parsed rows look like; None when no row parsed at all."""
    votes: Counter[str] = Counter()
    sample = [r for _, r in rows.records[: opts.detect_rows] if isinstance(r, dict)]
    if not sample:
        return None
    for rec in sample:
        for name, matches in DETECTORS:
            if matches(rec):
                votes[name] += 1
                break
    if not votes:
        keys = sorted({k for rec in sample[:5] for k in rec})
        hint = " (AlpacaEval model outputs: use multi_completion_from_model_outputs)" if "output" in keys else ""
        raise ValueError(f"{rows.source}: cannot detect the preference format from columns {keys}{hint}; "
                         f"pass format= one of {list(FORMATS)}")
    return votes.most_common(1)[0][0]


def ingest_files(paths: Sequence[str | Path], format: str | None = None,
                 options: IngestOptions | None = None) -> IngestResult:
    """Read every path into one pair table plus rejects and quarantine.

    Raises on whole-file failures (missing file, unknown container or format, unreadable Parquet) naming the
    file; row-level problems never raise, they are quarantined with source, source_row, field and error.
    """
    opts = options or IngestOptions()
    if format is not None and format not in READERS:
        raise ValueError(f"unknown format {format!r}; choose one of {list(FORMATS)}")
    if isinstance(paths, str | Path):
        paths = [paths]
    pairs, rejects, quarantine = [], [], []
    per_source: list[dict] = []
    formats: dict[str, str] = {}
    for path in paths:
        for rows in read_path(path, opts):
            fmt = format or detect_format(rows, opts)
            if fmt is None:  # nothing parsed: every row is already in the container's quarantine
                out = Collector(rows, opts)
                fmt = "unknown"
            else:
                out = READERS[fmt](rows, opts)
            formats[rows.source] = fmt
            pairs.append(out.pairs())
            rejects.append(out.rejects())
            quarantine.append(out.quarantined())
            kept, rejected, quarantined = out.counts
            per_source.append({"source": rows.source, "container": rows.container, "format": fmt,
                               "records": rows.n_rows, "input_rows": kept + rejected + quarantined,
                               "kept": kept, "rejected": rejected, "quarantined": quarantined})
    result = IngestResult(
        pairs=pa.concat_tables(pairs) if pairs else PAIR_SCHEMA.empty_table(),
        rejects=pa.concat_tables(rejects) if rejects else REJECTS_SCHEMA.empty_table(),
        quarantine=pa.concat_tables(quarantine) if quarantine else QUARANTINE_SCHEMA.empty_table(),
        input_rows=sum(s["input_rows"] for s in per_source),
        per_source=per_source,
        formats=formats,
    )
    _check_accounting(result, opts)
    return result


def _check_accounting(res: IngestResult, opts: IngestOptions) -> None:
    c = res.counts
    if c["input_rows"] != c["kept"] + c["rejected"] + c["quarantined"]:
        raise AssertionError(f"ingest lost rows: {c}")
    for s in res.per_source:
        # Only all-pairs binarisation turns one record into several pairs; everything else is one to one.
        expands = s["format"] == "multi_completion" and opts.pairing == "all_above_margin"
        if not expands and s["input_rows"] != s["records"]:
            raise AssertionError(f"ingest lost rows in {s['source']}: {s}")
