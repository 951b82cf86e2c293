from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dpo_train.generation import (
    GENERATION_SCHEMA,
    GenerationConfig,
    derive_seed,
    generate,
    normalise_prompts,
    shard,
)
from dpo_train.generation import vllm_backend as vb
from dpo_train.generation.core import assemble_table
from dpo_train.generation.hf import sample_next
from dpo_train.templates import encode_prompt, encode_response, render_plain, render_prompt

# ---------------------------------------------------------------- config


def test_config_defaults_and_strict_from_dict():
    cfg = GenerationConfig.from_dict({"model": "m", "n": 2, "temperature": 0.7})
    assert cfg.backend == "transformers" and cfg.n == 2 and cfg.trust_remote_code is False
    assert GenerationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown GenerationConfig keys: \\['nn'\\]"):
        GenerationConfig.from_dict({"model": "m", "nn": 2})


@pytest.mark.parametrize("bad", [{"n": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5},
                                 {"max_new_tokens": 0}, {"dtype": "fp8"}, {"tensor_parallel_size": 0}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="invalid GenerationConfig"):
        GenerationConfig(model="m", **bad)


def test_generate_rejects_unknown_backend_and_missing_model(chat_prompts):
    with pytest.raises(ValueError, match="unknown generation backend 'nope'"):
        generate(chat_prompts, {"model": "m", "backend": "nope"})
    with pytest.raises(ValueError, match="model"):
        generate(chat_prompts, GenerationConfig())


# ---------------------------------------------------------------- prompts, seeds, shards


def test_normalise_prompts_folds_duplicates_and_validates(chat_prompts):
    msgs, ids = normalise_prompts(chat_prompts + chat_prompts[:2])
    assert len(msgs) == len(chat_prompts) == len(set(ids))
    table = pa.table({"prompt": chat_prompts, "prompt_id": [f"p{i}" for i in range(len(chat_prompts))]})
    assert normalise_prompts(table)[1] == [f"p{i}" for i in range(len(chat_prompts))]
    with pytest.raises(ValueError, match="prompt 1 is not"):
        normalise_prompts([chat_prompts[0], []])
    with pytest.raises(ValueError, match="prompt 0 is not"):
        normalise_prompts([[{"content": "no role"}]])


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "abc", 1) == derive_seed(0, "abc", 1)
    assert len({derive_seed(0, "abc", k) for k in range(50)}) == 50
    assert derive_seed(0, "abc") != derive_seed(1, "abc")
    assert 0 <= derive_seed(123, "x", 7) < 2**31


@given(n=st.integers(0, 60), num_shards=st.integers(1, 9))
def test_shard_partitions_every_prompt_exactly_once(n, num_shards):
    items = list(range(n))
    shards = [shard(items, num_shards, i) for i in range(num_shards)]
    assert sorted(x for s in shards for x in s) == items
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


@given(n=st.integers(0, 30), num_shards=st.integers(1, 7))
def test_shard_table_keeps_all_rows(n, num_shards):
    t = pa.table({"prompt_id": [f"p{i}" for i in range(n)]})
    got = [shard(t, num_shards, i).column("prompt_id").to_pylist() for i in range(num_shards)]
    assert sorted(x for s in got for x in s) == sorted(t.column("prompt_id").to_pylist())


def test_shard_rejects_bad_index():
    with pytest.raises(ValueError):
        shard([1, 2], 2, 2)
    with pytest.raises(ValueError):
        shard([1, 2], 0, 0)


# ---------------------------------------------------------------- sampling primitives


def test_sample_next_greedy_and_top_p():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]])
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    assert sample_next(logits, 0.0, 1.0, gens).tolist() == [1, 0]
    # A tiny nucleus keeps only the most likely token, whatever the draw.
    for s in range(20):
        gens = [torch.Generator().manual_seed(s) for _ in range(2)]
        assert sample_next(logits, 1.0, 0.01, gens).tolist() == [1, 0]


