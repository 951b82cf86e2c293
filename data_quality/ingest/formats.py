"""The format registry: each source layout's row handler and the field test that detects it.

Detection is per row, in registry order: a layout whose fields are a superset of another's comes first
(UltraFeedback's annotated completions before generic multi-completion rows; LLaMA-Factory's alpaca and
ShareGPT layouts before HH and TRL, whose `chosen`/`rejected` strings they also have).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from data_quality.ingest import alpaca_eval, chat, hh, multi_completion, pairwise, ranked, trl
from data_quality.ingest._common import RowHandler

MAPPED = "mapped"


@dataclass(frozen=True)
class Format:
    handle: RowHandler
    looks_like: Callable[[dict], bool]
    # looks_like can only hold for a row with at least one of these fields: detection tests only the formats a
    # row's key set allows (cached per key set), so per-row detection costs a few checks, not fourteen.
    keys: tuple[str, ...]
    # Ranked formats: under the all_above_margin rule one record becomes several candidate pairs.
    expands: bool = False


def _looks_hh(rec: dict) -> bool:
    # Wider than hh.looks_like: a broken HH row (no Assistant marker) must still be read, and quarantined, as HH
    # rather than become a TRL pair with the prompt "Human:".
    return hh.looks_like(rec) or ("prompt" not in rec and any(
        isinstance(rec.get(k), str) and rec[k].lstrip().startswith("Human:") for k in ("chosen", "rejected")))


REGISTRY: dict[str, Format] = {
    "alpaca_eval": Format(alpaca_eval._handle, alpaca_eval.looks_like, ("output_1",)),
    "ultrafeedback": Format(ranked.handle_ultrafeedback, ranked.looks_ultrafeedback, ("completions",), True),
    "multi_completion": Format(multi_completion.handle_row, multi_completion.looks_like, ("completions",), True),
    "nectar": Format(ranked.handle_nectar, ranked.looks_nectar, ("answers",), True),
    "pku_saferlhf": Format(pairwise.handle_pku, pairwise.looks_pku, ("response_0",)),
    "shp": Format(pairwise.handle_shp, pairwise.looks_shp, ("human_ref_A",)),
    "helpsteer": Format(pairwise.handle_helpsteer, pairwise.looks_helpsteer, ("response1", "response_1")),
    "chatbot_arena": Format(pairwise.handle_arena, pairwise.looks_arena, ("conversation_a",)),
    "sharegpt": Format(chat.handle_sharegpt, chat.looks_sharegpt, ("conversations", "messages")),
    "llamafactory_pair": Format(chat.handle_pair_messages, chat.looks_pair_messages, ("chosen_messages",)),
    "llamafactory_alpaca": Format(chat.handle_alpaca, chat.looks_alpaca, ("instruction",)),
    "hh": Format(hh._handle, _looks_hh, ("chosen", "rejected")),
    "trl_conversational": Format(trl.handle_conversational, trl.looks_conversational, ("chosen",)),
    "trl_standard": Format(trl.handle_standard, trl.looks_standard, ("chosen",)),
}
FORMATS = (*REGISTRY, MAPPED)


@lru_cache(maxsize=4096)
def _candidates(keys: frozenset[str]) -> tuple[tuple[str, Callable[[dict], bool]], ...]:
    return tuple((name, f.looks_like) for name, f in REGISTRY.items() if not keys.isdisjoint(f.keys))


def detect_row(rec: dict) -> str | None:
    """The first registry format whose fields this row has (None: none does)."""
    for name, looks_like in _candidates(frozenset(rec)):
        if looks_like(rec):
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
