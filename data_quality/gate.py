"""The quality gate: an ordered list of checks over a pair table, read top to bottom.

Each step takes the rows the previous one kept; every dropped row lands in `rejects` with its rule, reason,
parameters and (where relevant) the pair it duplicated, so input rows == kept + rejected, always. Order
matters and is deliberate: normalise before anything compares text; count contradicting votes before exact
dedup collapses them; run the expensive near-dup pass on what is left; reweight last, on the final rows.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from data_quality.checks import (
    contradictions,
    decontam,
    dedup,
    degenerate,
    length_bias,
    margins,
    near_dup,
    near_identical,
    normalise,
    repeated_answer,
    repetition,
    script,
)
from data_quality.checks.base import CheckResult, Decision, apply
from data_quality.engine import EngineConfig, GateResult, Step
from data_quality.examples import drop_examples
from data_quality.executors import choose_executor, execute

__all__ = ["GateConfig", "GateResult", "Step", "run_gate", "steps"]


@dataclass(frozen=True)
class GateConfig:
    normalise: normalise.NormaliseConfig = field(default_factory=normalise.NormaliseConfig)
    degenerate: degenerate.DegenerateConfig = field(default_factory=degenerate.DegenerateConfig)
    repetition: repetition.RepetitionConfig = field(default_factory=repetition.RepetitionConfig)
    script: script.ScriptConfig = field(default_factory=script.ScriptConfig)
    contradictions: contradictions.ContradictionsConfig = field(
        default_factory=contradictions.ContradictionsConfig)
    dedup: dedup.DedupConfig = field(default_factory=dedup.DedupConfig)
    near_identical: near_identical.NearIdenticalConfig = field(default_factory=near_identical.NearIdenticalConfig)
    margins: margins.MarginsConfig = field(default_factory=margins.MarginsConfig)
    decontam: decontam.DecontamConfig = field(default_factory=decontam.DecontamConfig)
    repeated_answer: repeated_answer.RepeatedAnswerConfig = field(
        default_factory=repeated_answer.RepeatedAnswerConfig)
    near_dup: near_dup.NearDupConfig = field(default_factory=near_dup.NearDupConfig)
    length_bias: length_bias.LengthBiasConfig = field(default_factory=length_bias.LengthBiasConfig)
    # Where the rows live while the checks run (memory / out of core, memory budget); never what is kept.
    engine: EngineConfig = field(default_factory=EngineConfig)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GateConfig:
        """Build from nested dicts ({check: {threshold: value}}); unknown keys anywhere raise ValueError."""
        d = dict(d or {})
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(d) - set(hints))
        if unknown:
            raise ValueError(f"unknown gate config section(s): {unknown}; known: {sorted(hints)}")
        parts = {}
        for name, sub in d.items():
            sub_cls = hints[name]
            if not isinstance(sub, dict):
                raise ValueError(f"gate config section {name!r} must be a mapping, got {type(sub).__name__}")
            fields = {f.name: f for f in dataclasses.fields(sub_cls)}
            bad = sorted(set(sub) - set(fields))
            if bad:
                raise ValueError(f"unknown key(s) in gate config section {name!r}: {bad}; known: {sorted(fields)}")
            sub_hints = typing.get_type_hints(sub_cls)
            parts[name] = sub_cls(**{k: _coerce(v, sub_hints[k]) for k, v in sub.items()})
        return cls(**parts)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved thresholds, JSON-able (tuples become lists); recorded as the snapshot's params."""
        return {f.name: _jsonable(dataclasses.asdict(getattr(self, f.name))) for f in dataclasses.fields(self)}


def _coerce(value: Any, hint: Any) -> Any:
    # YAML/JSON give lists where the config wants tuples (frozen dataclasses must stay hashable).
    if isinstance(value, list) and (typing.get_origin(hint) is tuple or hint is tuple):
        return tuple(value)
    if isinstance(value, int) and not isinstance(value, bool) and _accepts_float(hint):
        return float(value)
    return value


def _accepts_float(hint: Any) -> bool:
    if hint is float:
        return True
    return isinstance(hint, types.UnionType) and float in typing.get_args(hint) and int not in typing.get_args(hint)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# How far each check looks, declared beside the pipeline so a changed check changes it here too. Used to run
