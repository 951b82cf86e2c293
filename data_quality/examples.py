"""A handful of dropped rows per rule:reason, each beside the row it was judged against, for the report.

Judging a rule means reading what it dropped: the report shows, for every rule:reason, a few dropped rows
(spread over the drops, not the first few, which often share one prompt) next to the row named in
`duplicate_of` (the kept pair it duplicates, the contradicting pair, another pair with the same answer) or,
for a decontamination drop, the eval item. Rules that judge a pair on its own (degenerate, near-identical,
repetition) are shown as the pair itself: chosen beside rejected. Texts are cut to `max_chars`; the result
is JSON-able and stored in the gate's statistics, so a report rebuilt from them is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from data_quality.checks.columns import take_rows

_COLS = ["pair_id", "prompt_text", "chosen", "rejected", "source", "source_row"]


def _cut(text: str | None, max_chars: int) -> str:
    text = text or ""
    return text if len(text) <= max_chars else text[:max_chars] + f" … [{len(text) - max_chars} more chars]"


def _row(r: dict, max_chars: int) -> dict[str, Any]:
    return {"pair_id": r["pair_id"], "source": f"{str(r['source']).rsplit('/', 1)[-1]}#{r['source_row']}",
            "prompt": _cut(r["prompt_text"], max_chars), "chosen": _cut(r["chosen"], max_chars),
            "rejected": _cut(r["rejected"], max_chars)}


def drop_examples(rejects: pa.Table, kept: pa.Table, per_reason: int = 3, max_chars: int = 400,
                  eval_prompts: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """{"rule:reason": [{"dropped": row, "against": row | {"eval_item": i, "prompt": text} | None}]}."""
    if rejects.num_rows == 0:
        return {}
    keys = pc.binary_join_element_wise(rejects.column("rule"), rejects.column("reason"), ":").to_numpy(
        zero_copy_only=False)
    picked: dict[str, np.ndarray] = {}
    for key in sorted(set(keys.tolist())):
        rows = np.flatnonzero(keys == key)
        picked[key] = rows[np.unique(np.linspace(0, rows.size - 1, min(per_reason, rows.size)).round().astype(int))]
    take = np.concatenate(list(picked.values()))
    # Column by column and chunk by chunk: Arrow's take on a chunked string column concatenates it first, which
    # fails past 2 GiB of text ("offset overflow") on the rejects of a 2M-row gate.
    sample = pa.table({c: take_rows(rejects.column(c), take) for c in [*_COLS, "duplicate_of"]}).to_pylist()
    by_pos = dict(zip(take.tolist(), sample, strict=True))
    named = sorted({r["duplicate_of"] for r in sample if r["duplicate_of"] and not r["duplicate_of"].startswith("eval:")})
    found: dict[str, dict] = {}
    if named:
        want = pa.array(named, pa.string())
        for t in (kept, rejects):  # the named row may itself have been dropped later by another rule
            hit = t.filter(pc.is_in(t.column("pair_id"), value_set=want)).select(_COLS).to_pylist()
            for r in hit:
                found.setdefault(r["pair_id"], r)
    out: dict[str, list[dict[str, Any]]] = {}
    for key, rows in picked.items():
        items = []
        for p in rows.tolist():
            r = by_pos[p]
            ref, against = r["duplicate_of"], None
            if ref and ref.startswith("eval:"):
                i = int(ref.split(":", 1)[1])
                text = eval_prompts[i] if eval_prompts is not None and 0 <= i < len(eval_prompts) else None
                against = {"eval_item": i, "prompt": _cut(text, max_chars) if text is not None else None}
            elif ref:
                against = _row(found[ref], max_chars) if ref in found else {"pair_id": ref, "missing": True}
            items.append({"dropped": _row(r, max_chars), "against": against})
        out[key] = items
    return out