def test_plain_template_when_tokenizer_has_none():
    tok = SimpleNamespace(chat_template=None)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert render_prompt(tok, msgs) == render_plain(msgs) == "System: S\n\nUser: Q\n\nAssistant:"


# ---------------------------------------------------------------- vLLM (no GPU needed)


def test_vllm_kwargs_mapping():
    cfg = GenerationConfig(model="/m", backend="vllm", n=3, temperature=0.8, top_p=0.9, max_new_tokens=64,
                           seed=7, tensor_parallel_size=2, dtype="bfloat16", extra={"gpu_memory_utilization": 0.8})
    assert vb.sampling_params_kwargs(cfg, 11) == {"n": 3, "temperature": 0.8, "top_p": 0.9, "max_tokens": 64,
                                                  "seed": 11, "logprobs": 0}
    assert vb.sampling_params_kwargs(cfg.replace(stop=["\n\n"]), 11)["stop"] == ["\n\n"]
    assert vb.llm_kwargs(cfg) == {"model": "/m", "tensor_parallel_size": 2, "seed": 7, "dtype": "bfloat16",
                                  "trust_remote_code": False, "gpu_memory_utilization": 0.8}


def test_vllm_missing_package_gives_clear_error(monkeypatch, chat_prompts):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(vb.BackendUnavailable, match="needs the vllm package.*transformers"):
        generate(chat_prompts, GenerationConfig(model="/m", backend="vllm"))


def test_vllm_without_gpu_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(vb.BackendUnavailable, match="CUDA GPU"):
        vb.require_vllm()


def _fake_request(texts, finish="stop", stop_reason=None):
    return SimpleNamespace(prompt_token_ids=[1, 5, 6], outputs=[
        SimpleNamespace(text=t, token_ids=list(range(len(t))), finish_reason=finish, stop_reason=stop_reason,
                        logprobs=[{i: SimpleNamespace(logprob=-0.5 * (i + 1))} for i in range(len(t))])
        for t in texts])


def test_vllm_records_sampled_ids_logprobs_and_stop_reason():
    samples = vb.outputs_to_samples([_fake_request(["ab"]), _fake_request(["x"], "stop", "\n\n"),
                                     _fake_request(["xyz"], "length"), _fake_request(["q"], "stop", 7)],
                                    [1, 2, 3, 4], 1)
    assert [s.stop_reason for s in samples] == ["eos", "stop_string", "length", "eos"]
    assert [s.finish_reason for s in samples] == ["stop", "stop", "length", "stop"]
    assert samples[0].token_ids == (0, 1) and samples[0].token_logprobs == (-0.5, -1.0)
    assert samples[0].prompt_token_ids == (1, 5, 6)
    msgs, ids = normalise_prompts([[{"role": "user", "content": c}] for c in "abcd"])
    t = assemble_table(msgs, ids, samples, GenerationConfig(model="/m", backend="vllm", n=1))
    assert t.column("token_ids").to_pylist() == [[0, 1], [0], [0, 1, 2], [0]]
    assert t.column("stop_reason").to_pylist() == ["eos", "stop_string", "length", "eos"]
    assert t.column("prompt_token_ids").to_pylist()[0] == [1, 5, 6]


def test_vllm_output_assembly_and_count_check():
    cfg = GenerationConfig(model="/m", backend="vllm", n=2)
    msgs, ids = normalise_prompts([[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]])
    samples = vb.outputs_to_samples([_fake_request(["x", "yy"]), _fake_request(["zzz", "w"], "length")], [5, 6], 2)
    t = assemble_table(msgs, ids, samples, cfg)
    assert t.schema == GENERATION_SCHEMA
    assert t.column("response").to_pylist() == ["x", "yy", "zzz", "w"]
    assert t.column("num_tokens").to_pylist() == [1, 2, 3, 1]
    assert t.column("finish_reason").to_pylist() == ["stop", "stop", "length", "length"]
    assert t.column("seed").to_pylist() == [5, 5, 6, 6]
    with pytest.raises(RuntimeError, match="returned 1 answers for prompt 0"):
        vb.outputs_to_samples([_fake_request(["x"])], [1], 2)
    with pytest.raises(RuntimeError, match="wrong number of answers"):
        assemble_table(msgs, ids, samples[:3], cfg)


