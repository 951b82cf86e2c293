"""Sampling, log-prob judging and the KL probe feed a model without a chat template the prompt `dpo train` uses.

Without a chat template a prompt's turn labels are its source's (HH-RLHF keeps "Human:";
storage.templates.snapshot_turn_labels). A round that sampled, judged or probed an HH prompt as "User: ..."
would work on a text that offline training (and `dpo export`) never showed the policy.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from transformers import AutoTokenizer

from dpo_train.batching import tokenize_pairs
from dpo_train.generation import GenerationConfig, generate
from dpo_train.generation.hf import load_causal_lm
from dpo_train.judges import make_judge
from dpo_train.kl import path_statistics
from dpo_train.templates import encode_response
from storage.templates import snapshot_turn_labels


@pytest.fixture
def hh(workspace, short_hh):
    """(pairs, labels_by_source) of a snapshot of real HH rows."""
    from pipelines.steps import ingest

    info = ingest(workspace, [str(short_hh)], "hh")
    return workspace.read(info.snapshot_id), snapshot_turn_labels(workspace, info)


def trained_prompt_ids(tok, pairs: pa.Table, labels) -> dict[str, list[int]]:
    """{prompt_id: the prompt ids `dpo train` trains on} (nothing truncated at these lengths)."""
    data = tokenize_pairs(pairs, tok, max_length=4096, max_prompt_length=4000, labels_by_source=labels)
    assert data.stats.kept == pairs.num_rows
    ids = dict(zip(pairs.column("prompt_id").to_pylist(), data.prompt, strict=True))
    assert all(tok.decode(p).startswith("Human: ") for p in ids.values())
    return ids


def prompts_of(pairs: pa.Table) -> pa.Table:
    return pairs.select(["prompt_id", "prompt", "source"])


def test_transformers_backend_samples_the_trained_hh_prompt(plain_model_dir, hh):
    pairs, labels = hh
    tok = AutoTokenizer.from_pretrained(plain_model_dir)
    want = trained_prompt_ids(tok, pairs, labels)
    gens = generate(prompts_of(pairs), GenerationConfig(model=str(plain_model_dir), n=1, max_new_tokens=2),
                    labels_by_source=labels)
    got = dict(zip(gens.column("prompt_id").to_pylist(), gens.column("prompt_token_ids").to_pylist(), strict=True))
    assert got == want
    assert set(gens.column("source").to_pylist()) == set(pairs.column("source").to_pylist())


def test_vllm_backend_samples_the_trained_hh_prompt(plain_model_dir, hh, monkeypatch):
    pairs, labels = hh
    tok = AutoTokenizer.from_pretrained(plain_model_dir)
    want = trained_prompt_ids(tok, pairs, labels)
    sent: list = []

    class FakeLLM:
        def __init__(self, **kw):
            pass

        def get_tokenizer(self):
            return tok

        def generate(self, prompts, params, use_tqdm=True):
            sent.extend(p["prompt_token_ids"] for p in prompts)
            comp = SimpleNamespace(text="x", token_ids=[tok.eos_token_id], logprobs=None, finish_reason="stop",
                                   stop_reason=None)
            return [SimpleNamespace(outputs=[comp] * p["n"], prompt_token_ids=q["prompt_token_ids"])
                    for p, q in zip(params, prompts, strict=True)]

    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=FakeLLM, SamplingParams=lambda **kw: kw))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gens = generate(prompts_of(pairs), GenerationConfig(model=str(plain_model_dir), backend="vllm", n=1),
                    labels_by_source=labels)
    assert sent == [want[pid] for pid in gens.column("prompt_id").to_pylist()]


def test_implicit_judge_scores_the_trained_hh_prompt(plain_model_dir, plain_ref_dir, hh):
    pairs, labels = hh
    judge = make_judge({"type": "implicit", "policy": str(plain_model_dir), "reference": str(plain_ref_dir),
                        "beta": 1.0}, labels_by_source=labels)
    table = pa.table({"prompt": pairs.column("prompt"), "response": pairs.column("chosen"),
                      "source": pairs.column("source")})
    pi, tok, _ = load_causal_lm(str(plain_model_dir))
    ref = load_causal_lm(str(plain_ref_dir))[0]
    want = trained_prompt_ids(tok, pairs, labels)
    answers = [encode_response(tok, r) for r in pairs.column("chosen").to_pylist()]
    stats = path_statistics(pi, ref, [want[p] for p in pairs.column("prompt_id").to_pylist()], answers,
                            pad_id=int(tok.pad_token_id))
    expected = stats.logp_policy - stats.logp_reference
    np.testing.assert_allclose(judge.score(table), expected, atol=1e-3)
    # Pairwise use (win rates) renders the same prompts when given the rows' sources.
    n = pairs.num_rows
    p = judge.compare(pairs.column("prompt").to_pylist(), pairs.column("chosen").to_pylist(),
                      pairs.column("rejected").to_pylist(), sources=pairs.column("source").to_pylist())
    rej = [encode_response(tok, r) for r in pairs.column("rejected").to_pylist()]
    s_rej = path_statistics(pi, ref, [want[p] for p in pairs.column("prompt_id").to_pylist()], rej,
                            pad_id=int(tok.pad_token_id))
    margin = expected - (s_rej.logp_policy - s_rej.logp_reference)
    assert p.shape == (n,) and np.array_equal(p[np.abs(margin) > 1e-3], (margin > 0)[np.abs(margin) > 1e-3])


def test_win_rate_passes_the_rows_sources_to_the_judge():
    from dpo_train.evaluation import win_rate
    from dpo_train.judges import PythonFunctionJudge

    seen = {}

    class Spy(PythonFunctionJudge):
        def compare(self, prompts, a, b, sources=None):
            seen["sources"] = sources
            return super().compare(prompts, a, b, sources)

    q = [{"role": "user", "content": "q"}]
    t = pa.table({"prompt_id": ["p", "p"], "sample_index": [0, 1], "prompt": [q, q], "response": ["a", "bb"],
                  "source": ["hh.jsonl", "hh.jsonl"]})
    win_rate(t, t, Spy("dpo_train.judges.functions:answer_length"))
    assert seen["sources"] == ["hh.jsonl", "hh.jsonl"]


def test_reward_model_judge_renders_the_hh_prompt_with_its_labels(plain_model_dir, hh, tmp_path, monkeypatch):
    from transformers import AutoConfig, LlamaForSequenceClassification

    from dpo_train.judges import reward_model

    cfg = AutoConfig.from_pretrained(plain_model_dir)
    cfg.num_labels = 1
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "rm", safe_serialization=True)
    AutoTokenizer.from_pretrained(plain_model_dir).save_pretrained(tmp_path / "rm")
    pairs, labels = hh
    texts: list[str] = []
    real = reward_model.render_conversation

    def spy(*args, **kw):
        texts.append(real(*args, **kw))
        return texts[-1]

    monkeypatch.setattr(reward_model, "render_conversation", spy)
    judge = make_judge({"type": "reward_model", "path": str(tmp_path / "rm")}, labels_by_source=labels)
    judge.score(pa.table({"prompt": pairs.column("prompt"), "response": pairs.column("chosen"),
                          "source": pairs.column("source")}))
    assert len(texts) == pairs.num_rows and all(t.startswith("Human: ") for t in texts)


def test_kl_probe_samples_the_trained_hh_prompt(workspace, plain_model_dir, plain_ref_dir, hh, monkeypatch):
    from dpo_train.config import TrainConfig
    from dpo_train.generation import hf
    from dpo_train.metrics import KLProbe
    from dpo_train.trainer import train

    pairs, labels = hh
    tok = AutoTokenizer.from_pretrained(plain_model_dir)
    want = {tuple(p) for p in trained_prompt_ids(tok, pairs, labels).values()}
    probed: list = []
    real = hf.generate_batch

    def spy(model, tok, prompt_ids, *args, **kw):
        probed.extend(tuple(p) for p in prompt_ids)
        return real(model, tok, prompt_ids, *args, **kw)

    monkeypatch.setattr(hf, "generate_batch", spy)
    train(TrainConfig(snapshot="hh", model=str(plain_model_dir), per_device_batch_size=4, max_length=256,
                      max_prompt_length=200, max_steps=1, save_steps=0, report=False), workspace,
          kl_probe=KLProbe(str(plain_ref_dir), every=1, prompts=3, samples=1, max_new_tokens=2))
    assert probed and set(probed) <= want
