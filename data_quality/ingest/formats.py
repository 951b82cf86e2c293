"""The format registry: each source layout's row handler and the field test that detects it.

Detection is per row, in registry order: a layout whose fields are a superset of another's comes first
(UltraFeedback's annotated completions before generic multi-completion rows; LLaMA-Factory's alpaca and
ShareGPT layouts before HH and TRL, whose `chosen`/`rejected` strings they also have).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from data_quality.ingest import alpaca_eval, chat, hh, multi_completion, pairwise, ranked, trl
from data_quality.ingest._common import RowHandler

MAPPED = "mapped"


@dataclass(frozen=True)
class Format:
    handle: RowHandler
    looks_like: Callable[[dict], bool]
    # Ranked formats: under the all_above_margin rule one record becomes several candidate pairs.
    expands: bool = False


def _looks_hh(rec: dict) -> bool:
    # Wider than hh.looks_like: a broken HH row (no Assistant marker) must still be read, and quarantined, as HH
    # rather than become a TRL pair with the prompt "Human:".
    return hh.looks_like(rec) or ("prompt" not in rec and any(
        isinstance(rec.get(k), str) and rec[k].lstrip().startswith("Human:") for k in ("chosen", "rejected")))


REGISTRY: dict[str, Format] = {
    "alpaca_eval": Format(alpaca_eval._handle, alpaca_eval.looks_like),
    "ultrafeedback": Format(ranked.handle_ultrafeedback, ranked.looks_ultrafeedback, expands=True),
    "multi_completion": Format(multi_completion.handle_row, multi_completion.looks_like, expands=True),
    "nectar": Format(ranked.handle_nectar, ranked.looks_nectar, expands=True),
    "pku_saferlhf": Format(pairwise.handle_pku, pairwise.looks_pku),
    "shp": Format(pairwise.handle_shp, pairwise.looks_shp),
    "helpsteer": Format(pairwise.handle_helpsteer, pairwise.looks_helpsteer),
    "chatbot_arena": Format(pairwise.handle_arena, pairwise.looks_arena),
    "sharegpt": Format(chat.handle_sharegpt, chat.looks_sharegpt),
    "llamafactory_pair": Format(chat.handle_pair_messages, chat.looks_pair_messages),
    "llamafactory_alpaca": Format(chat.handle_alpaca, chat.looks_alpaca),
    "hh": Format(hh._handle, _looks_hh),
    "trl_conversational": Format(trl.handle_conversational, trl.looks_conversational),
    "trl_standard": Format(trl.handle_standard, trl.looks_standard),
}
FORMATS = (*REGISTRY, MAPPED)


def detect_row(rec: dict) -> str | None:
    for name, f in REGISTRY.items():
        if f.looks_like(rec):
            return name
    return None


def format_hint(sample: list[dict], used: str) -> str:
    """What to try when a format kept nothing: the format the rows look like, else a column map."""
    votes = Counter(f for f in map(detect_row, sample) if f is not None and f != used)
    if votes:
        best, n = votes.most_common(1)[0]
        return f"Hint: {n} of the first {len(sample)} rows look like {best!r}: try --format {best} (or omit --format)."
    keys = sorted({k for rec in sample[:5] for k in rec})
    if keys:
        return (f"Hint: the rows have fields {keys}; map them with --map prompt=FIELD,chosen=FIELD,rejected=FIELD "
                "(dotted paths allowed).")
    return "Hint: no row is a JSON object; a source must hold one object per row."
