"""`generate(prompts, cfg)` and the backend registry."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from dpo_train.generation.config import GenerationConfig
from dpo_train.generation.core import (
    GENERATION_SCHEMA,
    Backend,
    PromptsLike,
    assemble_table,
    normalise_prompts,
)
from dpo_train.generation.hf import generate_transformers
from dpo_train.generation.vllm_backend import generate_vllm

BACKENDS: dict[str, Backend] = {
    "transformers": generate_transformers,
    "vllm": generate_vllm,
}


def generate(prompts: PromptsLike, cfg: GenerationConfig | dict[str, Any]) -> pa.Table:
    """Sample `cfg.n` answers for every distinct prompt with the configured backend (GENERATION_SCHEMA).

    `prompts` is a list of chat-message lists or a table with a `prompt` column (and optionally `prompt_id`).
    """
    if isinstance(cfg, dict):
        cfg = GenerationConfig.from_dict(cfg)
    if not cfg.model:
        raise ValueError("GenerationConfig.model (a local model directory) is required")
    backend = BACKENDS.get(cfg.backend)
    if backend is None:
        raise ValueError(f"unknown generation backend {cfg.backend!r}; known: {sorted(BACKENDS)}")
    msgs, ids = normalise_prompts(prompts)
    if not msgs:
        return GENERATION_SCHEMA.empty_table()
    return assemble_table(msgs, ids, backend(msgs, ids, cfg), cfg)
