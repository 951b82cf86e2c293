from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dpo_train.judges import (
    BradleyTerryJudge,
    BradleyTerryModel,
    ImplicitRewardJudge,
    LLMPairwiseJudge,
    PythonFunctionJudge,
    RewardModelJudge,
    load_function,
    make_judge,
    parse_verdict,
    score,
    train_bradley_terry,
)
from dpo_train.judges.logprobs import response_logprobs
from dpo_train.templates import encode_prompt, encode_response
from storage.schema import build_pair_table

Q = [{"role": "user", "content": "How do I bake bread?"}]
Q2 = [{"role": "user", "content": "Tell me a joke."}]


def rows(prompts, responses) -> pa.Table:
    return pa.table({"prompt": prompts, "response": responses})


# ---------------------------------------------------------------- registry


def test_make_judge_is_strict():
    with pytest.raises(ValueError, match="unknown judge type 'nope'"):
        make_judge({"type": "nope"})
    with pytest.raises(ValueError, match="unknown settings for judge 'python': \\['fn'\\]"):
        make_judge({"type": "python", "fn": "x:y"})
    j = make_judge({"type": "python", "function": "dpo_train.judges.functions:answer_length"})
    assert isinstance(j, PythonFunctionJudge)


# ---------------------------------------------------------------- python function


def test_python_function_validation(tmp_path, monkeypatch):
    (tmp_path / "my_scorers.py").write_text(
        "def per_row(prompt, response):\n    return len(response)\n"
        "def batched(prompts, responses):\n    return [len(r) * 2 for r in responses]\n"
        "def one_arg(x):\n    return 1\n"
        "NOT_CALLABLE = 3\n"
        "def bad(prompt, response):\n    return 'high'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, msg in [("no_colon", "must be written"), ("a:b:c", "must be written"), ("../x:y", "must be written"),
                      ("missing_mod_zz:f", "cannot import"), ("my_scorers:nope", "no attribute"),
                      ("my_scorers:NOT_CALLABLE", "not callable"), ("my_scorers:one_arg", "two positional")]:
        with pytest.raises(ValueError, match=msg):
            load_function(spec)
    t = rows([Q, Q2], ["abc", "de"])
    j = PythonFunctionJudge("my_scorers:per_row")
    out = score(t, j)
    assert out.column("score").to_pylist() == [3.0, 2.0]
    assert out.column("judge").to_pylist()[0] == j.label == f"python:{j.version}"
    assert j.version.startswith("my_scorers:per_row@")
    assert PythonFunctionJudge("my_scorers:batched", batched=True).score(t).tolist() == [6.0, 4.0]
    with pytest.raises(RuntimeError, match="non-numeric"):
        PythonFunctionJudge("my_scorers:bad").score(t)


def test_pointwise_compare_uses_scores():
    j = PythonFunctionJudge("dpo_train.judges.functions:answer_length")
    assert j.compare([Q, Q, Q], ["a b c", "a", "a b"], ["a", "a b c", "c d"]).tolist() == [1.0, 0.0, 0.5]


# ---------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def tiny_rm_dir(tiny_model_dir, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    cfg.num_labels = 1
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(cfg).eval()
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_reward_model_judge_scores_deterministically(tiny_rm_dir):
    t = rows([Q, Q, Q2, Q2, Q], ["Mix flour and water.", "No.", "Why did the chicken cross the road?", "Ha",
                                 "Mix flour and water."])
    j = make_judge({"type": "reward_model", "path": str(tiny_rm_dir), "batch_size": 2})
    s = j.score(t)
    assert s.shape == (5,) and np.isfinite(s).all()
    assert s[0] == pytest.approx(s[4], abs=1e-5)  # same conversation, other batch and padding
    assert len({round(x, 5) for x in s[:4]}) == 4
    one = RewardModelJudge(str(tiny_rm_dir), batch_size=1).score(t)
    np.testing.assert_allclose(one, s, atol=1e-5)
    assert len(j.version) == 12 and j.label.startswith("reward_model:")


