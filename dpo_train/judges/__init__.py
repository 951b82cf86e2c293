"""Judges behind one interface: `score(table, judge) -> table + score/judge/judge_version`.

Build one from a config dict with `make_judge({"type": "reward_model", "path": ...})`; the keys other than
`type` are the judge's settings and unknown ones fail loudly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dpo_train.judges.base import Judge, score_table
from dpo_train.judges.bradley_terry import (
    BradleyTerryJudge,
    BradleyTerryModel,
    Featurizer,
    train_bradley_terry,
)
from dpo_train.judges.implicit import ImplicitRewardJudge
from dpo_train.judges.llm import LLMPairwiseJudge, parse_verdict
from dpo_train.judges.python_fn import PythonFunctionJudge, load_function
from dpo_train.judges.reward_model import RewardModelJudge
from storage.templates import Labels

JUDGES: dict[str, type[Judge]] = {
    RewardModelJudge.kind: RewardModelJudge,
    PythonFunctionJudge.kind: PythonFunctionJudge,
    ImplicitRewardJudge.kind: ImplicitRewardJudge,
    LLMPairwiseJudge.kind: LLMPairwiseJudge,
    BradleyTerryJudge.kind: BradleyTerryJudge,
}


def make_judge(spec: dict[str, Any], labels_by_source: Mapping[str, Labels] | None = None) -> Judge:
    """A judge from {"type": <registry key>, **settings}; unknown types or settings raise ValueError.
    `labels_by_source`: the prompts' per-source turn labels (Judge.labels_by_source)."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    cls = JUDGES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown judge type {kind!r}; known: {sorted(JUDGES)}")
    allowed = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"unknown settings for judge {kind!r}: {unknown} (allowed: {sorted(allowed)})")
    judge = cls(**spec)
    if labels_by_source:
        judge.labels_by_source = dict(labels_by_source)
    return judge


score = score_table

__all__ = ["JUDGES", "BradleyTerryJudge", "BradleyTerryModel", "Featurizer", "ImplicitRewardJudge", "Judge",
           "LLMPairwiseJudge", "PythonFunctionJudge", "RewardModelJudge", "load_function", "make_judge",
           "parse_verdict", "score", "score_table", "train_bradley_terry"]
