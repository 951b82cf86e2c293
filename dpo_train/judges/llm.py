"""Pairwise judgements from an OpenAI-compatible chat endpoint (e.g. a vLLM server).

LLM judges favour whichever answer is shown first. Each comparison shows the two answers in an order drawn
from the judge seed and the pair's content, so position bias averages out instead of favouring one side,
and re-running gives the same orders.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import xxhash

from dpo_train.judges.base import Judge, check_rows, prompt_id_column, seeded_unit
from storage.schema import render_messages

DEFAULT_SYSTEM = ("You are an impartial judge. Compare two assistant answers to the same conversation and decide "
                  "which one is more helpful, correct and harmless. Reply with a single letter: A or B.")
DEFAULT_TEMPLATE = ("[Conversation]\n{prompt}\n\n[Answer A]\n{a}\n\n[Answer B]\n{b}\n\n"
                    "Which answer is better? Reply with exactly one letter, A or B.")
_VERDICT = re.compile(r"\b([AB])\b")


def parse_verdict(text: str | None) -> str | None:
    """'A' or 'B' from a reply such as 'A', '[[B]]', 'Answer A.'; None when absent or both letters appear."""
    if not text:
        return None
    found = {m.group(1) for m in _VERDICT.finditer(text.upper().replace("[[", " ").replace("]]", " "))}
    return found.pop() if len(found) == 1 else None


@dataclass
class LLMPairwiseJudge(Judge):
    base_url: str  # "http://host:port" or ".../v1"
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"  # read at call time; the key itself is never recorded
    seed: int = 0
    temperature: float = 0.0
    max_tokens: int = 8
    timeout_s: float = 60.0
    max_retries: int = 2
    concurrency: int = 4
    system_prompt: str = DEFAULT_SYSTEM
    template: str = DEFAULT_TEMPLATE
    kind: ClassVar[str] = "llm_pairwise"
    stats: dict[str, int] = field(default_factory=lambda: {"calls": 0, "unparsed": 0, "swapped": 0},
                                  init=False, repr=False)

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"

    @property
    def version(self) -> str:
        prompt_hash = xxhash.xxh3_64_hexdigest((self.system_prompt + "\x1f" + self.template).encode())[:8]
        return f"{self.model}@{prompt_hash}-s{self.seed}-t{self.temperature:g}"

    def _ask(self, client: Any, prompt: str, first: str, second: str) -> str | None:
        import httpx

        body = {
            "model": self.model,
            "messages": [{"role": "system", "content": self.system_prompt},
                         {"role": "user", "content": self.template.format(prompt=prompt, a=first, b=second)}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }
        for attempt in range(self.max_retries + 1):
            try:
                resp = client.post(self.url, json=body)
                if resp.status_code == 429 or resp.status_code >= 500:
                    raise httpx.HTTPStatusError(f"status {resp.status_code}", request=resp.request, response=resp)
                resp.raise_for_status()
                return resp.json()["choices"][0]["message"]["content"]
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                retryable = not isinstance(exc, httpx.HTTPStatusError) or exc.response.status_code in (429,) \
                    or exc.response.status_code >= 500
                if attempt == self.max_retries or not retryable:
                    raise RuntimeError(f"LLM judge request to {self.url} failed: {exc}") from exc
                time.sleep(0.5 * 2**attempt)
        return None  # unreachable: the loop returns or raises

    def compare(self, prompts: Sequence[list[dict]], a: Sequence[str], b: Sequence[str],
                sources: Sequence[str | None] | None = None) -> np.ndarray:
        """P(a preferred over b) per row: 1, 0, or 0.5 when the reply names neither letter. (`sources` is not
        used: the judge's request quotes the conversation, it is not a policy's plain-template input.)"""
        import httpx

        texts = [render_messages(p) for p in prompts]
        swaps = [seeded_unit(self.seed, t, x, y) < 0.5 for t, x, y in zip(texts, a, b, strict=True)]
        headers = {}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        with httpx.Client(timeout=self.timeout_s, headers=headers) as client, \
                ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            jobs = [pool.submit(self._ask, client, t, y if s else x, x if s else y)
                    for t, x, y, s in zip(texts, a, b, swaps, strict=True)]
            replies = [j.result() for j in jobs]
        out = np.full(len(replies), 0.5)
        for i, (reply, swapped) in enumerate(zip(replies, swaps, strict=True)):
            verdict = parse_verdict(reply)
            self.stats["calls"] += 1
            self.stats["swapped"] += int(swapped)
            if verdict is None:
                self.stats["unparsed"] += 1
                continue
            first_won = verdict == "A"
            out[i] = 1.0 if first_won != swapped else 0.0
        return out

    def score(self, table: pa.Table) -> np.ndarray:
        """Per response: its mean win probability over every other answer to the same prompt (NaN if alone)."""
        check_rows(table)
        pids = prompt_id_column(table)
        prompts = table.column("prompt").to_pylist()
        responses = table.column("response").to_pylist()
        groups: dict[str, list[int]] = {}
        for i, pid in enumerate(pids):
            groups.setdefault(pid, []).append(i)
        pairs = [(i, j) for rows in groups.values() for i, j in combinations(rows, 2)]
        wins = np.zeros(len(responses))
        games = np.zeros(len(responses))
        if pairs:
            p = self.compare([prompts[i] for i, _ in pairs], [responses[i] for i, _ in pairs],
                             [responses[j] for _, j in pairs])
            for (i, j), pij in zip(pairs, p, strict=True):
                wins[i] += pij
                wins[j] += 1.0 - pij
                games[i] += 1
                games[j] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(games > 0, wins / np.maximum(games, 1), np.nan)