# the gate in partitions (data_quality.engine): row-local checks decide each row alone; prompt-local ones compare
# rows of one prompt only (dedup too: pair_id hashes the prompt); a check in neither set is treated as global.
ROW_LOCAL = frozenset({"normalise", "degenerate", "repetition", "script", "near_identical", "decontam"})
PROMPT_LOCAL = frozenset({"contradictions", "dedup", "margins"})
REWRITES_PROMPT_ID = frozenset({"normalise"})  # a prompt-local check after these must re-shard


def steps(cfg: GateConfig, eval_prompts: Sequence[str] | None = None, share_shingles: bool = False) -> list[Step]:
    """The pipeline, in order; disabled checks are left out.

    `share_shingles`: decontam hands near_dup the shingles of the answers it tokenised (one tokenisation of
    each text per run instead of two). Only for one process running every step over the whole table in order
    (the in-memory executor): the shingles are held from decontam until near_dup takes them.
    """
    sharing = share_shingles and cfg.near_dup.enabled and cfg.decontam.enabled and bool(eval_prompts)
    banded = [name for group in near_dup.band_groups(cfg.near_dup) for name in group]
    cache = near_dup.ShingleCache(cfg.near_dup.ngram, banded) if sharing else None

    def run_decontam(t: pa.Table) -> CheckResult:
        return apply(t, decontam.decide(t, cfg.decontam, eval_prompts, cache), decontam.RULE, cfg.decontam)

    pipeline: list[tuple[str, bool, Callable[[pa.Table], CheckResult]]] = [
        ("normalise", cfg.normalise.enabled, lambda t: normalise.run(t, cfg.normalise)),
        ("degenerate", cfg.degenerate.enabled, lambda t: degenerate.run(t, cfg.degenerate)),
        ("repetition", cfg.repetition.enabled, lambda t: repetition.run(t, cfg.repetition)),
        ("script", cfg.script.enabled and cfg.script.expected is not None, lambda t: script.run(t, cfg.script)),
        ("contradictions", cfg.contradictions.enabled, lambda t: contradictions.run(t, cfg.contradictions)),
        ("dedup", cfg.dedup.enabled, lambda t: dedup.run(t, cfg.dedup)),
        ("near_identical", cfg.near_identical.enabled, lambda t: near_identical.run(t, cfg.near_identical)),
        ("margins", cfg.margins.enabled, lambda t: margins.run(t, cfg.margins)),
        ("decontam", cfg.decontam.enabled and bool(eval_prompts), run_decontam),
        ("repeated_answer", cfg.repeated_answer.enabled, lambda t: repeated_answer.run(t, cfg.repeated_answer)),
        ("near_dup", cfg.near_dup.enabled, lambda t: near_dup.run(t, cfg.near_dup, cache)),
        ("length_bias", cfg.length_bias.enabled, lambda t: length_bias.run(t, cfg.length_bias)),
    ]
    # Global checks whose result is `apply(table, decide(table))`: the out-of-core engine applies their decision
    # batch by batch (same rows, same order) rather than holding every dropped row's text at once.
    deciders: dict[str, tuple[Callable[[pa.Table], Decision], str, Any]] = {
        "repeated_answer": (lambda t: repeated_answer.decide(t, cfg.repeated_answer), repeated_answer.RULE,
                            cfg.repeated_answer),
        "near_dup": (lambda t: near_dup.decide(t, cfg.near_dup, cache), near_dup.RULE, cfg.near_dup),
    }
    return [Step(name, fn, scope(name), name in REWRITES_PROMPT_ID, *deciders.get(name, (None, "", None)))
            for name, on, fn in pipeline if on]


def scope(name: str) -> str:
    return "row" if name in ROW_LOCAL else "prompt" if name in PROMPT_LOCAL else "global"


def run_gate(pairs: pa.Table | str | Path, cfg: GateConfig | None = None,
             eval_prompts: Sequence[str] | None = None) -> GateResult:
    """The gate over a pair table (or a Parquet file of pairs), on the executor `cfg.engine` picks.

    Schema validation happens first: a malformed table fails naming the column.
    """
    cfg = cfg or GateConfig()
    engine = dataclasses.replace(cfg.engine, executor=choose_executor(pairs, cfg.engine))
    res = execute(pairs, steps(cfg, eval_prompts, share_shingles=engine.executor == "memory"), cfg.to_dict(), engine)
    res.stats["examples"] = drop_examples(res.rejects, res.kept, eval_prompts=eval_prompts)
    return res
