"""Shared fixtures for the dpo_train tests: one tiny local model, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

# Small and fixed, so the tokenizer trains in well under a second and every run builds the same model.
TINY_CORPUS = [
    "How do I bake bread? Mix flour, water, salt and yeast, knead, let it rise, then bake.",
    "What is the capital of France? The capital of France is Paris.",
    "Can you help me write a poem? Of course. Roses are red, violets are blue.",
    "Tell me a joke. Why did the chicken cross the road? To get to the other side.",
    "How can I learn Python? Start with the official tutorial and write small programs.",
    "Is it safe to eat raw eggs? Raw eggs can carry salmonella, so cooking them is safer.",
    "I am sorry, I cannot help with that request. Please ask me something else.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>-+=*/\\&%$#@^_|~`",
] * 4


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dpo_train.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "policy", seed=0, corpus=TINY_CORPUS,
                           vocab_size=512, n_layers=1, hidden=32, heads=2, max_positions=256)


@pytest.fixture(scope="session")
def tiny_ref_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny model with the same tokenizer but other weights: a stand-in reference policy."""
    from dpo_train.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "reference", seed=1, corpus=TINY_CORPUS,
                           vocab_size=512, n_layers=1, hidden=32, heads=2, max_positions=256)


@pytest.fixture
def chat_prompts() -> list[list[dict[str, str]]]:
    return [
        [{"role": "user", "content": "How do I bake bread?"}],
        [{"role": "user", "content": "Tell me a joke."}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "How can I learn Python quickly and well?"}],
        [{"role": "user", "content": "Is it safe?"}],
    ]


@pytest.fixture(scope="session")
def plain_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny policy without a chat template (prompts in the plain template, with each source's labels)."""
    from tests.conftest import without_chat_template

    return without_chat_template(tiny_model_dir, tmp_path_factory.mktemp("plain") / "policy")


@pytest.fixture(scope="session")
def plain_ref_dir(tiny_ref_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import without_chat_template

    return without_chat_template(tiny_ref_dir, tmp_path_factory.mktemp("plain") / "reference")
