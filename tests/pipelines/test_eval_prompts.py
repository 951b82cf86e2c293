"""`dpo clean --eval-prompts` reads eval files with data_quality's one decontam reader."""

import json

import pytest

from pipelines import steps

AE_EVAL = "Can you help me figure out how to sew a button on a shirt?"  # an AlpacaEval instruction


def test_instruction_keyed_jsonl_and_json_array(tmp_path):
    (tmp_path / "ae.jsonl").write_text(json.dumps({"instruction": AE_EVAL}) + "\n", encoding="utf-8")
    (tmp_path / "ae.json").write_text(json.dumps([{"question": AE_EVAL}, "second"]), encoding="utf-8")
    assert steps.read_eval_prompts(str(tmp_path / "ae.jsonl")) == [AE_EVAL]
    assert steps.read_eval_prompts(str(tmp_path / "ae.json")) == [AE_EVAL, "second"]
    assert steps.read_eval_prompts(None) is None


def test_unreadable_eval_file_names_the_file(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl"):
        steps.read_eval_prompts(str(tmp_path / "bad.jsonl"))