def test_vllm_backend_end_to_end_with_fake_module(monkeypatch, tiny_model_dir, chat_prompts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    calls: dict = {}

    class FakeLLM:
        def __init__(self, **kw):
            calls["llm"] = kw

        def get_tokenizer(self):
            return tok

        def generate(self, prompts, params, use_tqdm=True):
            calls["prompts"], calls["params"] = prompts, params
            return [_fake_request([f"r{i}-{k}" for k in range(p["n"])]) for i, p in enumerate(params)]

    fake = SimpleNamespace(LLM=FakeLLM, SamplingParams=lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = GenerationConfig(model=str(tiny_model_dir), backend="vllm", n=3, seed=4)
    t = generate(chat_prompts, cfg)
    assert t.num_rows == 3 * len(chat_prompts)
    assert calls["llm"]["model"] == str(tiny_model_dir) and calls["llm"]["seed"] == 4
    # Token ids from the training template, so vLLM neither re-templates nor adds a second BOS.
    assert calls["prompts"][0]["prompt_token_ids"] == encode_prompt(tok, chat_prompts[0])
    assert [p["seed"] for p in calls["params"]] == [derive_seed(4, pid) for pid in normalise_prompts(chat_prompts)[1]]


# ---------------------------------------------------------------- transformers backend (tiny model)


def _key(t: pa.Table) -> list[tuple]:
    return sorted(zip(t.column("prompt_id").to_pylist(), t.column("sample_index").to_pylist(),
                      t.column("response").to_pylist(), strict=True))


def test_transformers_exactly_n_per_prompt_and_schema(tiny_model_dir, chat_prompts):
    cfg = GenerationConfig(model=str(tiny_model_dir), n=3, max_new_tokens=8, batch_size=4, seed=1)
    t = generate(chat_prompts, cfg)
    assert t.schema == GENERATION_SCHEMA
    assert t.num_rows == 15
    counts = t.group_by("prompt_id").aggregate([("sample_index", "count")]).column(1).to_pylist()
    assert counts == [3] * 5
    assert set(t.column("model").to_pylist()) == {str(tiny_model_dir)}
    for reason, ntok in zip(t.column("finish_reason").to_pylist(), t.column("num_tokens").to_pylist(), strict=True):
        assert 1 <= ntok <= 8 and (reason == "stop" or ntok == 8)
    assert len(set(t.column("response").to_pylist())) > 5  # sampling, not one answer repeated


def test_transformers_keeps_sampled_ids_logprobs_and_why_it_stopped(tiny_model_dir, chat_prompts):
    from transformers import AutoTokenizer

    from dpo_train.kl import path_statistics

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = GenerationConfig(model=str(tiny_model_dir), n=4, max_new_tokens=10, seed=2)
    t = generate(chat_prompts, cfg)
    rows = t.to_pylist()
    assert {r["stop_reason"] for r in rows} <= {"eos", "length"} and any(r["stop_reason"] == "length" for r in rows)
    for r in rows:
        assert r["num_tokens"] == len(r["token_ids"]) == len(r["token_logprobs"])
        assert r["prompt_token_ids"] == encode_prompt(tok, r["prompt"])
        if r["stop_reason"] == "eos":
            assert r["token_ids"][-1] == tok.eos_token_id and r["finish_reason"] == "stop"
        else:  # cut by length: exactly the sampled ids, no EOS that was never sampled
            assert tok.eos_token_id not in r["token_ids"] and len(r["token_ids"]) == 10
        assert r["response"] == tok.decode(r["token_ids"], skip_special_tokens=True)
    # The recorded log-probs are the model's log-probs of those ids (T=1, top-p 1).
    from dpo_train.generation.hf import load_causal_lm

    model = load_causal_lm(str(tiny_model_dir))[0]
    stats = path_statistics(model, None, t.column("prompt_token_ids").to_pylist(), t.column("token_ids").to_pylist(),
                            pad_id=tok.pad_token_id)
    np.testing.assert_allclose(stats.logp_policy, [sum(r["token_logprobs"]) for r in rows], atol=1e-3)


def test_transformers_stop_strings(tiny_model_dir, chat_prompts):
    cfg = GenerationConfig(model=str(tiny_model_dir), n=6, max_new_tokens=24, seed=0)
    free = generate(chat_prompts[:2], cfg).to_pylist()
    common = max("aeiou", key=lambda c: sum(c in r["response"] for r in free))
    t = generate(chat_prompts[:2], cfg.replace(stop=(common,))).to_pylist()
    stopped = [r for r in t if r["stop_reason"] == "stop_string"]
    assert stopped, "the commonest vowel should stop some answers"
    for r in stopped:
        assert common not in r["response"]  # text is cut before the stop string, as vLLM reports it
        assert r["finish_reason"] == "stop" and r["token_ids"]


def test_transformers_answers_do_not_depend_on_batching_or_sharding(tiny_model_dir, chat_prompts):
    cfg = GenerationConfig(model=str(tiny_model_dir), n=2, max_new_tokens=6, batch_size=10, seed=3)
    full = generate(chat_prompts, cfg)
    one_by_one = generate(chat_prompts[::-1], cfg.replace(batch_size=1))
    sharded = pa.concat_tables([generate(shard(chat_prompts, 3, i), cfg.replace(batch_size=3)) for i in range(3)])
    assert _key(full) == _key(one_by_one) == _key(sharded)
    assert _key(generate(chat_prompts, cfg.replace(seed=4))) != _key(full)


def test_transformers_greedy_and_response_encoding(tiny_model_dir, chat_prompts):
    cfg = GenerationConfig(model=str(tiny_model_dir), n=2, max_new_tokens=5, temperature=0.0)
    t = generate(chat_prompts[:2], cfg)
    r = t.column("response").to_pylist()
    assert r[0] == r[1] and r[2] == r[3]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert encode_response(tok, "Paris")[-1] == tok.eos_token_id
    assert render_prompt(tok, chat_prompts[0]).endswith("<|assistant|>\n")


@pytest.mark.parametrize("chat_template", [True, False])
def test_prompt_and_answer_tokens_match_training(tiny_model_dir, chat_prompts, chat_template):
    """Generation, the implicit reward and KL must see exactly the token ids the trainer trains on."""
    from transformers import AutoTokenizer

    from dpo_train.batching import tokenize_pairs
    from storage.schema import build_pair_table

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    if not chat_template:
        tok.chat_template = None
    answers = ["Mix flour.", "Why did the chicken cross the road?", "Paris.", "Read the tutorial", "Yes"]
    pairs = build_pair_table({"prompt": chat_prompts, "chosen": answers, "rejected": ["No"] * 5,
                              "source": ["t"] * 5, "source_row": list(range(5))})
    tp = tokenize_pairs(pairs, tok, max_length=400, max_prompt_length=200)
    assert tp.prompt == [encode_prompt(tok, m) for m in chat_prompts]
    assert tp.chosen == [encode_response(tok, a) for a in answers]


def test_command_line_writes_parquet(tiny_model_dir, tmp_path):
    import json

    import pyarrow.parquet as pq

    from dpo_train.generation.__main__ import main

    src = tmp_path / "prompts.jsonl"
    src.write_text("\n".join(json.dumps(p) for p in [{"prompt": "How do I bake bread?"},
                                                      {"prompt": [{"role": "user", "content": "A joke?"}]},
                                                      {"prompt": "Is it safe?"}]))
    out = tmp_path / "gen" / "shard0.parquet"
    assert main(["--model", str(tiny_model_dir), "--prompts", str(src), "--out", str(out), "--n", "2",
                 "--max-new-tokens", "4", "--num-shards", "2", "--shard-index", "0", "--temperature", "0.7"]) == 0
    t = pq.read_table(out)
    assert t.num_rows == 4 and t.schema.equals(GENERATION_SCHEMA, check_metadata=False)
