"""Small random pair tables for the trainer tests (a helper module, not a test)."""

from __future__ import annotations

import random

from storage.schema import build_pair_table

WORDS = ("How do I bake bread? Mix flour, water, salt and yeast, knead, let it rise, then bake. What is the "
         "capital of France? Paris. Tell me a joke. I am sorry, I cannot help with that request.").split()


def pair_table(n: int, seed: int = 0, weights: list[float] | None = None, long_prompts: int = 0):
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    prompts = [[{"role": "user", "content": text(rng.randint(3, 10) + (200 if i < long_prompts else 0))}]
               for i in range(n)]
    return build_pair_table({
        "prompt": prompts,
        "chosen": [text(rng.randint(3, 12)) for _ in range(n)],
        "rejected": [text(rng.randint(3, 12)) for _ in range(n)],
        "source": ["test"] * n,
        "source_row": list(range(n)),
        "weight": weights if weights is not None else [1.0] * n,
    })
