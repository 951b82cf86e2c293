"""Multi-completion rows (UltraFeedback style): a prompt plus scored completions, binarised into pairs by a
named rule.

Row shape: {"prompt" | "instruction": str or messages, "completions": [{"response" | "text" | "output",
"model", "score" | "overall_score" | "rating"}]}. Completions without a score or with empty text are skipped;
a row needs two usable completions. Rules (IngestOptions.pairing):
- best_vs_worst: highest score vs lowest score.
- best_vs_random: highest score vs a seeded random completion scored strictly lower (by min_margin, if set).
- all_above_margin: every pair of completions; the higher-scored one is chosen. One record then yields
  n(n-1)/2 candidate pairs and each candidate pair counts as one input row in the accounting.
A candidate whose scores tie goes to rejects (rule `ingest_tie`); one whose margin is below min_margin goes to
rejects (rule `ingest_margin`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from data_quality.ingest._common import (
    Collector,
    RowError,
    get,
    label,
    maybe_json_list,
    messages_field,
    run_rows,
    text_field,
    user_prompt,
)
from data_quality.ingest.containers import RawRows
from data_quality.ingest.options import IngestOptions

TEXT_KEYS = ("response", "text", "output", "content", "completion")
SCORE_KEYS = ("score", "overall_score", "rating")
TIE_RULE = "ingest_tie"
MARGIN_RULE = "ingest_margin"


@dataclass(frozen=True)
class Completion:
    text: str
    score: float
    model: str | None
    source: str | None = None
    row: int | None = None


def _score(c: dict, where: str, opts: IngestOptions) -> float | None:
    keys = (opts.score_key,) if opts.score_key else SCORE_KEYS
    for k in keys:
        v = c.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise RowError(f"{where}.{k}", f"expected a number, got {type(v).__name__}")
        try:
            s = float(v)
        except ValueError:
            raise RowError(f"{where}.{k}", f"cannot parse {v!r} as a number") from None
        if not math.isfinite(s):
            raise RowError(f"{where}.{k}", f"{v!r} is not a finite number")
        return s
    return None


def parse_completions(value: object, opts: IngestOptions) -> list[Completion]:
    value = maybe_json_list(value, "completions")
    if not isinstance(value, list):
        raise RowError("completions", f"expected a list, got {type(value).__name__}")
    usable = []
    for i, c in enumerate(value):
        where = f"completions[{i}]"
        if not isinstance(c, dict):
            raise RowError(where, f"expected an object, got {type(c).__name__}")
        score = _score(c, where, opts)
        key = next((k for k in TEXT_KEYS if c.get(k) is not None), None)
        if score is None or key is None or (isinstance(c[key], str) and not c[key].strip()):
            continue  # unscored or empty: not evidence for either side
        text = text_field(c[key], f"{where}.{key}", opts)
        usable.append(Completion(text, score, label(c.get("model"))))
    if len(usable) < 2:
        raise RowError("completions", f"needs at least 2 scored, non-empty completions; has {len(usable)}")
    return usable


def _pair(out: Collector, row: int, prompt: list[dict], hi: Completion, lo: Completion) -> None:
    opts = out.opts
    margin = hi.score - lo.score
    ev = {"chosen_score": hi.score, "rejected_score": lo.score, "chosen_model": hi.model,
          "rejected_model": lo.model}
    if hi.source is not None:
        ev["source"] = hi.source
        row = hi.row if hi.row is not None else row
    params = {"pairing": opts.pairing, "min_margin": opts.min_margin}
    if margin == 0:
        out.reject(TIE_RULE, f"scores tie at {hi.score:g}", params, row, prompt, hi.text, lo.text, **ev)
    elif margin < opts.min_margin:
        out.reject(MARGIN_RULE, f"score margin {margin:g} is below min_margin {opts.min_margin:g}", params, row,
                   prompt, hi.text, lo.text, **ev)
    else:
        out.keep(row, prompt, hi.text, lo.text, **ev)


def binarise(out: Collector, row: int, prompt: list[dict], comps: list[Completion]) -> None:
    """Turn scored completions into candidate pairs by the configured rule (validated before any output)."""
    opts = out.opts
    # Stable sort: among equal scores the earlier completion wins, so results do not depend on hash order.
    ranked = sorted(comps, key=lambda c: -c.score)
    best = ranked[0]
    if opts.pairing == "best_vs_worst":
        _pair(out, row, prompt, best, ranked[-1])
    elif opts.pairing == "best_vs_random":
        lower = [c for c in ranked if c.score < best.score]
        eligible = [c for c in lower if best.score - c.score >= opts.min_margin]
        if eligible:
            # Seeded per row (string seeds hash deterministically), so reruns and parallel runs agree.
            rng = random.Random(f"{opts.seed}:{out.source}:{row}")
            _pair(out, row, prompt, best, rng.choice(eligible))
        else:
            _pair(out, row, prompt, best, lower[0] if lower else ranked[1])
    else:
        for i in range(len(comps)):
            for j in range(i + 1, len(comps)):
                a, b = comps[i], comps[j]
                hi, lo = (a, b) if a.score >= b.score else (b, a)
                _pair(out, row, prompt, hi, lo)


def prompt_of(rec: dict, opts: IngestOptions) -> list[dict]:
    name, value = get(rec, "prompt", "instruction")
    if isinstance(value, list):
        return messages_field(value, name, opts)
    return user_prompt(text_field(value, name, opts))


def handle_row(out: Collector, row: int, rec: dict) -> None:
    prompt = prompt_of(rec, out.opts)
    binarise(out, row, prompt, parse_completions(rec.get("completions"), out.opts))


def read_multi_completion(rows: RawRows, opts: IngestOptions) -> Collector:
    return run_rows(rows, opts, handle_row)


def looks_like(rec: dict) -> bool:
    c = rec.get("completions")
    return isinstance(c, list) or (isinstance(c, str) and c.lstrip().startswith("["))
