"""LLaMA-Factory preference layouts (https://github.com/hiyouga/LLaMA-Factory/blob/main/data/README.md):

- `sharegpt`: {"conversations": [{"from": "human", "value": ...}, ...], "chosen": {"from": "gpt", "value": ...},
  "rejected": {...}, "system"?: str}; also its OpenAI-tag variant ("messages" of {role, content}, chosen and
  rejected as {role, content}). The conversation is the prompt and must end on a user (or tool) turn, as
  LLaMA-Factory requires; `tools` descriptions are not part of the pair table and are not kept.
- `llamafactory_pair`: the v1 DPO sample, {"chosen_messages": [...], "rejected_messages": [...]}, two whole
  conversations whose message content is a string or a list of {"type": "text", "value": ...} parts; they must
  share every message but the final assistant one.
- `llamafactory_alpaca`: {"instruction", "input"?, "chosen", "rejected", "system"?, "history"?}; the user turn is
  instruction and input joined by a newline (LLaMA-Factory's own rule), history is [[user, assistant], ...].
"""

from __future__ import annotations

from data_quality.ingest._common import (
    ROLES,
    Collector,
    RowError,
    check_text,
    get,
    maybe_json_list,
    text_field,
)
from data_quality.ingest.options import IngestOptions
from data_quality.ingest.trl import conversation_pair

# ShareGPT speaker tags -> chat roles (LLaMA-Factory's mapping; a function call is an assistant turn).
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "observation": "tool", "function_call": "assistant", "tool": "tool"}


def _content(value: object, where: str) -> str:
    """A message's text: a string, or LLaMA-Factory v1's list of {"type": "text", "value"} parts joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for i, part in enumerate(value):
            if not isinstance(part, dict):
                raise RowError(f"{where}[{i}]", f"expected a content part object, got {type(part).__name__}")
            kind = part.get("type", "text")
            text = part.get("value", part.get("text"))
            if kind != "text" or not isinstance(text, str):
                raise RowError(f"{where}[{i}]", f"content part of type {kind!r} is not text; only text "
                                                "preference data can become a pair")
            parts.append(text)
        return "".join(parts)
    raise RowError(where, f"expected a string, got {type(value).__name__}")


def chat_message(m: object, where: str, opts: IngestOptions) -> dict:
    """One message in either tagging ({role, content} or ShareGPT {from, value}) -> {role, content}."""
    if not isinstance(m, dict):
        raise RowError(where, f"expected a message object, got {type(m).__name__}")
    if "role" in m:
        role, content, field = m["role"], m.get("content"), "content"
        if role not in ROLES:
            raise RowError(f"{where}.role", f"unknown role {role!r}; expected one of {sorted(ROLES)}")
    elif "from" in m:
        tag, content, field = m["from"], m.get("value"), "value"
        role = SHAREGPT_ROLES.get(tag) if isinstance(tag, str) else None
        if role is None:
            raise RowError(f"{where}.from", f"unknown speaker {tag!r}; expected one of {sorted(SHAREGPT_ROLES)}")
    else:
        raise RowError(where, "message has neither 'role' nor 'from'")
    text = _content(content, f"{where}.{field}")
    check_text(text, f"{where}.{field}", opts, allow_empty=role != "assistant")
    return {"role": role, "content": text}


def chat_messages(value: object, name: str, opts: IngestOptions) -> list[dict]:
    value = maybe_json_list(value, name)
    if not isinstance(value, list):
        raise RowError(name, f"expected a list of messages, got {type(value).__name__}")
    return [chat_message(m, f"{name}[{i}]", opts) for i, m in enumerate(value)]


def with_system(prompt: list[dict], rec: dict, opts: IngestOptions) -> list[dict]:
    """Prepend the row's `system` text (an empty one means none) unless the conversation has its own."""
    system = rec.get("system")
    if system is None or (isinstance(system, str) and not system.strip()):
        return prompt
    text = text_field(system, "system", opts)
    if prompt and prompt[0]["role"] == "system":
        return prompt
    return [{"role": "system", "content": text}, *prompt]


def check_prompt(prompt: list[dict], name: str) -> list[dict]:
    if not any(m["role"] == "user" for m in prompt):
        raise RowError(name, "has no user message")
    if prompt[-1]["role"] == "assistant":
        raise RowError(name, "ends with an assistant turn; the prompt must end with the user turn being answered")
    return prompt


def _answer(value: object, name: str, opts: IngestOptions) -> str:
    if value is None:
        raise RowError(name, "is missing or null")
    if isinstance(value, str):
        return text_field(value, name, opts)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    msg = chat_message(value, name, opts)
    if msg["role"] != "assistant":
        raise RowError(name, f"is a {msg['role']!r} message; the answer must be an assistant message")
    return msg["content"]


def handle_sharegpt(out: Collector, row: int, rec: dict) -> None:
    opts = out.opts
    name, conv = get(rec, "conversations", "messages")
    prompt = check_prompt(with_system(chat_messages(conv, name, opts), rec, opts), name)
    out.keep(row, prompt, _answer(rec.get("chosen"), "chosen", opts), _answer(rec.get("rejected"), "rejected", opts))


def handle_pair_messages(out: Collector, row: int, rec: dict) -> None:
    opts = out.opts
    chosen = chat_messages(rec.get("chosen_messages"), "chosen_messages", opts)
    rejected = chat_messages(rec.get("rejected_messages"), "rejected_messages", opts)
    try:
        prompt, c, r = conversation_pair(chosen, rejected)
    except RowError as exc:  # name the source's fields, not the pair table's
        raise RowError(f"{exc.field}_messages" if exc.field in ("chosen", "rejected") else "chosen_messages",
                       str(exc).split(": ", 1)[-1]) from None
    out.keep(row, with_system(prompt, rec, opts), c, r)


def handle_alpaca(out: Collector, row: int, rec: dict) -> None:
    opts = out.opts
    user = text_field(rec.get("instruction"), "instruction", opts)
    extra = rec.get("input")
    if isinstance(extra, str) and extra.strip():
        user = f"{user}\n{extra}"
    prompt: list[dict] = []
    for i, turn in enumerate(rec.get("history") or []):
        if not (isinstance(turn, list | tuple) and len(turn) == 2):
            raise RowError(f"history[{i}]", "expected a [user, assistant] pair")
        prompt += [{"role": "user", "content": text_field(turn[0], f"history[{i}][0]", opts)},
                   {"role": "assistant", "content": text_field(turn[1], f"history[{i}][1]", opts)}]
    prompt = with_system([*prompt, {"role": "user", "content": user}], rec, opts)
    out.keep(row, prompt, text_field(rec.get("chosen"), "chosen", opts), text_field(rec.get("rejected"), "rejected", opts))


def _is_message(value: object) -> bool:
    return isinstance(value, dict) and ("from" in value or "role" in value)


def looks_sharegpt(rec: dict) -> bool:
    conv = rec.get("conversations", rec.get("messages"))
    # Some ShareGPT derivatives store the answers as plain strings; the conversation still marks the layout.
    return isinstance(conv, list) and all(_is_message(rec.get(k)) or isinstance(rec.get(k), str)
                                          for k in ("chosen", "rejected"))


def looks_pair_messages(rec: dict) -> bool:
    return isinstance(rec.get("chosen_messages"), list) and isinstance(rec.get("rejected_messages"), list)


def looks_alpaca(rec: dict) -> bool:
    return ("instruction" in rec and "prompt" not in rec and isinstance(rec.get("chosen"), str)
            and isinstance(rec.get("rejected"), str))
