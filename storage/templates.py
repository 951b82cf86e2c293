"""The plain conversation template: one definition, used by the trainer (dpo_train.templates) and the exports.

A model without a chat template sees a conversation as "Label: text" turns separated by a blank line, and the
prompt ends with the assistant cue ("Assistant:") so the answer follows the cue, never the user's last words.
Labels default to User/Assistant/System; a source that wrote its own turn markers (HH-RLHF's "Human:") can
keep them by passing `labels`. It lives in storage because storage may import nothing of ours and both the
trainer and the TRL export need it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

ROLE_PREFIX: Mapping[str, str] = {"system": "System", "user": "User", "assistant": "Assistant"}
PLAIN_TURN = "{role}: {content}\n\n"
PLAIN_GENERATION_PROMPT = "{assistant}:"


def render_plain(messages: Sequence[Mapping[str, str]], labels: Mapping[str, str] | None = None) -> str:
    """Every turn as "Label: content", then the assistant cue. `labels` overrides the role labels."""
    names = {**ROLE_PREFIX, **(labels or {})}
    turns = "".join(PLAIN_TURN.format(role=names.get(m["role"], m["role"]), content=m["content"])
                    for m in messages)
    return turns + PLAIN_GENERATION_PROMPT.format(assistant=names["assistant"])
