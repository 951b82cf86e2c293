"""AlpacaEval pairwise annotations: instruction, output_1/generator_1, output_2/generator_2, preference,
annotator.

`preference` encodes 1 + P(output_2 preferred): 1 and 2 are hard labels, a float in between (possibly stored
as a string, e.g. "1.000039552") is a soft label. AlpacaEval itself encodes a draw as 0 (its win-rate code
counts 0 as a draw), so 0 and an exact 1.5 are label ties: they go to rejects (rule `ingest_tie`), not
quarantine, because the row is well-formed, it just carries no preference. Null or unparsable preferences are
quarantined naming the field.
"""

from __future__ import annotations

import math

from data_quality.ingest._common import Collector, RowError, get, label, run_rows, text_field, user_prompt
from data_quality.ingest.containers import RawRows
from data_quality.ingest.options import IngestOptions

TIE_RULE = "ingest_tie"


def parse_preference(value: object) -> float:
    """The preference as a float in {0} or [1, 2]; RowError naming `preference` otherwise."""
    if value is None:
        raise RowError("preference", "is null (no judgement)")
    if isinstance(value, bool):
        raise RowError("preference", f"expected a number, got bool {value!r}")
    if isinstance(value, str):
        try:
            p = float(value.strip())
        except ValueError:
            raise RowError("preference", f"cannot parse {value!r} as a number") from None
    elif isinstance(value, int | float):
        p = float(value)
    else:
        raise RowError("preference", f"expected a number, got {type(value).__name__}")
    if not math.isfinite(p) or not (p == 0 or 1 <= p <= 2):
        raise RowError("preference", f"{value!r} is outside [1, 2] (and not 0, AlpacaEval's draw)")
    return p


def _model(rec: dict, key: str) -> str | None:
    return label(rec.get(key))


def _handle(out: Collector, row: int, rec: dict) -> None:
    opts = out.opts
    _, instruction = get(rec, "instruction", "prompt")
    prompt = user_prompt(text_field(instruction, "instruction", opts))
    o1 = text_field(rec.get("output_1"), "output_1", opts)
    o2 = text_field(rec.get("output_2"), "output_2", opts)
    p = parse_preference(rec.get("preference"))
    g1, g2 = _model(rec, "generator_1"), _model(rec, "generator_2")
    judge = _model(rec, "annotator")
    if p == 0 or p == 1.5:
        reason = ("preference=0 is AlpacaEval's encoding of a draw" if p == 0
                  else "preference=1.5: both outputs equally likely preferred")
        out.reject(TIE_RULE, reason, {"preference": rec.get("preference")}, row, prompt, o1, o2,
                   preference_prob=0.5, chosen_model=g1, rejected_model=g2, judge=judge)
        return
    p2 = p - 1.0  # P(output_2 preferred)
    if p2 > 0.5:
        out.keep(row, prompt, o2, o1, preference_prob=p2, chosen_model=g2, rejected_model=g1, judge=judge)
    else:
        out.keep(row, prompt, o1, o2, preference_prob=1.0 - p2, chosen_model=g1, rejected_model=g2, judge=judge)


def read_alpaca_eval(rows: RawRows, opts: IngestOptions) -> Collector:
    return run_rows(rows, opts, _handle)


def looks_like(rec: dict) -> bool:
    return "output_1" in rec and "output_2" in rec and "preference" in rec
