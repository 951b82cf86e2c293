"""Preference losses as pure functions over sequence log-probs, picked from a registry.

Every loss takes the summed log-probs of the answer tokens under the policy and the reference, for chosen
and rejected, and returns `(per-pair losses, chosen_rewards, rejected_rewards)`; rewards are detached
implicit rewards used for metrics (accuracy, margin), never for the gradient.

`beta` (default 0.1) is the strength of the KL penalty to the reference: small beta lets the policy drift
further. Users usually tune it in 0.1-0.5 for DPO; IPO and SimPO use it differently (see each docstring).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_BETA = 0.1

LossOutput = tuple[Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class LossParams:
    beta: float = DEFAULT_BETA
    label_smoothing: float = 0.0  # cdpo / robust: assumed probability that a label is flipped
    simpo_gamma: float = 0.5  # SimPO target reward margin (in reward units, i.e. already times beta)
    rpo_alpha: float = 0.0  # weight of the token-averaged NLL on chosen added to any loss (RPO)


@dataclass(frozen=True)
class Batch:
    """Per-pair inputs. Lengths are answer token counts; needed by the length-normalised losses."""

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    chosen_lengths: Tensor | None = None
    rejected_lengths: Tensor | None = None


def _ref(b: Batch) -> tuple[Tensor, Tensor]:
    if b.ref_chosen is None or b.ref_rejected is None:
        raise ValueError("this loss needs reference log-probs (ref_chosen / ref_rejected)")
    return b.ref_chosen, b.ref_rejected


def _avg(b: Batch) -> tuple[Tensor, Tensor]:
    if b.chosen_lengths is None or b.rejected_lengths is None:
        raise ValueError("this loss needs answer lengths (chosen_lengths / rejected_lengths)")
    return b.policy_chosen / b.chosen_lengths.clamp(min=1), b.policy_rejected / b.rejected_lengths.clamp(min=1)


def _dpo_logits(b: Batch) -> tuple[Tensor, Tensor, Tensor]:
    rc, rr = _ref(b)
    chosen_ratio = b.policy_chosen - rc
    rejected_ratio = b.policy_rejected - rr
    return chosen_ratio - rejected_ratio, chosen_ratio, rejected_ratio


def sigmoid_dpo(b: Batch, p: LossParams) -> LossOutput:
    """DPO: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))."""
    logits, cr, rr = _dpo_logits(b)
    return -F.logsigmoid(p.beta * logits), (p.beta * cr).detach(), (p.beta * rr).detach()


def conservative_dpo(b: Batch, p: LossParams) -> LossOutput:
    """cDPO: DPO against labels flipped with probability `label_smoothing` (in (0, 0.5))."""
    if not 0.0 < p.label_smoothing < 0.5:
        raise ValueError(f"cdpo needs 0 < label_smoothing < 0.5, got {p.label_smoothing}")
    logits, cr, rr = _dpo_logits(b)
    eps = p.label_smoothing
    losses = -(1 - eps) * F.logsigmoid(p.beta * logits) - eps * F.logsigmoid(-p.beta * logits)
    return losses, (p.beta * cr).detach(), (p.beta * rr).detach()


def robust_dpo(b: Batch, p: LossParams) -> LossOutput:
    """rDPO (Chowdhury et al. 2024): unbiased loss under label noise `label_smoothing` (in [0, 0.5))."""
    if not 0.0 <= p.label_smoothing < 0.5:
        raise ValueError(f"robust needs 0 <= label_smoothing < 0.5, got {p.label_smoothing}")
    logits, cr, rr = _dpo_logits(b)
    eps = p.label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(p.beta * logits) + eps * F.logsigmoid(-p.beta * logits)) / (1 - 2 * eps)
    return losses, (p.beta * cr).detach(), (p.beta * rr).detach()


def ipo(b: Batch, p: LossParams) -> LossOutput:
    """IPO: (logits - 1/(2 beta))^2 on summed log-ratios; here beta is the paper's tau (regression target)."""
    logits, cr, rr = _dpo_logits(b)
    return (logits - 1.0 / (2.0 * p.beta)) ** 2, (p.beta * cr).detach(), (p.beta * rr).detach()


def hinge(b: Batch, p: LossParams) -> LossOutput:
    """SLiC-style hinge: relu(1 - beta * logits)."""
    logits, cr, rr = _dpo_logits(b)
    return torch.relu(1.0 - p.beta * logits), (p.beta * cr).detach(), (p.beta * rr).detach()


def simpo(b: Batch, p: LossParams) -> LossOutput:
    """SimPO: -log sigmoid(beta * (avg_c - avg_r) - gamma), reference-free, length-normalised.

    SimPO's own papers use a much larger beta (about 2) than DPO, with gamma around 0.5-1.5 times beta.
    """
    avg_c, avg_r = _avg(b)
    losses = -F.logsigmoid(p.beta * (avg_c - avg_r) - p.simpo_gamma)
    return losses, (p.beta * avg_c).detach(), (p.beta * avg_r).detach()


def reference_free(b: Batch, p: LossParams) -> LossOutput:
    """DPO with a uniform reference: -log sigmoid(beta * (pi_c - pi_r))."""
    losses = -F.logsigmoid(p.beta * (b.policy_chosen - b.policy_rejected))
    return losses, (p.beta * b.policy_chosen).detach(), (p.beta * b.policy_rejected).detach()


def orpo(b: Batch, p: LossParams) -> LossOutput:
    """ORPO: NLL on chosen (token average) + beta * -log sigmoid(log odds(chosen) - log odds(rejected)).

    Odds use the average per-token probability; beta is the paper's lambda (0.1 there).
    """
    avg_c, avg_r = _avg(b)
    # log(p / (1 - p)) with p = exp(avg); avg < 0 always, clamp keeps log1p finite at avg -> 0.
    log1m = lambda x: torch.log1p(-torch.exp(x.clamp(max=-1e-6)))  # noqa: E731
    log_odds = (avg_c - avg_r) - (log1m(avg_c) - log1m(avg_r))
    losses = -avg_c - p.beta * F.logsigmoid(log_odds)
    return losses, (p.beta * avg_c).detach(), (p.beta * avg_r).detach()


@dataclass(frozen=True)
class LossSpec:
    fn: Callable[[Batch, LossParams], LossOutput]
    needs_reference: bool
    needs_lengths: bool = False


LOSSES: dict[str, LossSpec] = {
    "sigmoid": LossSpec(sigmoid_dpo, needs_reference=True),
    "cdpo": LossSpec(conservative_dpo, needs_reference=True),
    "robust": LossSpec(robust_dpo, needs_reference=True),
    "ipo": LossSpec(ipo, needs_reference=True),
    "hinge": LossSpec(hinge, needs_reference=True),
    "simpo": LossSpec(simpo, needs_reference=False, needs_lengths=True),
    "reference_free": LossSpec(reference_free, needs_reference=False),
    "orpo": LossSpec(orpo, needs_reference=False, needs_lengths=True),
}


def get_loss(name: str) -> LossSpec:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None


def compute_loss(name: str, b: Batch, p: LossParams = LossParams()) -> LossOutput:
    """Per-pair losses (with the optional RPO NLL term on chosen) and detached rewards."""
    losses, chosen_rewards, rejected_rewards = get_loss(name).fn(b, p)
    if p.rpo_alpha:
        avg_c, _ = _avg(b)
        losses = losses - p.rpo_alpha * avg_c
    return losses, chosen_rewards, rejected_rewards
