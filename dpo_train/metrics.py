"""Per-step training metrics: reduced across micro-batches and ranks, buffered, written to the catalog."""

from __future__ import annotations

import logging
from typing import Any

import torch

from dpo_train.distributed import DistInfo, all_sum
from storage.errors import CatalogBusyError

log = logging.getLogger(__name__)

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
    # Mean sequence log-ratio log pi/ref over the batch's answers (chosen and rejected). These answers were not
    # sampled from the policy, so this is NOT a KL estimate: DPO pushes rejected answers down, and the mean
    # goes negative while the true KL(pi || ref) grows. The KL is measured on the policy's own samples
    # (dpo_train.kl; per round in the evaluation, or every N steps with KLProbe).
    out["logratio/offpolicy"] = (s["logp_chosen"] - s["ref_chosen"] + s["logp_rejected"] - s["ref_rejected"]) \
        / (2 * n)
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

    def flush(self, *, final: bool = False) -> None:
        """Write pending rows. A catalog held by an inspecting client must never kill a training: the rows
        stay buffered and go out at the next flush; only the final flush gives up (with the typed error)."""
        if not (self.enabled and self.pending):
            return
        try:
            self.ws.log_metrics(self.run_id, self.pending)
        except CatalogBusyError:
            if final:
                raise
            log.warning("catalog busy: %d metric rows kept in memory for the next flush", len(self.pending))
            return
        self.pending = []


class KLProbe:
    """On-policy KL(pi || ref) during training: every `every` optimizer steps, sample `samples` answers (T=1,
    top-p 1, the same seeds at every probe so the series is a paired comparison across steps) to the first
    `prompts` training prompts from the live policy and measure the KL on the sampled ids (dpo_train.kl).
    Adds kl/onpolicy, kl/onpolicy_stderr and kl/onpolicy_mc to the step's metrics. `reference` is the reference
    model's directory, loaded on the first probe onto the policy's device."""

    def __init__(self, reference: str, *, every: int, prompts: int = 8, samples: int = 2,
                 max_new_tokens: int = 32, seed: int = 0) -> None:
        if every < 1:
            raise ValueError(f"KLProbe.every must be >= 1, got {every}")
        self.reference, self.every, self.prompts, self.samples = reference, every, prompts, samples
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self._loaded: tuple[Any, Any, set[int]] | None = None

    def due(self, steps_done: int) -> bool:
        return steps_done % self.every == 0

    def __call__(self, policy: torch.nn.Module, prompt_ids: list[list[int]], device: Any) -> dict[str, float]:
        from dpo_train.generation.config import GenerationConfig
        from dpo_train.generation.hf import generate_batch, load_causal_lm
        from dpo_train.kl import path_statistics, summarise
        from dpo_train.templates import eos_token_ids

        if self._loaded is None:
            ref, tok, _ = load_causal_lm(self.reference, device=str(device))
            self._loaded = (ref, tok, eos_token_ids(tok, ref))
        ref, tok, eos = self._loaded
        prompts = [p for p in prompt_ids[: self.prompts] for _ in range(self.samples)]
        cfg = GenerationConfig(model="probe", temperature=1.0, top_p=1.0, max_new_tokens=self.max_new_tokens)
        was_training = policy.training
        policy.eval()  # no dropout; gradient checkpointing off, so the KV cache works
        try:
            with torch.inference_mode():
                outs = generate_batch(policy, tok, prompts, [self.seed + i for i in range(len(prompts))], cfg,
                                      device, eos)
            stats = path_statistics(policy, ref, prompts, [o[0] for o in outs], pad_id=int(tok.pad_token_id),
                                    device=device)
        finally:
            policy.train(was_training)
        rec = summarise(stats)
        return {"kl/onpolicy": rec["kl"], "kl/onpolicy_stderr": rec["stderr"] or 0.0, "kl/onpolicy_mc": rec["kl_mc"]}