def test_reward_model_refuses_non_safetensors_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="safetensors"):
        _ = RewardModelJudge(str(tmp_path)).version


# ---------------------------------------------------------------- implicit reward


def test_response_logprobs_match_unbatched_forward(tiny_model_dir):
    import torch

    from dpo_train.generation.hf import load_causal_lm

    model, tok, dev = load_causal_lm(str(tiny_model_dir))
    prompts, resp = [Q, Q2, Q], ["Mix flour.", "A long joke about a chicken and a road", ""]
    got, counts = response_logprobs(model, tok, prompts, resp, batch_size=3)
    for i in range(3):
        p, r = encode_prompt(tok, prompts[i]), encode_response(tok, resp[i])
        ids = torch.tensor([p + r])
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        want = sum(float(lp[len(p) - 1 + k, t]) for k, t in enumerate(r))
        assert got[i] == pytest.approx(want, abs=1e-3)
        assert counts[i] == len(r)


def test_implicit_reward_judge(tiny_model_dir, tiny_ref_dir):
    t = rows([Q, Q2], ["Mix flour.", "Why did the chicken cross the road?"])
    same = ImplicitRewardJudge(str(tiny_model_dir), str(tiny_model_dir), beta=0.5)
    np.testing.assert_allclose(same.score(t), 0.0, atol=1e-6)
    j = ImplicitRewardJudge(str(tiny_model_dir), str(tiny_ref_dir), beta=0.5)
    s = j.score(t)
    assert np.abs(s).min() > 1e-3
    np.testing.assert_allclose(ImplicitRewardJudge(str(tiny_model_dir), str(tiny_ref_dir), beta=1.0).score(t), 2 * s,
                               rtol=1e-6)
    assert j.version != same.version and "b0.5" in j.version
    with pytest.raises(ValueError, match="beta"):
        ImplicitRewardJudge("a", "b", beta=0)


# ---------------------------------------------------------------- LLM pairwise judge


class _JudgeServer:
    """A stand-in for an OpenAI-compatible server: answers by a rule over the two answers it is shown."""

    def __init__(self, rule):
        outer = self
        self.requests: list[dict] = []
        self.rule = rule

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                content = body["messages"][-1]["content"]
                a = content.split("[Answer A]\n")[1].split("\n\n[Answer B]")[0]
                b = content.split("[Answer B]\n")[1].split("\n\nWhich answer")[0]
                status, text = outer.rule(a, b)
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_parse_verdict():
    assert parse_verdict("A") == "A" and parse_verdict(" [[B]] ") == "B" and parse_verdict("Answer a.") == "A"
    assert parse_verdict("A and B are equal") is None and parse_verdict("") is None and parse_verdict("Both") is None


