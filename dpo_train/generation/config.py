"""Sampler settings: one dataclass, every default in one place, strict `from_dict`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from storage.strict import from_dict_strict

DTYPES = ("auto", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class GenerationConfig:
    model: str = ""
    backend: str = "transformers"  # key of dpo_train.generation.BACKENDS
    n: int = 4  # answers per prompt
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()  # stop strings: an answer ends when its text contains one (stop_reason stop_string)
    seed: int = 0
    batch_size: int = 8  # transformers: sequences per forward; vllm schedules its own batches
    tensor_parallel_size: int = 1  # vllm only
    dtype: str = "auto"  # auto: float32 on CPU, the checkpoint's dtype on GPU
    trust_remote_code: bool = False
    device: str | None = None  # transformers only; None picks cuda when available, else cpu
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific kwargs (e.g. vllm gpu_memory_utilization)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str) or not all(isinstance(x, str) and x for x in self.stop):
            raise ValueError(f"invalid GenerationConfig: stop must be a list of non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))  # TOML/JSON give a list; keep the config hashable
        problems = []
        if self.n < 1:
            problems.append(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.tensor_parallel_size < 1:
            problems.append(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if problems:
            raise ValueError("invalid GenerationConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationConfig:
        return from_dict_strict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> GenerationConfig:
        return dataclasses.replace(self, **changes)
