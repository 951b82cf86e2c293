"""Configuration of iterative DPO rounds (`dpo iterate --config F`): one strict model, defaults in one place.

The sub-tables `generation`, `judge`, `pairs`, `gate` and `train` are passed to the part that owns them
(GenerationConfig, make_judge, PairingConfig, GateConfig, TrainConfig), each of which rejects unknown keys;
they are validated here, at load time, so a typo fails before round 1 starts rather than in the middle of it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.config import ConfigError

BUILTIN = "builtin:"
# Keys the round flow sets itself; a user setting them would silently be overridden, so they are refused.
_FLOW_OWNED_TRAIN_KEYS = {"snapshot", "model", "ref_model", "output_dir", "run_id"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PromptsConfig(_Strict):
    snapshot: str  # pairs snapshot whose distinct prompts are the pool ("alpaca" or "alpaca@2")
    # Files to ingest + clean into `snapshot` when the workspace does not have it yet (cached like `dpo refresh`).
    sources: list[str] = Field(default_factory=list)
    format: str | None = None
    per_round: int = Field(16, ge=1)  # prompts sampled per round (fresh ones each round while the pool lasts)
    eval_prompts: int = Field(8, ge=1)  # held-out prompts, fixed across rounds, for evaluation
    max_prompt_chars: int = Field(1500, ge=1)  # longer prompts are skipped (and counted) before sampling
    seed: int = 0


class EvalConfig(_Strict):
    samples: int = Field(2, ge=1)  # answers per eval prompt (fresh sampling seeds every round)
    kl: bool = True  # KL(policy || reference) on the sampled ids, exact per position + Monte Carlo, with s.e.
    win_rate: bool = True  # vs the previous round and vs the reference, with s.e.
    kl_probe_steps: int = Field(0, ge=0)  # > 0: also measure the on-policy KL every this many training steps


class IterateConfig(_Strict):
    experiment: str = Field("iterate", pattern=r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
    workspace: str | None = None
    rounds: int = Field(2, ge=1)
    # HF-format directory of the initial policy (also the reference when reference = "initial"), or
    # "builtin:tiny" for the tiny local model (built into <workspace>/models/tiny, no download).
    policy: str
    reference: Literal["initial", "previous"] = "initial"
    prompts: PromptsConfig
    generation: dict[str, Any] = Field(default_factory=lambda: {"n": 4, "max_new_tokens": 48, "temperature": 1.0})
    judge: dict[str, Any] = Field(
        default_factory=lambda: {"type": "python", "function": "dpo_train.judges.functions:sentiment"})
    judge_train_on: str | None = None  # for a bradley_terry judge: the snapshot to train it on (once)
    pairs: dict[str, Any] = Field(default_factory=lambda: {"rule": "best_vs_worst", "min_margin": 0.0})
    # GateConfig for the round's pairs. On-policy pairs are not length-reweighted unless asked: the default
    # length_bias mode here is "stats" (set length_bias.mode = "reweight" to reweight).
    gate: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("train")
    @classmethod
    def _no_flow_owned(cls, v: dict[str, Any]) -> dict[str, Any]:
        bad = sorted(set(v) & _FLOW_OWNED_TRAIN_KEYS)
        if bad:
            raise ValueError(f"train keys {bad} are set by the round flow (policy/reference/snapshot per round)")
        return v

    def round_gate(self) -> dict[str, Any]:
        """The gate config a round runs: the user's, with length reweighting off unless they configured it."""
        return {**self.gate, "length_bias": {"mode": "stats", **self.gate.get("length_bias", {})}}

    def check_parts(self) -> None:
        """Validate the sub-tables with their owners' strict parsers."""
        from data_quality.gate import GateConfig
        from dpo_train.config import TrainConfig
        from dpo_train.generation import GenerationConfig
        from dpo_train.pairing import PairingConfig

        if self.policy.startswith(BUILTIN) and self.policy != BUILTIN + "tiny":
            raise ValueError(f"unknown built-in policy {self.policy!r}; the only one is 'builtin:tiny'")
        GenerationConfig.from_dict({**self.generation, "model": self.policy})
        PairingConfig.from_dict(self.pairs)
        GateConfig.from_dict(self.round_gate())
        TrainConfig.from_dict({**self.train, "snapshot": "x", "model": self.policy})
        if self.judge.get("type") == "bradley_terry" and not (self.judge.get("path") or self.judge_train_on):
            raise ValueError("a bradley_terry judge needs `path` or a top-level `judge_train_on` snapshot")


def parse_iterate_config(raw: dict[str, Any], *, where: str = "<config>", base: Path | None = None) -> IterateConfig:
    raw = dict(raw.get("iterate", raw))
    if base is not None:  # relative paths in a config file are relative to the file
        for key in ("policy", "workspace"):
            value = raw.get(key)
            if isinstance(value, str) and value and not value.startswith(BUILTIN) and not Path(value).is_absolute():
                raw[key] = str((base / value).resolve())
        prompts = raw.get("prompts")
        if isinstance(prompts, dict) and isinstance(prompts.get("sources"), list):
            raw["prompts"] = {**prompts, "sources": [s if Path(s).is_absolute() else str((base / s).resolve())
                                                     for s in prompts["sources"]]}
    try:
        cfg = IterateConfig.model_validate(raw)
        cfg.check_parts()
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{where}: invalid iterate config:\n" + "\n".join(lines)) from exc
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return cfg


def load_iterate_config(path: str | Path) -> IterateConfig:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: config file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: {exc}") from exc
    return parse_iterate_config(raw, where=str(p), base=p.parent)
