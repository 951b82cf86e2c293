"""Best-of-n data from per-model output files (AlpacaEval `model_outputs/<model>.json`: {instruction, output,
generator}): outputs are grouped by instruction across files and binarised like multi-completion rows.

Accounting: one input row per instruction group (or per candidate pair under `all_above_margin`), plus one per
file row that could not be read or validated. A kept pair's source/source_row are those of its chosen output.
Scores: by default the output's length in characters, a deliberately crude proxy (it encodes exactly the
length bias the quality gate measures); pass `scores` for real ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa

from data_quality.ingest._common import Collector, RowError, label, run_rows, text_field, user_prompt
from data_quality.ingest.api import IngestResult
from data_quality.ingest.containers import RawRows
from data_quality.ingest.multi_completion import Completion, binarise
from data_quality.ingest.options import IngestOptions
from data_quality.ingest.sources import read_path

ScoreFn = Callable[[str, str, str], float | None]
Scores = Mapping[tuple[str, str], float] | ScoreFn


def length_score(instruction: str, output: str, generator: str) -> float:
    return float(len(output))


def _scorer(scores: Scores | None) -> ScoreFn:
    if scores is None:
        return length_score
    if callable(scores):
        return scores
    table = scores
    return lambda instruction, output, generator: table.get((instruction, generator))


def multi_completion_from_model_outputs(paths: Sequence[str | Path], scores: Scores | None = None,
                                        options: IngestOptions | None = None) -> IngestResult:
    """Group model outputs by instruction and binarise each group with `options.pairing`.

    `scores` is None (length proxy), a mapping {(instruction, generator): score}, or a function
    (instruction, output, generator) -> score | None; an output without a score is left out of its group.
    """
    opts = options or IngestOptions()
    score = _scorer(scores)
    groups: dict[str, list[Completion]] = {}
    first_seen: dict[str, tuple[str, int]] = {}
    bad: list[Collector] = []
    per_source: list[dict] = []

    for path in paths:
        for rows in read_path(path, opts):
            default_model = Path(rows.source).name.split(".")[0]

            def collect(out: Collector, row: int, rec: dict, rows: RawRows = rows, model: str = default_model) -> None:
                instruction = text_field(rec.get("instruction"), "instruction", opts)
                output = text_field(rec.get("output"), "output", opts)
                generator = label(rec.get("generator")) or model
                s = score(instruction, output, generator)
                if s is None:
                    raise RowError("score", f"no score for generator {generator!r} on this instruction")
                groups.setdefault(instruction, []).append(
                    Completion(output, float(s), generator, rows.source, row))
                first_seen.setdefault(instruction, (rows.source, row))

            out = run_rows(rows, opts, collect)
            bad.append(out)
            per_source.append({"source": rows.source, "container": rows.container, "format": "model_outputs",
                               "records": rows.n_rows, "quarantined": out.counts[2]})

    pairs_out = Collector(RawRows("model_outputs", "grouped"), opts)
    for instruction, comps in groups.items():
        source, row = first_seen[instruction]
        if len(comps) < 2:
            pairs_out.bad_row(row, {"instruction": instruction, "generators": [c.model for c in comps]},
                              RowError("output", "only one model answered this instruction; need 2 to pair"),
                              source=source)
            continue
        binarise(pairs_out, row, user_prompt(instruction), comps)

    quarantine = pa.concat_tables([c.quarantined() for c in [*bad, pairs_out]])
    pairs, rejects = pairs_out.pairs(), pairs_out.rejects()
    return IngestResult(pairs=pairs, quarantine=quarantine, rejects=rejects,
                        input_rows=pairs.num_rows + rejects.num_rows + quarantine.num_rows,
                        per_source=per_source, formats={s["source"]: "model_outputs" for s in per_source})
