"""Losses against numbers worked by hand with math.log/exp (not by calling the code under test)."""

from __future__ import annotations

import math

import pytest
import torch

from dpo_train.losses import LOSSES, Batch, LossParams, compute_loss

# One pair: policy chosen -10, rejected -12; reference -11 for both. Log-ratio logits = 1 - (-1) = 2.
PC, PR, RC, RR = -10.0, -12.0, -11.0, -11.0
LC, LR = 5.0, 4.0  # answer lengths


def _batch() -> Batch:
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    return Batch(t(PC), t(PR), t(RC), t(RR), t(LC), t(LR))


def _softplus(x: float) -> float:
    return math.log(1.0 + math.exp(x))


def _run(name: str, **kw) -> tuple[float, float, float]:
    loss, cr, rr = compute_loss(name, _batch(), LossParams(**kw))
    return loss.item(), cr.item(), rr.item()


def test_sigmoid_dpo():
    loss, cr, rr = _run("sigmoid", beta=0.1)
    assert loss == pytest.approx(_softplus(-0.2), abs=1e-12)  # -log sigmoid(0.1 * 2)
    assert cr == pytest.approx(0.1) and rr == pytest.approx(-0.1)
    loss5, _, _ = _run("sigmoid", beta=0.5)
    assert loss5 == pytest.approx(math.log(1 + math.exp(-1.0)), abs=1e-12)


def test_cdpo_and_robust():
    eps, z = 0.2, 0.2
    loss, _, _ = _run("cdpo", beta=0.1, label_smoothing=eps)
    assert loss == pytest.approx((1 - eps) * _softplus(-z) + eps * _softplus(z), abs=1e-12)
    loss, _, _ = _run("robust", beta=0.1, label_smoothing=eps)
    assert loss == pytest.approx(((1 - eps) * _softplus(-z) - eps * _softplus(z)) / (1 - 2 * eps), abs=1e-12)
    with pytest.raises(ValueError, match="label_smoothing"):
        _run("cdpo", label_smoothing=0.0)


def test_ipo_and_hinge():
    loss, _, _ = _run("ipo", beta=0.1)
    assert loss == pytest.approx((2.0 - 5.0) ** 2, abs=1e-12)  # (logits - 1/(2*0.1))^2
    loss, _, _ = _run("hinge", beta=0.1)
    assert loss == pytest.approx(1.0 - 0.2, abs=1e-12)
    loss, _, _ = _run("hinge", beta=1.0)
    assert loss == 0.0


def test_simpo_reference_free_orpo():
    avg_c, avg_r = PC / LC, PR / LR  # -2, -3
    loss, cr, rr = _run("simpo", beta=2.0, simpo_gamma=1.0)
    assert loss == pytest.approx(_softplus(-(2.0 * (avg_c - avg_r) - 1.0)), abs=1e-12)
    assert cr == pytest.approx(-4.0) and rr == pytest.approx(-6.0)
    loss, _, _ = _run("reference_free", beta=0.1)
    assert loss == pytest.approx(_softplus(-0.1 * (PC - PR)), abs=1e-12)
    odds = lambda a: a - math.log(1 - math.exp(a))  # noqa: E731
    loss, _, _ = _run("orpo", beta=0.1)
    assert loss == pytest.approx(-avg_c + 0.1 * _softplus(-(odds(avg_c) - odds(avg_r))), abs=1e-12)


def test_rpo_term_adds_token_nll():
    base, _, _ = _run("sigmoid", beta=0.1)
    with_nll, _, _ = _run("sigmoid", beta=0.1, rpo_alpha=0.5)
    assert with_nll - base == pytest.approx(0.5 * (-PC / LC), abs=1e-12)


def test_reference_needed_and_rewards_detached():
    b = Batch(torch.tensor([PC], requires_grad=True), torch.tensor([PR]))
    with pytest.raises(ValueError, match="reference"):
        compute_loss("sigmoid", b)
    loss, cr, _ = compute_loss("reference_free", b)
    assert loss.requires_grad and not cr.requires_grad
    with pytest.raises(ValueError, match="unknown loss"):
        compute_loss("nope", b)


def test_gradient_of_dpo_matches_closed_form():
    # d/d pi_c of -log sigmoid(beta*z) = -beta * sigmoid(-beta*z)
    pc = torch.tensor([PC], dtype=torch.float64, requires_grad=True)
    b = Batch(pc, torch.tensor([PR], dtype=torch.float64), torch.tensor([RC], dtype=torch.float64),
              torch.tensor([RR], dtype=torch.float64))
    compute_loss("sigmoid", b, LossParams(beta=0.1))[0].sum().backward()
    assert pc.grad.item() == pytest.approx(-0.1 / (1 + math.exp(0.2)), abs=1e-12)


def test_registry_is_complete():
    assert {"sigmoid", "cdpo", "robust", "ipo", "hinge", "simpo", "reference_free", "orpo"} <= set(LOSSES)
