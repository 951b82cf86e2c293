"""The plain conversation template: one definition, used by the trainer (dpo_train.templates) and the exports.

A model without a chat template sees a conversation as "Label: text" turns separated by a blank line, and the
prompt ends with the assistant cue ("Assistant:") so the answer follows the cue, never the user's last words.
Labels default to User/Assistant/System; a source that wrote its own turn markers (HH-RLHF's "Human:") keeps
them: which labels a row gets is decided here, once, from the ingest format its source was read with
(`FORMAT_TURN_LABELS`, `snapshot_turn_labels`), and both `dpo train` and `dpo export` ask this module, so TRL
trained on an export and our trainer see the same prompt text. It lives in storage because storage may import
nothing of ours and both the trainer and the TRL export need it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ROLE_PREFIX: Mapping[str, str] = {"system": "System", "user": "User", "assistant": "Assistant"}
PLAIN_TURN = "{role}: {content}\n\n"
PLAIN_GENERATION_PROMPT = "{assistant}:"

Labels = Mapping[str, str]
_HUMAN: Labels = {"user": "Human", "assistant": "Assistant"}
# Ingest formats whose sources write their own turn markers ("\n\nHuman: ...\n\nAssistant:", parsed by
# data_quality.ingest.hh, whose markers tests/storage/test_export_roundtrip.py checks against these); a source
# read with any other format renders the default labels.
FORMAT_TURN_LABELS: Mapping[str, Labels] = {"hh": _HUMAN, "nectar": _HUMAN}


def render_plain(messages: Sequence[Mapping[str, str]], labels: Labels | None = None) -> str:
    """Every turn as "Label: content", then the assistant cue. `labels` overrides the role labels."""
    names = {**ROLE_PREFIX, **(labels or {})}
    turns = "".join(PLAIN_TURN.format(role=names.get(m["role"], m["role"]), content=m["content"])
                    for m in messages)
    return turns + PLAIN_GENERATION_PROMPT.format(assistant=names["assistant"])


def row_labels(sources: Sequence[str] | None, labels_by_source: Mapping[str, Labels] | None,
               n: int) -> list[Labels | None]:
    """The turn labels of each of `n` rows (None: the defaults), from the rows' `source` values."""
    if not labels_by_source or sources is None:
        return [None] * n
    return [labels_by_source.get(s) for s in sources]


def render_plain_rows(prompts: Sequence[Sequence[Mapping[str, str]]], sources: Sequence[str] | None = None,
                      labels_by_source: Mapping[str, Labels] | None = None) -> list[str]:
    """The plain-template prompt of every row, each with its source's labels: what the export writes and
    what the trainer tokenises for a model without a chat template."""
    labels = row_labels(sources, labels_by_source, len(prompts))
    return [render_plain(m, lab) for m, lab in zip(prompts, labels, strict=True)]


def is_plain_rendering(messages: Sequence[Mapping[str, str]], text: str) -> bool:
    """Whether `text` is exactly `messages` in the plain template, with the default or a source's labels
    (how a re-ingested TRL standard export proves its `prompt_messages` column still says what `prompt` says)."""
    return any(render_plain(messages, lab) == text for lab in (None, *FORMAT_TURN_LABELS.values()))


def snapshot_formats(ws: Any, info: Any) -> dict[str, str]:
    """{source: ingest format} recorded by the raw snapshot(s) `info` descends from (its lineage)."""
    found: dict[str, str] = {}
    seen: set[str] = set()
    todo = [info]
    while todo:
        cur = todo.pop()
        if cur.snapshot_id in seen:
            continue
        seen.add(cur.snapshot_id)
        found.update((cur.meta or {}).get("formats") or {})
        todo.extend(ws.resolve(p) for p in cur.parents)
    return found


def snapshot_turn_labels(ws: Any, info: Any) -> dict[str, Labels]:
    """{source: turn labels} for the sources of snapshot `info` (a storage.workspace.SnapshotInfo of workspace
    `ws`) that wrote their own markers; the trainer and the export both render with exactly this."""
    return {src: FORMAT_TURN_LABELS[fmt] for src, fmt in snapshot_formats(ws, info).items()
            if fmt in FORMAT_TURN_LABELS}
