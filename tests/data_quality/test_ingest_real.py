"""The two real data sets ingest with every row accounted for and chosen/rejected oriented correctly."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from data_quality.ingest import ingest_files
from storage.schema import validate_pair_table

# Same location as the shared `shared_data` fixture, needed here at module scope (one ingest, several tests).
SHARED_DATA = Path(os.environ.get("DPO_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def _by_row(table, source_suffix: str) -> dict[int, dict]:
    return {r["source_row"]: r for r in table.to_pylist() if r["source"].endswith(source_suffix)}


def test_hh_harmless_test_fully_accounted(shared_data):
    path = shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    res = ingest_files([path])
    assert res.formats == {str(path.absolute()): "hh"}
    assert res.input_rows == 2312
    assert res.pairs.num_rows + res.rejects.num_rows + res.quarantine.num_rows == 2312
    validate_pair_table(res.pairs)
    q = {r["source_row"]: r for r in res.quarantine.to_pylist()}
    # Known quirks of this file: 4 rows whose chosen final turn is empty, 5 whose dialogues diverge earlier
    # (an inline "Human:" inside an assistant turn in one of the two dialogues).
    assert {r for r, x in q.items() if x["field"] == "chosen"} == {86, 516, 925, 1103}
    diverging = {r for r, x in q.items() if "differ before the final assistant turn" in x["error"]}
    assert diverging == {1254, 1688, 1950, 1952, 2036}
    assert all(x["raw"] and x["source"] == str(path.absolute()) for x in q.values())

    rows = _by_row(res.pairs, path.name)
    first = rows[0]
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["prompt"][0]["content"] == "what are some pranks with a pen i can do?"
    assert first["chosen"].startswith("No, sorry!  All of these involve a pen")
    assert first["rejected"].startswith("There are lots of funny things you can do with pens")
    # Row 1 differs only in the last turn: the prompt holds everything before it.
    raw = [json.loads(line) for line in gzip.open(path, "rt")]
    assert raw[1]["chosen"].endswith(rows[1]["chosen"]) and raw[1]["rejected"].endswith(rows[1]["rejected"])
    assert not rows[1]["chosen"].startswith(" ")


ANNOTATIONS = [
    ("FuseChat-Llama-3.2-1B-Instruct__weighted_alpaca_eval_gpt4_turbo.json.gz", 805),
    ("alpaca-7b__alpaca_eval_gpt4.json.gz", 805),
    ("alpaca-7b_concise__weighted_alpaca_eval_gpt4_turbo.json.gz", 804),
    ("alpaca-7b_verbose__weighted_alpaca_eval_gpt4_turbo.json.gz", 802),
    ("falcon-7b-instruct__alpaca_eval_gpt4.json.gz", 805),
    ("gpt4__alpaca_eval_gpt4.json.gz", 805),
    ("text_davinci_003__weighted_alpaca_eval_gpt4_turbo.json.gz", 805),
    ("tulu-2-dpo-70b__alpaca_eval_gpt4.json.gz", 805),
    ("vicuna-13b__alpaca_eval_gpt4.json.gz", 805),
    ("zephyr-7b-beta__alpaca_eval_gpt4.json.gz", 805),
]


@pytest.fixture(scope="module")
def annotations_result():
    if not SHARED_DATA.exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared data not found at {SHARED_DATA}")
        pytest.skip("shared data not found")
    files = [SHARED_DATA / "alpaca_eval" / "annotations" / name for name, _ in ANNOTATIONS]
    return files, ingest_files(files)


def test_every_annotation_file_accounted(annotations_result):
    files, res = annotations_result
    assert res.input_rows == sum(n for _, n in ANNOTATIONS)
    per = {s["source"]: s for s in res.per_source}
    for f, (_, n) in zip(files, ANNOTATIONS, strict=True):
        s = per[str(f.absolute())]
        assert s["format"] == "alpaca_eval"
        assert s["records"] == n == s["kept"] + s["rejected"] + s["quarantined"]
    validate_pair_table(res.pairs)


def test_annotation_orientation_on_every_row(annotations_result):
    files, res = annotations_result
    kept = {(r["source"], r["source_row"]): r for r in res.pairs.to_pylist()}
    rejected = {(r["source"], r["source_row"]) for r in res.rejects.to_pylist()}
    quarantined = {(r["source"], r["source_row"]): r for r in res.quarantine.to_pylist()}
    for f in files:
        src = str(f.absolute())
        for i, raw in enumerate(json.load(gzip.open(f))):
            p = raw["preference"]
            key = (src, i)
            if p is None:
                assert quarantined[key]["field"] == "preference"
            elif float(p) in (0.0, 1.5):
                assert key in rejected
            elif not raw["output_1"] or not raw["output_2"]:
                assert quarantined[key]["field"] in ("output_1", "output_2")
            else:
                row = kept[key]
                two = float(p) > 1.5
                assert row["chosen"] == (raw["output_2"] if two else raw["output_1"])
                assert row["rejected"] == (raw["output_1"] if two else raw["output_2"])
                assert row["chosen_model"] == (raw["generator_2"] if two else raw["generator_1"])
                assert row["judge"] == raw["annotator"]
                assert 0.5 < row["preference_prob"] <= 1.0
                assert row["preference_prob"] == pytest.approx(float(p) - 1 if two else 2 - float(p))


def test_annotation_known_rows(annotations_result):
    _, res = annotations_result
    hard = _by_row(res.pairs, "alpaca-7b__alpaca_eval_gpt4.json.gz")
    assert hard[2]["chosen"].startswith("Kickball is a game similar to baseball")  # preference 1
    assert hard[2]["chosen_model"] == "text_davinci_003" and hard[2]["preference_prob"] == 1.0
    assert hard[11]["chosen"].startswith("Absolutely! Here are some tips")  # preference 2
    assert hard[11]["chosen_model"] == "alpaca-7b"
    soft = _by_row(res.pairs, "text_davinci_003__weighted_alpaca_eval_gpt4_turbo.json.gz")
    assert soft[71]["chosen"] == "Mickey Thomas"  # preference 1.5234203489 -> output_2
    assert soft[71]["preference_prob"] == pytest.approx(0.5234203489)
    assert soft[0]["chosen_model"] == "gpt4_1106_preview"  # preference 1.0000001336 -> output_1
    ties = {(r["source"].rsplit("/", 1)[-1], r["source_row"]): r for r in res.rejects.to_pylist()}
    tie = ties[("FuseChat-Llama-3.2-1B-Instruct__weighted_alpaca_eval_gpt4_turbo.json.gz", 262)]
    assert tie["rule"] == "ingest_tie" and "1.5" in tie["reason"]
    assert "draw" in ties[("alpaca-7b__alpaca_eval_gpt4.json.gz", 24)]["reason"]


def test_model_outputs_best_of_n(shared_data):
    from data_quality.ingest import IngestOptions, multi_completion_from_model_outputs

    files = sorted((shared_data / "alpaca_eval" / "model_outputs").glob("*.json.gz"))
    res = multi_completion_from_model_outputs(files)
    # 805 instruction groups plus the 2 empty outputs of text_davinci_003 quarantined per file row.
    assert res.input_rows == 807 == res.pairs.num_rows + res.rejects.num_rows + res.quarantine.num_rows
    assert set(res.quarantine.column("field").to_pylist()) == {"output"}
    row = res.pairs.to_pylist()[0]
    assert row["chosen_score"] > row["rejected_score"]  # the length proxy
    assert len(row["chosen"]) == row["chosen_score"]
    scored = multi_completion_from_model_outputs(
        files, scores=lambda ins, out, gen: 1.0 if gen == "gpt4" else 0.0, options=IngestOptions(pairing="best_vs_random"))
    assert set(scored.pairs.column("chosen_model").to_pylist()) == {"gpt4"}
