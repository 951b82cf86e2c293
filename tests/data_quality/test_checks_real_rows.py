"""The gate's rules judged on real rows (tests/fixtures/gate_real_rows.json: AlpacaEval and HH-RLHF rows copied
with their source file and row), the rows that showed each rule wrong on real data."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from data_quality.checks import degenerate, near_identical, normalise
from data_quality.gate import GateConfig, run_gate
from storage.schema import build_pair_table

ROWS = json.loads((Path(__file__).parents[1] / "fixtures" / "gate_real_rows.json").read_text(encoding="utf-8"))


def real(*tags: str) -> list[dict]:
    rows = [r for r in ROWS if r["tag"] in tags]
    assert rows, tags
    return rows


def table(rows: list[dict]) -> pa.Table:
    return build_pair_table({"prompt": [r["prompt"] for r in rows], "chosen": [r["chosen"] for r in rows],
                             "rejected": [r["rejected"] for r in rows], "source": [r["source"] for r in rows],
                             "source_row": [r["source_row"] for r in rows]})


def test_normalise_publishes_text_as_the_source_wrote_it() -> None:
    rows = real("python_indent", "user_line_in_answer", "ascii_art")
    t = table(rows)
    out = normalise.run(t, normalise.NormaliseConfig()).kept
    for name in ("chosen", "rejected", "prompt", "prompt_text"):
        assert out.column(name).to_pylist() == t.column(name).to_pylist(), name
    py = out.column("chosen")[0].as_py()
    assert "\n    if num <= 1:\n        return False" in py  # indentation of the Python answer survives
    assert out.column("chosen")[1].as_py().startswith("User: Hi, please tell me")  # a "User:" line is content
    # The gate as a whole publishes what it was given, too.
    kept = run_gate(t, GateConfig.from_dict({"near_dup": {"enabled": False}})).kept
    by_row = {(r["source"], r["source_row"]): r for r in kept.to_pylist()}
    for r in rows:
        if (r["source"], r["source_row"]) in by_row:
            assert by_row[(r["source"], r["source_row"])]["chosen"] == r["chosen"]


def test_normalise_keys_give_ids_and_are_conservative() -> None:
    base = real("python_indent")[0]
    variant = dict(base, chosen=base["chosen"].replace("\n", "\r\n") + "  \n\n\n", source_row=-1)
    reindented = dict(base, chosen=base["chosen"].replace("\n    ", "\n"), source_row=-2)
    out = normalise.run(table([base, variant, reindented]), normalise.NormaliseConfig()).kept
    ids = out.column("pair_id").to_pylist()
    assert ids[0] == ids[1]  # line endings and trailing blanks: the same pair (pair_id hashes the keys)
    assert ids[0] != ids[2]  # different indentation is different code, a different pair
    assert out.column("chosen")[1].as_py() == variant["chosen"]  # while the text stays as written
    keys = normalise.key_text(pa.array(["caf\u0065\u0301\u00a0 ok\u200b", "a\n\n\n\nb  "]))
    assert keys.to_pylist() == ["caf\u00e9 ok", "a\n\nb"]


@pytest.mark.parametrize("tag", ["emoji_only", "ascii_art", "alternating_case", "number_differs"])
def test_near_identical_keeps_pairs_a_reader_sees_as_different(tag: str) -> None:
    t = table(real(tag))
    res = near_identical.run(t, near_identical.NearIdenticalConfig())
    assert res.rejects.num_rows == 0, res.rejects.select(["chosen", "rejected"]).to_pylist()


def test_near_identical_sign_and_true_positives() -> None:
    t = table([{"prompt": [{"role": "user", "content": "What is 2 - 7?"}], "chosen": "-5", "rejected": "5",
                "source": "t", "source_row": 0}])
    assert near_identical.run(t, near_identical.NearIdenticalConfig()).rejects.num_rows == 0
    long = real("python_indent")[0]["chosen"]
    near = table([{"prompt": [{"role": "user", "content": "q"}], "chosen": long,
                   "rejected": long.replace("To use it:", "To use it,"), "source": "t", "source_row": 1}])
    assert near_identical.run(near, near_identical.NearIdenticalConfig()).rejects.num_rows == 1


def test_degenerate_keeps_a_rejected_answer_that_echoes_the_prompt() -> None:
    t = table(real("rejected_echoes_prompt"))
    res = degenerate.run(t, degenerate.DegenerateConfig())
    assert res.kept.num_rows == 2 and res.stats["rejected_echoes_prompt"] == 2
    chosen_echo = degenerate.run(table(real("chosen_echoes_prompt")), degenerate.DegenerateConfig())
    assert chosen_echo.rejects.column("reason").to_pylist() == ["chosen_repeats_prompt"]


def test_degenerate_zero_width_answer_is_empty() -> None:
    res = degenerate.run(table(real("rejected_zero_width")), degenerate.DegenerateConfig())
    assert res.rejects.column("reason").to_pylist() == ["empty_rejected"]
