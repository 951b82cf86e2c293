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
