"""The tiny local model: deterministic, cached, HF-loadable, with a chat template that keeps prompt prefixes."""

from __future__ import annotations

import hashlib

from transformers import AutoModelForCausalLM, AutoTokenizer

from dpo_train.tiny import make_tiny_model

CORPUS = ["Human: hello there. Assistant: hi, how can I help you today?"] * 20 + ["The cat sat on the mat."] * 20


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_deterministic_and_cached(tmp_path):
    a = make_tiny_model(tmp_path / "a", corpus=CORPUS, vocab_size=300)
    b = make_tiny_model(tmp_path / "b", corpus=CORPUS, vocab_size=300)
    for name in ("model.safetensors", "tokenizer.json"):
        assert _digest(a / name) == _digest(b / name)
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert make_tiny_model(tmp_path / "a", corpus=CORPUS, vocab_size=300) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    c = make_tiny_model(tmp_path / "c", corpus=CORPUS, vocab_size=300, seed=1)
    assert _digest(c / "model.safetensors") != _digest(a / "model.safetensors")


def test_loads_with_template(tmp_path):
    path = make_tiny_model(tmp_path / "m", corpus=CORPUS, vocab_size=300)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert tok.bos_token and tok.eos_token and tok.pad_token and tok.chat_template
    assert model.config.vocab_size == len(tok)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hello there"}], tokenize=False,
                                     add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full = tok(prompt + "hi, how can I help?" + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert full[: len(p_ids)] == p_ids
    assert p_ids.count(tok.bos_token_id) == 1