def test_llm_judge_prefers_longer_answers_whatever_the_order(monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test")
    with _JudgeServer(lambda a, b: (200, "A" if len(a) > len(b) else "B")) as srv:
        j = LLMPairwiseJudge(srv.url, "judge-model", api_key_env="TEST_JUDGE_KEY", seed=3)
        n = 30
        p = j.compare([Q] * n, [f"a long answer number {i}" for i in range(n)], [f"s{i}" for i in range(n)])
        assert p.tolist() == [1.0] * n
        assert 0 < j.stats["swapped"] < n  # both orders were shown
        assert srv.requests[0]["path"] == "/v1/chat/completions"
        assert srv.requests[0]["auth"] == "Bearer sk-test"
        assert srv.requests[0]["body"]["model"] == "judge-model"
        again = LLMPairwiseJudge(srv.url + "/v1", "judge-model", seed=3)
        again.compare([Q] * n, [f"a long answer number {i}" for i in range(n)], [f"s{i}" for i in range(n)])
        assert again.stats["swapped"] == j.stats["swapped"]  # the order is a function of seed and content
        t = rows([Q, Q, Q, Q2, Q2], ["xx", "xxxxxx", "x", "yyyy", "y"])
        s = score(t, j).column("score").to_pylist()
        assert s == [0.5, 1.0, 0.0, 1.0, 0.0]


def test_llm_judge_cancels_position_bias():
    with _JudgeServer(lambda a, b: (200, "A")) as srv:  # always prefers whatever is shown first
        j = LLMPairwiseJudge(srv.url, "m", api_key_env=None, seed=0)
        p = j.compare([Q] * 200, [f"a{i}" for i in range(200)], [f"b{i}" for i in range(200)])
    assert 0.35 < p.mean() < 0.65


def test_llm_judge_unparsed_replies_and_errors():
    with _JudgeServer(lambda a, b: (200, "I cannot decide")) as srv:
        j = LLMPairwiseJudge(srv.url, "m", api_key_env=None)
        assert j.compare([Q, Q], ["a", "b"], ["c", "d"]).tolist() == [0.5, 0.5]
        assert j.stats["unparsed"] == 2
    with _JudgeServer(lambda a, b: (500, "boom")) as srv:
        j = LLMPairwiseJudge(srv.url, "m", api_key_env=None, max_retries=1)
        with pytest.raises(RuntimeError, match="LLM judge request .* failed"):
            j.compare([Q], ["a"], ["b"])
        assert len(srv.requests) == 2  # one retry


def test_llm_judge_single_answer_scores_nan():
    j = LLMPairwiseJudge("http://127.0.0.1:9", "m", api_key_env=None)
    assert np.isnan(j.score(rows([Q], ["only one"]))).all()


# ---------------------------------------------------------------- Bradley-Terry


def _planted_pairs(n: int, seed: int) -> pa.Table:
    rng = random.Random(seed)
    vocab = "bread flour water salt yeast oven paris france poem joke road chicken python tutorial".split()
    prompts, chosen, rejected = [], [], []
    for _ in range(n):
        q = " ".join(rng.choices(vocab, k=5))
        filler = lambda: " ".join(rng.choices(vocab, k=rng.randint(4, 12)))  # noqa: E731
        prompts.append([{"role": "user", "content": q}])
        # The planted rule: preferred answers say "kindly", dispreferred ones "rudely"; lengths are random.
        chosen.append(f"{filler()} kindly {filler()}")
        rejected.append(f"{filler()} rudely {filler()}")
    return build_pair_table({"prompt": prompts, "chosen": chosen, "rejected": rejected, "source": ["synthetic"] * n,
                             "source_row": list(range(n))})


def test_bradley_terry_learns_planted_preference_and_round_trips(tmp_path):
    model = train_bradley_terry(_planted_pairs(300, 0), dim=512, steps=150, snapshot_id="synthetic@1")
    assert model.meta["val_pairs"] > 10 and model.meta["val_accuracy"] > 0.9
    assert model.meta["snapshot_id"] == "synthetic@1"
    test = _planted_pairs(100, 1)
    pt = test.column("prompt_text").to_pylist()
    margin = model.reward(pt, test.column("chosen").to_pylist()) - model.reward(pt, test.column("rejected").to_pylist())
    assert (margin > 0).mean() > 0.9
    path = model.save(tmp_path / "bt.safetensors")
    j = make_judge({"type": "bradley_terry", "path": str(path)})
    assert isinstance(j, BradleyTerryJudge)
    s = j.score(rows(test.column("prompt").to_pylist(), test.column("chosen").to_pylist()))
    np.testing.assert_allclose(s, model.reward(pt, test.column("chosen").to_pylist()), rtol=1e-5, atol=1e-6)
    assert BradleyTerryModel.load(path).meta == model.meta
    assert len(j.version) == 12


def test_bradley_terry_handles_empty_and_odd_text():
    model = train_bradley_terry(_planted_pairs(20, 2), dim=64, steps=5)
    r = model.reward(["", "q"], ["", "!!! ... ???"])
    assert r.shape == (2,) and np.isfinite(r).all()
    with pytest.raises(ValueError, match="at least 2 pairs"):
        train_bradley_terry(_planted_pairs(1, 0))
