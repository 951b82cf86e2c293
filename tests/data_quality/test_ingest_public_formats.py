"""The public preference data sets' layouts, each on a fixture built by hand from the published fields
(tests/fixtures/formats/<format>.jsonl: a few rows each, with ties, multi-turn rows and missing fields)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_quality.ingest import IngestError, IngestOptions, ingest_files
from storage.schema import validate_pair_table

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
# format -> (kept, rejected as ties, quarantined) of its fixture under the default options.
EXPECTED = {
    "sharegpt": (4, 0, 2),
    "llamafactory_pair": (3, 0, 1),
    "llamafactory_alpaca": (2, 0, 1),
    "pku_saferlhf": (2, 0, 1),
    "shp": (2, 0, 1),
    "nectar": (2, 1, 1),
    "ultrafeedback": (2, 1, 1),
    "helpsteer": (3, 1, 0),
    "chatbot_arena": (2, 2, 1),
}


def read(fmt: str, forced: bool = False, **opts):
    res = ingest_files([FIXTURES / f"{fmt}.jsonl"], format=fmt if forced else None, options=IngestOptions(**opts))
    assert res.input_rows == res.pairs.num_rows + res.rejects.num_rows + res.quarantine.num_rows
    validate_pair_table(res.pairs)
    return res


def rows(table) -> list[dict]:
    return table.to_pylist()


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("fmt", sorted(EXPECTED))
@pytest.mark.parametrize("forced", [False, True])
def test_fixture_detected_and_counted(fmt, forced):
    res = read(fmt, forced)
    assert list(res.formats.values()) == [fmt]
    c = res.counts
    assert (c["kept"], c["rejected"], c["quarantined"]) == EXPECTED[fmt]
    n_lines = len((FIXTURES / f"{fmt}.jsonl").read_text().splitlines())
    assert c["input_rows"] == n_lines  # one input row per record under the default pairing rule
    assert set(res.rejects.column("rule").to_pylist()) <= {"ingest_tie"}
    for q in rows(res.quarantine):  # every quarantined row names its file, row and field
        assert q["source"].endswith(f"{fmt}.jsonl") and q["source_row"] is not None and q["field"]


def test_sharegpt_roles_system_and_multi_turn():
    pairs = rows(read("sharegpt").pairs)
    assert (pairs[0]["prompt"], pairs[0]["chosen"], pairs[0]["rejected"]) == (
        user("What is the capital of France?"), "Paris.", "Lyon.")
    assert pairs[1]["prompt"] == [{"role": "system", "content": "You are a maths tutor."}, *user("Name a prime."),
                                  {"role": "assistant", "content": "7."}, *user("Another one?")]
    assert pairs[2]["prompt"] == user("Hi")  # an empty system field is no system turn
    assert (pairs[3]["chosen"], pairs[3]["rejected"]) == ("4", "5")  # OpenAI tags
    q = {r["source_row"]: r for r in rows(read("sharegpt").quarantine)}
    assert q[4]["field"] == "conversations" and "ends with an assistant turn" in q[4]["error"]
    assert q[5]["field"] == "rejected" and "missing" in q[5]["error"]


def test_llamafactory_pair_content_parts():
    res = read("llamafactory_pair")
    pairs = rows(res.pairs)
    assert (pairs[0]["prompt"], pairs[0]["chosen"], pairs[0]["rejected"]) == (user("Capital of Italy?"), "Rome.", "Milan.")
    assert [m["role"] for m in pairs[1]["prompt"]] == ["system", "user", "assistant", "user"]
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == ("Bye!", "Whatever.")
    assert rows(res.quarantine)[0]["field"] == "rejected_messages"


def test_llamafactory_alpaca_joins_instruction_and_input():
    pairs = rows(read("llamafactory_alpaca").pairs)
    assert pairs[0]["prompt"] == user("Translate to French\ncat")
    assert pairs[1]["prompt"] == [{"role": "system", "content": "Be nice."}, *user("Who are you?"),
                                  {"role": "assistant", "content": "An assistant."}, *user("Say hi")]


def test_pku_better_by_default_safer_on_request():
    better = rows(read("pku_saferlhf").pairs)[0]
    assert better["chosen"].startswith("Use a tension wrench") and better["chosen_model"] == "Alpaca2-7B"
    safer = read("pku_saferlhf", pku_label="safer")
    assert rows(safer.pairs)[0]["chosen"] == "I can't help with that."
    assert rows(safer.pairs)[0]["rejected_model"] == "Alpaca2-7B"
    assert safer.counts["kept"] == 3  # the row without better_response_id has a safer one
    with pytest.raises(ValueError, match="pku_label"):
        IngestOptions(pku_label="kinder")


def test_shp_label_and_scores():
    pairs = rows(read("shp").pairs)
    assert (pairs[0]["chosen"], pairs[0]["chosen_score"], pairs[0]["rejected_score"]) == (
        "Of course, just say excuse me.", 52.0, 5.0)
    assert (pairs[1]["chosen"], pairs[1]["rejected"], pairs[1]["chosen_score"]) == (
        "Rayleigh scattering.", "Because.", 40.0)


def test_nectar_ranks_hh_prompt_and_pairing_rules():
    res = read("nectar")
    pairs = rows(res.pairs)
    assert pairs[0]["prompt"] == user("What are some good snacks?")  # no "Human:" marker left in the prompt
    assert (pairs[0]["chosen_model"], pairs[0]["rejected_model"]) == ("gpt-4", "dolly-v2-12b")
    assert (pairs[0]["chosen_score"], pairs[0]["rejected_score"]) == (-1.0, -3.0)  # negated ranks
    assert pairs[1]["prompt"] == [*user("Hi"), {"role": "assistant", "content": "Hello! How can I help?"},
                                  *user("Tell me a joke")]
    assert rows(res.rejects)[0]["source_row"] == 2  # equal ranks: a tie, kept as a reject
    every = read("nectar", pairing="all_above_margin")
    # 3 + 1 + 1 candidate pairs, plus the one-answer row: each candidate pair is one input row
    assert every.counts == {"input_rows": 6, "kept": 4, "rejected": 1, "quarantined": 1}


def test_ultrafeedback_score_choices():
    pairs = rows(read("ultrafeedback").pairs)
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("Soft rain on the roof", "Rain is wet.")
    assert (pairs[0]["chosen_score"], pairs[0]["rejected_score"]) == (5.0, 2.5)  # fine-grained_score
    assert (pairs[1]["chosen_score"], pairs[1]["rejected_score"]) == (5.0, 2.25)  # recomputed from aspects
    overall = read("ultrafeedback", score_key="overall_score")
    first = rows(overall.pairs)[0]
    assert (first["chosen_model"], first["rejected_model"], first["chosen_score"]) == (
        "falcon-40b-instruct", "alpaca-7b", 9.0)
    assert overall.counts["rejected"] == 0  # 5.0 vs 6.0 is no tie by the critique score
    honesty = rows(read("ultrafeedback", score_key="honesty").pairs)[0]
    assert honesty["chosen_model"] == "gpt-4" and honesty["rejected_score"] == 3.0  # "N/A" is unscored


def test_helpsteer_sign_strength_and_tie():
    res = read("helpsteer")
    pairs = rows(res.pairs)
    assert (pairs[0]["chosen"], pairs[0]["chosen_score"], pairs[0]["rejected_score"]) == ("Whiskers.", 2.0, 0.0)
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == ("lst.reverse()", "Use sorted().")
    assert len(pairs[1]["prompt"]) == 3
    assert pairs[2]["prompt"] == [*user("What is 2+2?"), {"role": "assistant", "content": "4"}, *user("And 3+3?")]
    assert (pairs[2]["chosen"], pairs[2]["chosen_score"]) == ("6", 3.0)  # HelpSteer2 layout
    assert rows(res.rejects)[0]["reason"].startswith("overall_preference=0")


def test_chatbot_arena_winner_ties_and_multi_turn():
    res = read("chatbot_arena")
    first = rows(res.pairs)[0]
    assert (first["chosen"], first["chosen_model"], first["rejected_model"], first["judge"]) == (
        "CUDA is NVIDIA's...", "koala-13b", "chatglm-6b", "arena_user_973")
    assert sorted(r["reason"].split(":")[0] for r in rows(res.rejects)) == ["winner='tie (bothbad)'", "winner='tie'"]
    q = rows(res.quarantine)[0]
    assert q["source_row"] == 4 and "no shared prompt" in q["error"]


def test_forced_wrong_format_fails_with_reasons_and_hint():
    with pytest.raises(IngestError) as err:
        ingest_files([FIXTURES / "sharegpt.jsonl"], format="trl_conversational")
    msg = str(err.value)
    assert "'trl_conversational' (forced) kept none of 6 rows" in msg and "top reasons" in msg
    assert "look like 'sharegpt': try --format sharegpt" in msg
    assert err.value.result.quarantine.num_rows == 6  # nothing lost, even in failure


def test_column_map_with_nested_paths(tmp_path):
    path = tmp_path / "custom.jsonl"
    data = [{"question": "Best colour?", "answers": [{"text": "Blue"}, {"text": "Meh"}], "meta": {"m": "x"},
             "s": [0.9, 0.1]},
            {"question": "Bad row", "answers": [{"text": "only one"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    cols = "prompt=question,chosen=answers.0.text,rejected=answers.1.text,chosen_model=meta.m,chosen_score=s.0"
    res = ingest_files([path], options=IngestOptions(columns=cols))
    assert res.formats == {str(path.absolute()): "mapped"}
    [pair] = rows(res.pairs)
    assert (pair["prompt"], pair["chosen"], pair["rejected"], pair["chosen_model"], pair["chosen_score"]) == (
        user("Best colour?"), "Blue", "Meh", "x", 0.9)
    [q] = rows(res.quarantine)
    assert q["source_row"] == 1 and q["field"] == "answers.1.text"  # the source path, not the target
    with_system = tmp_path / "system.jsonl"
    with_system.write_text(json.dumps({"q": "hi", "a": "yes", "b": "no", "sys": "Be kind."}) + "\n"
                           + json.dumps({"q": "hi", "a": "yes", "b": "no", "sys": ""}) + "\n")
    res = ingest_files([with_system], options=IngestOptions(columns="prompt=q,chosen=a,rejected=b,system=sys"))
    assert res.pairs.column("prompt").to_pylist() == [[{"role": "system", "content": "Be kind."}, *user("hi")],
                                                      user("hi")]
    with pytest.raises(ValueError, match="unknown target"):
        IngestOptions(columns="answer=x,chosen=a,rejected=b")
    with pytest.raises(ValueError, match="must be mapped"):
        IngestOptions(columns="prompt=q")
    assert IngestOptions.from_dict({"columns": {"chosen": "a", "rejected": "b"}}).columns == {"chosen": "a",
                                                                                              "rejected": "b"}
