"""Length-bias statistics and balancing: the reweighting property and subsampling."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from data_quality.checks import length_bias
from storage.schema import build_pair_table


def biased(n: int, frac_longer: float, seed: int = 0, models: bool = False) -> pa.Table:
    rng = np.random.default_rng(seed)
    a, b = rng.integers(5, 400, n), rng.integers(5, 400, n)
    longer = rng.random(n) < frac_longer
    lc, lr = np.where(longer, np.maximum(a, b), np.minimum(a, b)), np.where(longer, np.minimum(a, b), np.maximum(a, b))
    cols = {
        "prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(n)],
        "chosen": ["x" * int(k) for k in lc], "rejected": ["y" * int(k) for k in lr],
        "chosen_score": rng.normal(1, 1, n) + (lc - lr) / 100.0, "rejected_score": np.zeros(n),
        "source": ["t"] * n, "source_row": np.arange(n),
    }
    if models:
        flip = rng.random(n) < 0.5
        cols["chosen_model"] = np.where(flip, "m", "base").tolist()
        cols["rejected_model"] = np.where(flip, "base", "m").tolist()
    return build_pair_table(cols)


@pytest.mark.parametrize("frac", [0.7, 0.9, 0.3])
def test_reweighting_balances_within_001_and_mean_one(frac: float) -> None:
    t = biased(3000, frac)
    res = length_bias.run(t, length_bias.LengthBiasConfig(mode="reweight"))
    w = np.asarray(res.kept.column("weight"))
    lc, lr = length_bias.lengths(res.kept)
    d = lc - lr
    assert res.kept.num_rows == t.num_rows
    assert abs(w.mean() - 1.0) < 1e-9 and (w > 0).all()
    assert abs(w[d > 0].sum() / (w[d > 0].sum() + w[d < 0].sum()) - 0.5) <= 0.01
    st = res.stats
    assert abs(st["frac_chosen_longer"] - frac) < 0.05
    assert abs(st["weighted_frac_chosen_longer"] - 0.5) <= 0.01
    assert st["corr_margin_length_diff"] > 0.3  # planted: score margin grows with the length difference
    assert abs(st["length_controlled"]["length_coef_weighted"]) < abs(st["length_controlled"]["length_coef"])
    # The weights also balance inside each |length difference| bin.
    for b in st["bins"]:
        sel = (np.abs(d) >= b["bin_lo"]) & (np.abs(d) < b["bin_hi"])
        if (sel & (d > 0)).any() and (sel & (d < 0)).any():
            assert w[sel & (d > 0)].sum() == pytest.approx(w[sel & (d < 0)].sum(), rel=0.05)


def test_subsample_mode_drops_majority_side() -> None:
    t = biased(2000, 0.75, seed=1)
    res = length_bias.run(t, length_bias.LengthBiasConfig(mode="subsample"))
    lc, lr = length_bias.lengths(res.kept)
    d = lc - lr
    assert abs((d > 0).sum() / ((d > 0).sum() + (d < 0).sum()) - 0.5) <= 0.01
    assert set(res.rejects.column("reason").to_pylist()) == {"length_balance_subsample"}
    assert res.kept.num_rows + res.rejects.num_rows == t.num_rows


def test_stats_mode_and_length_controlled_win_rate() -> None:
    t = biased(2000, 0.8, seed=2, models=True)
    res = length_bias.run(t, length_bias.LengthBiasConfig(mode="stats"))
    assert np.allclose(np.asarray(res.kept.column("weight")), 1.0)
    models = {m["model"]: m for m in res.stats["length_controlled"]["models"]}
    # "m" wins half its comparisons; the length-controlled rate stays near 0.5, the slope is clearly positive.
    assert abs(models["m"]["win_rate"] - 0.5) < 0.05 and abs(models["m"]["lc_win_rate"] - 0.5) < 0.1
    assert models["m"]["length_coef"] > 0.5


def test_one_sided_data_cannot_be_balanced_but_stays_valid() -> None:
    t = biased(200, 1.0)
    res = length_bias.run(t, length_bias.LengthBiasConfig())
    w = np.asarray(res.kept.column("weight"))
    assert np.isfinite(w).all() and abs(w.mean() - 1) < 1e-9
