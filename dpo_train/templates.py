"""How a conversation becomes model input: one place, shared by generation, judges and evaluation.

Generation, the implicit-reward judge and the KL estimate must tokenise a prompt exactly as training does,
or log-probs are computed on a different string from the one the policy was trained on. The rule: use the
tokenizer's chat template with `add_generation_prompt=True` (the template adds BOS itself, so the tokenizer
adds no special tokens); without a template, fall back to `PLAIN_TEMPLATE` plus the tokenizer's own special
tokens. A response is tokenised on its own and closed by EOS, which is what the sampler produces.

The plain template's turn labels are the row's source's (`labels`, from storage.templates.snapshot_turn_labels:
HH-RLHF keeps "Human:"), the same ones `dpo export` writes into the TRL standard prompt, so TRL trained on an
export and `dpo train` see one text. A chat template ignores them: it has its own role markers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Fallback when a tokenizer has no chat template: "User: ...\n\nAssistant: ..." turns. One definition, in
# storage, because the TRL export renders prompts with the same template.
from storage.templates import ROLE_PREFIX, Labels, render_plain, render_plain_rows

__all__ = ["ROLE_PREFIX", "render_plain", "has_chat_template", "render_prompt", "render_prompt_rows",
           "encode_prompt", "encode_response", "eos_token_ids"]


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(messages: Sequence[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render_prompt(tokenizer: Any, messages: Sequence[dict], labels: Labels | None = None) -> str:
    """The prompt string the policy sees before its answer (chat template, else the plain template with the
    source's turn `labels`)."""
    msgs = _messages(messages)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    return render_plain(msgs, labels)


def render_prompt_rows(tokenizer: Any, prompts: Sequence[Sequence[dict]], sources: Sequence[str] | None = None,
                       labels_by_source: Mapping[str, Labels] | None = None) -> list[str]:
    """`render_prompt` of every row; without a chat template each row gets its source's labels
    (storage.templates.render_plain_rows, which the TRL standard export writes)."""
    if has_chat_template(tokenizer):
        return [render_prompt(tokenizer, m) for m in prompts]
    return render_plain_rows([_messages(m) for m in prompts], sources, labels_by_source)


def encode_prompt(tokenizer: Any, messages: Sequence[dict], labels: Labels | None = None) -> list[int]:
    """Token ids of the rendered prompt; special tokens come from the template when there is one."""
    text = render_prompt(tokenizer, messages, labels)
    ids = list(tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    # A template that writes BOS plus a tokenizer that adds one gives two; training keeps one (batching.py).
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        del ids[0]
    return ids


def encode_response(tokenizer: Any, response: str) -> list[int]:
    """Token ids of an answer as the sampler emits it: the text, then EOS (when the tokenizer has one)."""
    ids = list(tokenizer(response, add_special_tokens=False)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):  # one EOS, as training does
        ids.append(int(eos))
    return ids


def eos_token_ids(tokenizer: Any, model: Any | None = None) -> set[int]:
    """Every id that ends an answer: the tokenizer's EOS and the model's (generation-)config EOS ids."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for holder in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        found = getattr(holder, "eos_token_id", None)
        if isinstance(found, int):
            ids.add(found)
        elif isinstance(found, list | tuple):
            ids.update(int(i) for i in found)
    return ids
