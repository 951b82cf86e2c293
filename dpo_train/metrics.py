"""Per-step training metrics: reduced across micro-batches and ranks, buffered, written to the catalog."""

from __future__ import annotations

from typing import Any

import torch

from dpo_train.distributed import DistInfo, all_sum

# Sums accumulated over a step's micro-batches; every metric is a ratio of two of them.
DPO_SUMS = ("loss", "pairs", "reward_chosen", "reward_rejected", "reward_acc", "logp_chosen", "logp_rejected",
            "ref_chosen", "ref_rejected", "len_chosen", "len_rejected", "tokens")
SFT_SUMS = ("loss", "pairs", "logp_chosen", "len_chosen", "tokens")


class StepSums:
    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.values = torch.zeros(len(names), dtype=torch.float64)

    def add(self, **kw: torch.Tensor | float) -> None:
        for k, v in kw.items():
            self.values[self.names.index(k)] += float(v.detach().double().sum()) if isinstance(v, torch.Tensor) \
                else float(v)

    def reduce(self, info: DistInfo) -> dict[str, float]:
        return dict(zip(self.names, all_sum(self.values.clone(), info).tolist(), strict=True))


def dpo_metrics(s: dict[str, float]) -> dict[str, float]:
    n = max(s["pairs"], 1.0)
    out = {
        "rewards/chosen": s["reward_chosen"] / n,
        "rewards/rejected": s["reward_rejected"] / n,
        "rewards/margin": (s["reward_chosen"] - s["reward_rejected"]) / n,
        "rewards/accuracy": s["reward_acc"] / n,
        "logps/chosen": s["logp_chosen"] / n,
        "logps/rejected": s["logp_rejected"] / n,
        "len/chosen": s["len_chosen"] / n,
        "len/rejected": s["len_rejected"] / n,
    }
    # Mean sequence log-ratio log pi/ref over the batch's answers: an off-policy stand-in for KL(pi || ref),
    # which would need answers sampled from the policy. 0 at step 0; growing means drift from the reference.
    out["kl_estimate"] = (s["logp_chosen"] - s["ref_chosen"] + s["logp_rejected"] - s["ref_rejected"]) / (2 * n)
    return out


def sft_metrics(s: dict[str, float]) -> dict[str, float]:
    n = max(s["pairs"], 1.0)
    return {"nll_per_token": -s["logp_chosen"] / max(s["len_chosen"], 1.0), "len/chosen": s["len_chosen"] / n}


class MetricBuffer:
    """Rows (step, name, value) kept in memory and flushed to ws.log_metrics in batches (each call opens the
    catalog file, so one call per step would dominate a tiny model's step time)."""

    def __init__(self, ws: Any, run_id: str, enabled: bool) -> None:
        self.ws, self.run_id, self.enabled = ws, run_id, enabled
        self.pending: list[tuple[int, str, float]] = []

    def add(self, step: int, values: dict[str, float]) -> None:
        if self.enabled:
            self.pending.extend((step, k, float(v)) for k, v in values.items())

    def flush(self) -> None:
        if self.enabled and self.pending:
            self.ws.log_metrics(self.run_id, self.pending)
            self.pending = []
