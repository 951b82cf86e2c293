"""`generate(prompts, cfg)` and the backend registry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from dpo_train.generation.config import GenerationConfig
from dpo_train.generation.core import (
    GENERATION_SCHEMA,
    Backend,
    PromptsLike,
    assemble_table,
    distinct_prompts,
)
from dpo_train.generation.hf import generate_transformers
from dpo_train.generation.vllm_backend import generate_vllm
from storage.templates import Labels, row_labels

BACKENDS: dict[str, Backend] = {
    "transformers": generate_transformers,
    "vllm": generate_vllm,
}


def generate(prompts: PromptsLike, cfg: GenerationConfig | dict[str, Any],
             labels_by_source: Mapping[str, Labels] | None = None) -> pa.Table:
    """Sample `cfg.n` answers for every distinct prompt with the configured backend (GENERATION_SCHEMA).

    `prompts` is a list of chat-message lists or a table with a `prompt` column (and optionally `prompt_id` and
    `source`). `labels_by_source`: each source's plain-template turn labels (storage.templates.
    snapshot_turn_labels of the snapshot the prompts come from), so a model without a chat template samples
    from the prompt text `dpo train` and `dpo export` use for that row; None: the default labels.
    """
    if isinstance(cfg, dict):
        cfg = GenerationConfig.from_dict(cfg)
    if not cfg.model:
        raise ValueError("GenerationConfig.model (a local model directory) is required")
    backend = BACKENDS.get(cfg.backend)
    if backend is None:
        raise ValueError(f"unknown generation backend {cfg.backend!r}; known: {sorted(BACKENDS)}")
    msgs, ids, sources = distinct_prompts(prompts)
    if not msgs:
        return GENERATION_SCHEMA.empty_table()
    labels = row_labels(sources, labels_by_source, len(msgs))
    return assemble_table(msgs, ids, backend(msgs, ids, cfg, labels), cfg, sources)
