"""The policy's own implicit DPO reward: beta * (log pi(y|x) - log pi_ref(y|x))."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from dpo_train.judges.base import Judge, check_rows, fingerprint_model_dir
from dpo_train.judges.logprobs import response_logprobs
from storage.templates import Labels


def policy_logprobs(path: str, prompts: list, responses: list[str], labels: list[Labels | None] | None = None, *,
                    batch_size: int = 8, dtype: str = "auto", device: str | None = None,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Load a causal LM and return (summed response log-probs, response token counts)."""
    from dpo_train.generation.hf import load_causal_lm

    model, tok, dev = load_causal_lm(path, dtype=dtype, device=device)
    try:
        return response_logprobs(model, tok, prompts, responses, labels, batch_size=batch_size, device=dev)
    finally:
        del model


@dataclass
class ImplicitRewardJudge(Judge):
    """Sums log-probs over the response tokens (EOS included) given the training-templated prompt."""

    policy: str
    reference: str
    beta: float = 0.1
    batch_size: int = 8
    dtype: str = "auto"
    device: str | None = None
    kind: ClassVar[str] = "implicit"
    _version: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")

    @property
    def version(self) -> str:
        if self._version is None:
            pol = fingerprint_model_dir(self.policy)
            ref = fingerprint_model_dir(self.reference)
            self._version = f"{pol}-{ref}-b{self.beta:g}"
        return self._version

    def score(self, table: pa.Table) -> np.ndarray:
        check_rows(table)
        prompts = table.column("prompt").to_pylist()
        responses = table.column("response").to_pylist()
        labels = self.turn_labels(table)
        kw: dict[str, Any] = {"batch_size": self.batch_size, "dtype": self.dtype, "device": self.device}
        lp_pi, _ = policy_logprobs(self.policy, prompts, responses, labels, **kw)
        lp_ref, _ = policy_logprobs(self.reference, prompts, responses, labels, **kw)
        return self.beta * (lp_pi - lp_ref)
