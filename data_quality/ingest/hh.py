"""Anthropic HH-RLHF: {"chosen", "rejected"}, each a whole "\\n\\nHuman: ...\\n\\nAssistant: ..." dialogue.

The prompt is the shared prefix up to and including the last "\\n\\nAssistant:" marker; the answers are what
follows it. Only the double-newline markers delimit turns: the real data has "Human:" inside turns (39 rows of
the harmless test split), which stays content. Rows whose dialogues differ before the final assistant turn
(5 rows of that split) have no single prompt and are quarantined.
"""

from __future__ import annotations

import re

from data_quality.ingest._common import (
    Collector,
    RowError,
    check_text,
    common_prefix_len,
    run_rows,
    text_field,
)
from data_quality.ingest.containers import RawRows
from data_quality.ingest.options import IngestOptions

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def _normalise_start(text: str, name: str) -> str:
    # Some HH derivatives strip the leading blank line; put it back so every turn has the same marker.
    if text.startswith(HUMAN):
        return text
    stripped = text.lstrip()
    if stripped.startswith("Human:"):
        return "\n\n" + stripped
    raise RowError(name, "dialogue does not start with a 'Human:' turn")


def _split(text: str, name: str) -> tuple[str, str]:
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        raise RowError(name, "has no '\\n\\nAssistant:' turn marker")
    cut += len(ASSISTANT)
    answer = text[cut:]
    if HUMAN in answer:
        raise RowError(name, "dialogue ends with a Human turn after the last Assistant turn")
    return text[:cut], answer[1:] if answer.startswith(" ") else answer


def parse_prompt(prefix: str) -> list[dict]:
    """"\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:" -> user/assistant/user messages."""
    parts = _TURN.split(prefix)
    # parts = ["", "Human", " a", "Assistant", " b", ..., "Assistant", ""]: drop the empty head and the open
    # final assistant turn.
    return [{"role": _ROLE[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 2, 2)]


def _diverge_error(pc: str, pr: str) -> RowError:
    k = common_prefix_len(pc, pr)
    turn = pc[:k].count(HUMAN) + pc[:k].count(ASSISTANT)
    return RowError("rejected", f"chosen and rejected dialogues differ before the final assistant turn "
                                f"(first difference at character {k}, in turn {turn + 1}), so there is no "
                                "shared prompt")


def _handle(out: Collector, row: int, rec: dict) -> None:
    opts = out.opts
    chosen = _normalise_start(text_field(rec.get("chosen"), "chosen", opts), "chosen")
    rejected = _normalise_start(text_field(rec.get("rejected"), "rejected", opts), "rejected")
    pc, ac = _split(chosen, "chosen")
    pr, ar = _split(rejected, "rejected")
    if pc != pr:
        raise _diverge_error(pc, pr)
    check_text(ac, "chosen", opts, scan=False)
    check_text(ar, "rejected", opts, scan=False)
    out.keep(row, parse_prompt(pc), ac, ar)


def read_hh(rows: RawRows, opts: IngestOptions) -> Collector:
    return run_rows(rows, opts, _handle)


def looks_like(rec: dict) -> bool:
    c, r = rec.get("chosen"), rec.get("rejected")
    return (isinstance(c, str) and isinstance(r, str) and "prompt" not in rec
            and ASSISTANT in c and "Human:" in c[:200])
