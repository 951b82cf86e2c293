"""normalise + degenerate: hand-made rows with the expected keeps and reasons."""

from __future__ import annotations

import pyarrow as pa
import pytest

from data_quality.checks import degenerate, normalise
from storage.schema import REJECTS_SCHEMA, build_pair_table


def pairs(rows: list[tuple[str, str, str]], **extra: list) -> pa.Table:
    return build_pair_table({
        "prompt": [[{"role": "user", "content": p}] for p, _, _ in rows],
        "chosen": [c for _, c, _ in rows], "rejected": [r for _, _, r in rows],
        "source": ["t"] * len(rows), "source_row": list(range(len(rows))), **extra,
    })


def test_normalise_keys_ids_never_the_text() -> None:
    t = pairs([("Hi\u00a0 there", "Assistant:  Hello\r\n\n\n\nworld  ", "No.\n\nHuman: and then?"),
               ("Hi there", "Assistant: Hello\n\nworld", "No.\n\nHuman: and then?"),
               ("caf\u0065\u0301", "ok", "bad")])
    res = normalise.run(t, normalise.NormaliseConfig())
    out = res.kept
    for name in ("prompt", "prompt_text", "chosen", "rejected"):  # published text is the source's text
        assert out.column(name).to_pylist() == t.column(name).to_pylist()
    # The first two rows differ only in invisible whitespace, so they are the same pair and share an id.
    ids = out.column("pair_id").to_pylist()
    assert ids[0] == ids[1] and ids[0] != ids[2]
    assert res.rejects.num_rows == 0 and res.stats["chosen_key_differs"] == 1


def test_normalise_nfkc_and_off() -> None:
    t = pairs([("\ufb01x", "A\u2003 b", "c"), ("fix", "A b", "c")])
    ids = normalise.run(t, normalise.NormaliseConfig(unicode_form="NFKC")).kept.column("pair_id").to_pylist()
    assert ids[0] == ids[1]
    raw = normalise.run(t, normalise.NormaliseConfig(unicode_form=None, collapse_whitespace=False)).kept
    assert raw.column("chosen")[0].as_py() == "A\u2003 b"
    assert len(set(raw.column("pair_id").to_pylist())) == 2
    with pytest.raises(ValueError):
        normalise.NormaliseConfig(unicode_form="NFX")


def test_degenerate_reasons() -> None:
    t = pairs([
        ("q1", "good answer", "bad answer"),  # kept
        ("q2", "", "bad"),  # empty chosen
        ("q3", "fine", "   "),  # whitespace-only rejected
        ("q4", "same", "same"),  # identical
        ("Tell me a joke", "tell me a  JOKE", "Why did..."),  # chosen echoes the prompt
        ("q6", "x" * 50, "ok"),  # too long under max_chars=40
    ])
    res = degenerate.run(t, degenerate.DegenerateConfig(max_chars=40))
    assert res.kept.column("prompt_text").to_pylist() == ["q1"]
    reasons = dict(zip(res.rejects.column("prompt_text").to_pylist(), res.rejects.column("reason").to_pylist(),
                       strict=True))
    assert reasons == {"q2": "empty_chosen", "q3": "empty_rejected", "q4": "identical_answers",
                       "Tell me a joke": "chosen_repeats_prompt", "q6": "chosen_too_long"}
    assert res.rejects.schema.equals(REJECTS_SCHEMA) and set(res.rejects.column("rule").to_pylist()) == {"degenerate"}
    assert res.stats["dropped"]["empty_chosen"] == 1


def test_degenerate_word_bounds_and_switches() -> None:
    t = pairs([("q", "one two", "three four five six"), ("p", "a b c", "d e f")])
    res = degenerate.run(t, degenerate.DegenerateConfig(min_words=3, max_words=3))
    assert res.rejects.column("reason").to_pylist() == ["chosen_too_short"]
    same = pairs([("q", "same", "same")])
    assert degenerate.run(same, degenerate.DegenerateConfig(drop_identical=False)).kept.num_rows == 1
