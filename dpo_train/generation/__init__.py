"""Generation backends behind one interface: `generate(prompts, GenerationConfig) -> pa.Table`."""

from dpo_train.generation.api import BACKENDS, generate
from dpo_train.generation.config import GenerationConfig
from dpo_train.generation.core import GENERATION_SCHEMA, Sample, derive_seed, normalise_prompts, shard

__all__ = ["BACKENDS", "GENERATION_SCHEMA", "GenerationConfig", "Sample", "derive_seed", "generate",
           "normalise_prompts", "shard"]
