"""Ranked and multi-rated answers, binarised into pairs by the named rule of `IngestOptions.pairing`
(best_vs_worst, best_vs_random, all_above_margin: the rules of multi_completion, one implementation).

- `nectar` (berkeley-nest/Nectar): prompt (an Anthropic-style "\\n\\nHuman: ...\\n\\nAssistant:" dialogue),
  answers [{answer, model, rank}], rank 1 best. The score is the negated rank (higher is better, as for every
  other score), so a kept pair has chosen_score -1 and rejected_score -7 under best_vs_worst; equal ranks tie.
- `ultrafeedback` (openbmb/UltraFeedback, raw): instruction, completions [{model, response, annotations:
  {helpfulness: {Rating, ...}, honesty, instruction_following, truthfulness}, fine-grained_score,
  overall_score}]. `IngestOptions.score_key` picks the score: None = fine-grained_score (the mean of the four
  aspect ratings, recomputed from the annotations when absent), "overall_score" (the critique's 1-10), or one
  aspect name. A rating of "N/A" leaves that completion unscored (out of the pairing).

Accounting is multi_completion's: one input row per record, except under all_above_margin where each
candidate pair of a record counts as one input row.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from data_quality.ingest import hh
from data_quality.ingest._common import Collector, RowError, label, text_field, user_prompt
from data_quality.ingest.multi_completion import Completion, binarise

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def _number(value: object, where: str) -> float | None:
    """A finite score, or None for the "N/A" UltraFeedback writes when an aspect does not apply."""
    if value is None or (isinstance(value, str) and value.strip().upper() in ("N/A", "")):
        return None
    if isinstance(value, bool):
        raise RowError(where, f"expected a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RowError(where, f"cannot parse {value!r} as a number") from None
    if not math.isfinite(number):
        raise RowError(where, f"{value!r} is not a finite number")
    return number


def _enough(comps: list[Completion], name: str) -> list[Completion]:
    if len(comps) < 2:
        raise RowError(name, f"needs at least 2 scored, non-empty answers; has {len(comps)}")
    return comps


def nectar_prompt(text: str) -> list[dict]:
    """Nectar's prompt is an HH dialogue ending in an open Assistant turn; plain text is one user turn."""
    body = text.rstrip()
    if hh.HUMAN.strip() not in body[:200]:
        return user_prompt(text)
    body = body if body.startswith("\n\n") else "\n\n" + body.lstrip()
    if not body.endswith(hh.ASSISTANT):
        body += hh.ASSISTANT
    prompt = hh.parse_prompt(body)
    if not prompt or prompt[-1]["role"] != "user" or not prompt[-1]["content"]:
        raise RowError("prompt", "dialogue does not end with a Human turn to answer")
    return prompt


def _objects(rec: dict, key: str) -> Iterator[tuple[str, dict]]:
    """(field path, object) for each element of the list `rec[key]`; anything else names the field."""
    items = rec.get(key)
    if not isinstance(items, list):
        raise RowError(key, f"expected a list, got {type(items).__name__}")
    for i, item in enumerate(items):
        where = f"{key}[{i}]"
        if not isinstance(item, dict):
            raise RowError(where, f"expected an object, got {type(item).__name__}")
        yield where, item


def handle_nectar(out: Collector, row: int, rec: dict) -> None:
    opts = out.opts
    prompt = nectar_prompt(text_field(rec.get("prompt"), "prompt", opts))
    comps = []
    for where, a in _objects(rec, "answers"):
        rank = _number(a.get("rank"), f"{where}.rank")
        if rank is None or not isinstance(a.get("answer"), str) or not a["answer"].strip():
            continue  # unranked or empty: not evidence for either side
        comps.append(Completion(text_field(a["answer"], f"{where}.answer", opts), -rank, label(a.get("model"))))
    binarise(out, row, prompt, _enough(comps, "answers"))


def ultrafeedback_score(c: dict, where: str, key: str | None) -> float | None:
    ann = c.get("annotations") if isinstance(c.get("annotations"), dict) else {}
    if key in ASPECTS:
        rating = ann.get(key)
        return _number(rating.get("Rating") if isinstance(rating, dict) else None, f"{where}.annotations.{key}.Rating")
    if key not in (None, "fine-grained_score"):
        return _number(c.get(key), f"{where}.{key}")
    if c.get("fine-grained_score") is not None:
        return _number(c["fine-grained_score"], f"{where}.fine-grained_score")
    ratings = [_number(a.get("Rating"), f"{where}.annotations.{k}.Rating") for k, a in ann.items()
               if k in ASPECTS and isinstance(a, dict)]
    ratings = [r for r in ratings if r is not None]
    return sum(ratings) / len(ratings) if ratings else None


def handle_ultrafeedback(out: Collector, row: int, rec: dict) -> None:
    opts = out.opts
    prompt = user_prompt(text_field(rec.get("instruction"), "instruction", opts))
    comps = []
    for where, c in _objects(rec, "completions"):
        score = ultrafeedback_score(c, where, opts.score_key)
        if score is None or not isinstance(c.get("response"), str) or not c["response"].strip():
            continue
        comps.append(Completion(text_field(c["response"], f"{where}.response", opts), score, label(c.get("model"))))
    binarise(out, row, prompt, _enough(comps, "completions"))


def looks_nectar(rec: dict) -> bool:
    return isinstance(rec.get("answers"), list) and "prompt" in rec


def looks_ultrafeedback(rec: dict) -> bool:
    comps = rec.get("completions")
    return (isinstance(comps, list) and "instruction" in rec
            and any(isinstance(c, dict) and ("annotations" in c or "fine-grained_score" in c) for c in comps))
