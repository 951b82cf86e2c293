"""Generated pairs reach the trainer as the token ids that were sampled: no re-encoding, no unsampled EOS."""

from __future__ import annotations

import pyarrow as pa
import pytest
from train_pairs import pair_table

from dpo_train.batching import tokenize_pairs
from dpo_train.generation import GenerationConfig, generate
from dpo_train.judges import PythonFunctionJudge, score
from dpo_train.pairing import PairingConfig, build_pairs
from dpo_train.sampled_pairs import tokenize_table

KW = dict(max_length=200, max_prompt_length=100)


@pytest.fixture(scope="module")
def generated_pairs(tiny_model_dir):
    prompts = [[{"role": "user", "content": q}] for q in
               ("How do I bake bread?", "Tell me a joke.", "What is the capital of France?", "Is it safe?",
                "How can I learn Python?", "Can you help me write a poem?")]
    gens = generate(prompts, GenerationConfig(model=str(tiny_model_dir), n=4, max_new_tokens=12, seed=3))
    scored = score(gens, PythonFunctionJudge("dpo_train.judges.functions:answer_length"))
    return gens, build_pairs(scored, PairingConfig(truncated="keep"), round=1).pairs


def test_sampled_ids_are_used_as_sampled(generated_pairs, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    gens, pairs = generated_pairs
    data = tokenize_table(pairs, tok, **KW)
    assert data.chosen == pairs.column("chosen_token_ids").to_pylist()
    assert data.rejected == pairs.column("rejected_token_ids").to_pylist()
    assert data.prompt == pairs.column("prompt_token_ids").to_pylist()
    stops = pairs.column("chosen_stop").to_pylist() + pairs.column("rejected_stop").to_pylist()
    assert "length" in stops  # the fixture has truncated answers...
    for ids, stop in zip(data.chosen + data.rejected, stops, strict=True):
        assert (ids[-1] == tok.eos_token_id) == (stop == "eos")  # ...and they get no EOS
    assert data.stats.sampled_rows == pairs.num_rows
    assert data.stats.answers_without_eos == stops.count("length")
    # The text path would have appended an EOS to every truncated answer.
    text = tokenize_pairs(pairs, tok, **KW)
    assert all(ids[-1] == tok.eos_token_id for ids in text.chosen + text.rejected)


def test_ids_that_do_not_survive_decode_encode_are_kept(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    merged = tok("the", add_special_tokens=False)["input_ids"]
    split = [tok.convert_tokens_to_ids(c) for c in "the"]  # the same text, sampled one letter at a time
    assert split != merged and tok.decode(split) == tok.decode(merged) == "the"
    t = pair_table(1).append_column("x", pa.array([0]))  # offline row, then make it "generated"
    t = t.drop(["x", "prompt_token_ids", "chosen_token_ids", "rejected_token_ids"])
    t = t.append_column("prompt_token_ids", pa.array([[1, 5]], pa.list_(pa.int32())))
    t = t.append_column("chosen_token_ids", pa.array([split], pa.list_(pa.int32())))
    t = t.append_column("rejected_token_ids", pa.array([merged], pa.list_(pa.int32())))
    data = tokenize_table(t, tok, **KW)
    assert data.chosen == [split] and data.rejected == [merged] and data.prompt == [[1, 5]]


def test_offline_rows_keep_the_text_path(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    t = pair_table(4)
    assert tokenize_table(t, tok, **KW).chosen == tokenize_pairs(t, tok, **KW).chosen


def test_trainer_trains_on_the_sampled_ids(workspace, tiny_model_dir, generated_pairs):
    from dpo_train.trainer import TrainConfig, train

    _, pairs = generated_pairs
    workspace.publish("gen", pairs)
    assert workspace.read("gen@1").column("chosen_token_ids").to_pylist() == \
        pairs.column("chosen_token_ids").to_pylist()  # the snapshot keeps the ids
    res = train(TrainConfig(snapshot="gen@1", model=str(tiny_model_dir), lr=1e-3, per_device_batch_size=2,
                            max_length=200, max_prompt_length=100, max_steps=2, save_steps=0, report=False),
                workspace)
    assert res.tokenize_stats["sampled_rows"] == pairs.num_rows
    stops = pairs.column("chosen_stop").to_pylist() + pairs.column("rejected_stop").to_pylist()
    assert res.tokenize_stats["answers_without_eos"] == stops.count("length") > 0
