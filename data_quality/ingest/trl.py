"""TRL preference data, standard (strings) and conversational (lists of {role, content}), each with an explicit
`prompt` or an implicit one (only chosen/rejected, sharing their beginning).

Conversational rows are resolved uniformly: the full conversations prompt+chosen and prompt+rejected must share
every message but the last, which must be an assistant message on both sides; its content is the answer.

A standard row may carry its prompt's messages in `prompt_messages` (what `dpo export` writes beside the rendered
`prompt`, storage.formats.PROMPT_MESSAGES): they are the prompt when rendering them with the plain template
gives exactly `prompt` (with the default or a source's own turn labels), so an export re-ingests to the same
pairs and pair ids. When they disagree (the prompt string was edited), the string is the prompt, as for any
standard row: the text TRL trains on wins.
"""

from __future__ import annotations

from data_quality.ingest._common import (
    Collector,
    RowError,
    check_text,
    common_prefix_len,
    first_diff,
    messages_field,
    run_rows,
    text_field,
    user_prompt,
)
from data_quality.ingest.containers import RawRows
from data_quality.ingest.options import IngestOptions
from storage.formats import PROMPT_MESSAGES
from storage.templates import is_plain_rendering


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Implicit prompt of two strings: the common prefix, backed off to a whitespace boundary so neither
    answer starts mid-word."""
    k = common_prefix_len(chosen, rejected)
    if k < len(chosen) or k < len(rejected):
        while k > 0 and not chosen[k - 1].isspace():
            k -= 1
    return chosen[:k], chosen[k:], rejected[k:]


def handle_standard(out: Collector, row: int, rec: dict) -> None:
    opts = out.opts
    chosen = text_field(rec.get("chosen"), "chosen", opts)
    rejected = text_field(rec.get("rejected"), "rejected", opts)
    if rec.get("prompt") is not None:
        prompt = text_field(rec["prompt"], "prompt", opts)
        if rec.get(PROMPT_MESSAGES) is not None:
            messages = messages_field(rec[PROMPT_MESSAGES], PROMPT_MESSAGES, opts)
            if is_plain_rendering(messages, prompt):
                out.keep(row, messages, chosen, rejected)
                return
    else:
        shared, chosen, rejected = split_shared_prefix(chosen, rejected)
        if not shared.strip():
            raise RowError("prompt", "is missing and chosen/rejected share no prefix to take it from")
        prompt = shared.strip()
        check_text(chosen, "chosen", opts, scan=False)
        check_text(rejected, "rejected", opts, scan=False)
    out.keep(row, user_prompt(prompt), chosen, rejected)


def conversation_pair(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    """Two whole conversations -> (shared prompt, chosen answer, rejected answer).

    They must share every message but the last, which must be an assistant message on both sides.
    """
    for name, conv in (("chosen", chosen), ("rejected", rejected)):
        if not conv or conv[-1]["role"] != "assistant":
            raise RowError(name, "must end with an assistant message (its content is the answer)")
    shared = first_diff(zip(chosen[:-1], rejected[:-1], strict=False))
    if shared != len(chosen) - 1 or shared != len(rejected) - 1:
        raise RowError("rejected", f"chosen and rejected conversations differ at message {shared}, before "
                                   "their final assistant message, so there is no shared prompt")
    if not any(m["role"] == "user" for m in chosen[:-1]):
        raise RowError("prompt", "has no user message")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def handle_conversational(out: Collector, row: int, rec: dict) -> None:
    opts = out.opts
    prompt = messages_field(rec["prompt"], "prompt", opts) if rec.get("prompt") is not None else []
    chosen = prompt + messages_field(rec.get("chosen"), "chosen", opts)
    rejected = prompt + messages_field(rec.get("rejected"), "rejected", opts)
    out.keep(row, *conversation_pair(chosen, rejected))


def read_trl_standard(rows: RawRows, opts: IngestOptions) -> Collector:
    return run_rows(rows, opts, handle_standard)


def read_trl_conversational(rows: RawRows, opts: IngestOptions) -> Collector:
    return run_rows(rows, opts, handle_conversational)


def _is_messages(value: object) -> bool:
    # CSV cells carry message lists as JSON text.
    return isinstance(value, list) or (isinstance(value, str) and value.lstrip().startswith("[{"))


def looks_conversational(rec: dict) -> bool:
    return _is_messages(rec.get("chosen")) and _is_messages(rec.get("rejected"))


def looks_standard(rec: dict) -> bool:
    return isinstance(rec.get("chosen"), str) and isinstance(rec.get("rejected"), str)
