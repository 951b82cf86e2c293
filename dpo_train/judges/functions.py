"""Small built-in scoring functions for the python judge: cheap, deterministic, good for demos and tests."""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9']+")


def prompt_overlap(prompt: list[dict], response: str) -> float:
    """Share of the last user turn's words that the answer reuses, minus a small penalty for rambling."""
    user = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
    asked = set(_WORD.findall(user.lower()))
    said = _WORD.findall(response.lower())
    if not said:
        return -1.0
    covered = len(asked & set(said)) / max(len(asked), 1)
    return covered - 0.01 * max(len(said) - 50, 0)


def answer_length(prompt: list[dict], response: str) -> float:
    """Number of words in the answer (a deliberately biased judge, for length-bias experiments)."""
    return float(len(response.split()))


# A small sentiment lexicon: the known, programmatic reward of the controlled experiment (`dpo experiment`) and
# of examples/iterate.toml. Words that real answers use often, so the reward is dense enough to move in a few
# rounds of a tiny model, like the DPO paper's sentiment task.
POSITIVE = frozenset("""good great happy glad love like nice best better well sure yes thank thanks help helpful
kind fun enjoy beautiful perfect welcome safe wonderful excellent amazing awesome friendly hope positive easy
healthy fine right interesting important useful love lovely care""".split())
NEGATIVE = frozenset("""bad sorry no not never hate wrong worst worse terrible awful sad stupid kill illegal
dangerous harm hurt cannot can't don't won't problem difficult hard pain angry afraid""".split())


def sentiment(prompt: list[dict], response: str) -> float:
    """Positive minus negative lexicon words in the answer (the prompt is ignored)."""
    words = _WORD.findall(response.lower())
    return float(sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words))
