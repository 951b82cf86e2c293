"""Length bias: statistics, a length-controlled preference estimate, and balancing by weights or subsampling.

Judges and annotators tend to prefer the longer answer; DPO then learns "be longer". Rows are binned by
|len(chosen) - len(rejected)| and, within each bin, chosen-longer and rejected-longer rows get equal total
weight (or the majority side is subsampled), so the weighted fraction of chosen-longer pairs is 0.5 while
each bin keeps its mass. Equal-length pairs keep their weight. This check runs last: weights must describe
the rows that are actually published.

The length-controlled estimate follows length-controlled AlpacaEval: a logistic regression of "A preferred"
on tanh(standardised length difference); the intercept is the preference with the length effect removed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from .base import CheckResult, Decision, apply, histogram
from .degenerate import echoes_prompt
from .repetition import default_flags

RULE = "length_bias"


@dataclass(frozen=True)
class LengthBiasConfig:
    enabled: bool = True
    mode: str = "reweight"  # reweight | subsample | stats (statistics only)
    unit: str = "chars"  # chars | words
    n_bins: int = 10  # quantile bins of |length difference|
    max_weight: float = 20.0  # a true cap: no published weight exceeds it (mean weight is 1)
    min_ess_fraction: float = 0.5  # warn when the effective sample size falls below this share of the rows
    no_bonus_for_degenerate: bool = True  # loops and prompt echoes never get a weight above their base
    hist_bins: int = 40
    max_models: int = 10  # models given a length-controlled win rate
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("reweight", "subsample", "stats"):
            raise ValueError(f"length_bias.mode must be reweight, subsample or stats, not {self.mode!r}")
        if self.unit not in ("chars", "words"):
            raise ValueError(f"length_bias.unit must be chars or words, not {self.unit!r}")
        if self.max_weight < 1.0:
            raise ValueError("length_bias.max_weight must be >= 1 (weights have mean 1)")


def lengths(table: pa.Table, unit: str = "chars") -> tuple[np.ndarray, np.ndarray]:
    def one(name: str) -> np.ndarray:
        col = table.column(name)
        arr = pc.utf8_length(col) if unit == "chars" else pc.count_substring_regex(col, r"\S+")
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)
    return one("chosen"), one("rejected")


def logistic_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, l2: float = 1e-6) -> np.ndarray:
    """(intercept, slope) of a weighted logistic regression by Newton steps; tiny ridge keeps it finite."""
    X = np.column_stack([np.ones_like(x), x])
    w = np.ones_like(x) if w is None else w
    beta = np.zeros(2)
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-X @ beta))
        grad = X.T @ (w * (y - p)) - l2 * beta
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.abs(step).max() < 1e-9:
            break
    return beta


def _sigmoid(v: float) -> float:
    return float(1.0 / (1.0 + np.exp(-v)))


def length_controlled(f: dict[str, np.ndarray], diff: np.ndarray, w: np.ndarray, max_models: int,
                      keep: np.ndarray | None = None) -> dict:
    """Overall length effect, plus raw and length-controlled win rates per model when models are named
    (`f`: the row features, see `features`; `w`: the weights the rows are published with)."""
    out: dict = {}
    n = diff.size
    if n < 2:
        return out
    scale = float(np.std(diff)) or 1.0
    # Orient each pair by a hash of its id (not by length), so "A preferred" is independent of length a priori.
    flip = f["flip"]
    d_a = np.where(flip, -diff, diff)
    y = (~flip).astype(np.float64)  # A is the chosen answer unless flipped
    if keep is not None:
        w = w * keep
    beta = logistic_fit(np.tanh(d_a / scale), y)
    beta_w = logistic_fit(np.tanh(d_a / scale), y, w)
    out.update(length_coef=float(beta[1]), length_coef_weighted=float(beta_w[1]),
               p_longer_preferred_at_1sd=_sigmoid(beta[1] * np.tanh(1.0)), diff_scale=scale)
    cm, rm = f["chosen_model"], f["rejected_model"]
    named = (cm != None) & (rm != None) & (cm != rm)  # noqa: E711 - elementwise on object arrays
    models = pl.Series(np.concatenate([cm[named], rm[named]]).astype(str)).value_counts(sort=True)
    rows = []
    for m in models.get_column(models.columns[0]).to_list()[:max_models]:
        as_c, as_r = named & (cm == m), named & (rm == m)
        sel = as_c | as_r
        if sel.sum() < 10:
            continue
        y_m = as_c[sel].astype(np.float64)
        d_m = np.where(as_c, diff, -diff)[sel]  # length of m's answer minus the other's
        b = logistic_fit(np.tanh(d_m / scale), y_m)
        rows.append({"model": str(m), "n": int(sel.sum()), "win_rate": float(y_m.mean()),
                     "lc_win_rate": _sigmoid(b[0]), "length_coef": float(b[1]),
                     "frac_longer": float((d_m > 0).mean())})
    out["models"] = rows
    return out


def _bins(absdiff: np.ndarray, pos: np.ndarray, neg: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile edges of |diff| merged until every bin holds both chosen-longer and rejected-longer rows."""
    if not (pos.any() or neg.any()):
        return np.array([0.0, np.inf])
    # Quantiles of the minority side: every bin then holds some of the rows that are hardest to balance,
    # so bins need little merging and stay narrow where the minority lives.
    minority = absdiff[pos] if 0 < pos.sum() <= neg.sum() else absdiff[neg] if neg.any() else absdiff[pos]
    edges = np.unique(np.quantile(minority, np.linspace(0, 1, n_bins + 1)))
    edges = np.concatenate([[0.5], edges[1:-1], [np.inf]]) if edges.size > 2 else np.array([0.5, np.inf])
    idx = np.searchsorted(edges, absdiff, side="right") - 1
    p = np.bincount(idx[pos], minlength=edges.size - 1)
    q = np.bincount(idx[neg], minlength=edges.size - 1)
    keep = [0]  # indices of edges that survive merging (a small loop over bins, not rows)
    acc_p = acc_q = 0
    for b in range(edges.size - 1):
        acc_p, acc_q = acc_p + p[b], acc_q + q[b]
        if acc_p and acc_q:
            keep.append(b + 1)
            acc_p = acc_q = 0
    if keep[-1] != edges.size - 1:  # an unbalanced tail joins the last balanced bin
        if len(keep) > 1:
            keep[-1] = edges.size - 1
        else:
            keep.append(edges.size - 1)
    return edges[keep]


def fit(diff: np.ndarray, base: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin edges, chosen-longer factor, rejected-longer factor): equal total weight per side in each bin."""
    pos, neg = diff > 0, diff < 0
    absdiff = np.abs(diff).astype(np.float64)
    edges = _bins(absdiff, pos, neg, n_bins)
    idx = bin_index(edges, diff)
    nb = edges.size - 1
    wp = np.bincount(idx[pos], weights=base[pos], minlength=nb)
    wn = np.bincount(idx[neg], weights=base[neg], minlength=nb)
    fp = np.divide(wp + wn, 2 * wp, out=np.ones(nb), where=(wp > 0) & (wn > 0))
    fn = np.divide(wp + wn, 2 * wn, out=np.ones(nb), where=(wp > 0) & (wn > 0))
    return edges, fp, fn


def bin_index(edges: np.ndarray, diff: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, np.abs(diff).astype(np.float64), side="right") - 1, 0, edges.size - 2)


def apply_factors(diff: np.ndarray, base: np.ndarray, edges: np.ndarray, fp: np.ndarray, fn: np.ndarray,
                  no_bonus: np.ndarray | None = None) -> np.ndarray:
    """base x the fitted factor of each row's bin and side; rows in `no_bonus` never above their base."""
    idx = bin_index(edges, diff)
    f = np.where(diff > 0, fp[idx], np.where(diff < 0, fn[idx], 1.0))
    if no_bonus is not None:
        f = np.where(no_bonus, np.minimum(f, 1.0), f)
    return base * f


def reweight(diff: np.ndarray, base: np.ndarray, edges: np.ndarray, fp: np.ndarray, fn: np.ndarray,
             max_weight: float, no_bonus: np.ndarray | None = None) -> np.ndarray:
    """Weights from fitted factors, rebalanced globally, mean 1, and never above `max_weight` (a true cap).

    Clipping and the global rebalance alternate until both hold; when the minority is too small for both
    (its weight would have to exceed the cap), the cap wins and the residual imbalance shows in the stats.
    Rows in `no_bonus` (degenerate answers: loops, echoes) keep at most their base weight.
    """
    pos, neg = diff > 0, diff < 0
    w = apply_factors(diff, base, edges, fp, fn, no_bonus)
    fixed = no_bonus if no_bonus is not None else np.zeros(diff.size, dtype=bool)
    for _ in range(100):
        tp, tn = w[pos].sum(), w[neg].sum()
        if tp > 0 and tn > 0:
            w = np.where(pos, w * (tp + tn) / (2 * tp), np.where(neg, w * (tp + tn) / (2 * tn), w))
        w = w / w.mean() if w.size else w
        w = np.where(fixed, np.minimum(w, base), w)
        if w.size == 0 or w.max() <= max_weight * (1 + 1e-9):
            break
        w = np.minimum(w, max_weight)
    return np.minimum(w, max_weight)


def balance(diff: np.ndarray, base: np.ndarray, cfg: LengthBiasConfig, rng: np.random.Generator,
            no_bonus: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(weights or base, keep mask, per-bin table) balancing chosen-longer against rejected-longer."""
    pos, neg = diff > 0, diff < 0
    edges, fp, fn = fit(diff, base, cfg.n_bins)
    idx = bin_index(edges, diff)
    nb = edges.size - 1
    keep = np.ones(diff.size, dtype=bool)
    weights = base.copy()
    if cfg.mode == "reweight":
        weights = reweight(diff, base, edges, fp, fn, cfg.max_weight, no_bonus)
    elif cfg.mode == "subsample":
        for b in range(nb):  # loop over bins; the per-row work is vectorised
            p_rows, n_rows = np.flatnonzero(pos & (idx == b)), np.flatnonzero(neg & (idx == b))
            big, small = (p_rows, n_rows) if p_rows.size > n_rows.size else (n_rows, p_rows)
            if small.size:
                keep[rng.choice(big, size=big.size - small.size, replace=False)] = False
    table = [{"bin_lo": float(edges[b]), "bin_hi": float(edges[b + 1]), "chosen_longer": int((pos & (idx == b)).sum()),
              "rejected_longer": int((neg & (idx == b)).sum()), "chosen_longer_factor": float(fp[b]),
              "rejected_longer_factor": float(fn[b])} for b in range(nb)]
    return weights, keep, table


def effective_sample_size(w: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2: how many equally weighted rows the weights are worth."""
    return float(w.sum() ** 2 / (w**2).sum()) if w.size and (w**2).sum() > 0 else 0.0


def heldout_balance(diff: np.ndarray, base: np.ndarray, half: np.ndarray, cfg: LengthBiasConfig,
                    no_bonus: np.ndarray | None, n_boot: int = 200, seed: int = 0) -> dict:
    """Fit the weights on one half, measure the chosen-longer fraction they give on the other half.

    Within the fitted half the fraction is 0.5 by construction, which proves nothing; on held-out rows it is
    a measurement that fails when the weights do not carry over (or reweighting is off). The standard error
    is a bootstrap over the held-out rows.
    """
    a, b = ~half, half
    if not ((diff[a] > 0).any() and (diff[a] < 0).any() and (diff[b] != 0).any()):
        return {}
    edges, fp, fn = fit(diff[a], base[a], cfg.n_bins)
    nb_b = no_bonus[b] if no_bonus is not None else None
    # Only the fitted per-bin factors (and the cap) carry over: no rebalancing on the measured rows themselves.
    w = np.minimum(apply_factors(diff[b], base[b], edges, fp, fn, nb_b), cfg.max_weight * base[b].mean()) \
        if cfg.mode == "reweight" else base[b]
    d = diff[b]
    frac = weighted_frac_longer(d, w)
    rng = np.random.default_rng(seed)
    # Per resample: weight of chosen-longer rows over weight of rows with any length difference (as
    # weighted_frac_longer), from two gathers of precomputed columns.
    longer, differ = np.where(d > 0, w, 0.0), np.where(d != 0, w, 0.0)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, d.size, d.size)
        tot = differ[i].sum()
        boots.append(float(longer[i].sum() / tot) if tot > 0 else None)
    se = float(np.std([x for x in boots if x is not None])) if boots else None
    raw = weighted_frac_longer(d, base[b])
    return {"heldout_rows": int(d.size), "heldout_frac_chosen_longer_before": raw,
            "heldout_weighted_frac_chosen_longer": frac, "heldout_se": se,
            "heldout_balanced": bool(frac is not None and se is not None and abs(frac - 0.5) <= 3 * se + 0.01)}


def weighted_frac_longer(diff: np.ndarray, w: np.ndarray) -> float | None:
    pos, neg = diff > 0, diff < 0
    tot = w[pos].sum() + w[neg].sum()
    return float(w[pos].sum() / tot) if tot > 0 else None


def diff_histogram(diff: np.ndarray, weights: np.ndarray, bins: int) -> dict:
    lim = float(np.quantile(np.abs(diff), 0.99)) if diff.size else 1.0
    lim = max(lim, 1.0)
    edges = np.linspace(-lim, lim, bins + 1)
    clipped = np.clip(diff, -lim, lim)
    return {"edges": edges.tolist(), "counts": np.histogram(clipped, edges)[0].tolist(),
            "weighted": np.histogram(clipped, edges, weights=weights)[0].tolist()}


_CHUNK = 25_000  # rows whose features are computed at once (the loop/echo flags copy their text)


def features(table: pa.Table, cfg: LengthBiasConfig) -> dict[str, np.ndarray]:
    """Everything the check needs of each row, as numbers (and model names): computed where the rows live, then
    `decide_features` works on these columns alone (the cluster executor gathers them, never the text).
    Every feature is a function of its own row, so they are computed a chunk of rows at a time: memory follows
    the chunk, not the table."""
    parts = [_features(table.slice(lo, _CHUNK), cfg) for lo in range(0, max(table.num_rows, 1), _CHUNK)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _features(table: pa.Table, cfg: LengthBiasConfig) -> dict[str, np.ndarray]:
    def num(name: str) -> np.ndarray:
        return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)

    def obj(name: str) -> np.ndarray:
        return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=object)

    lc, lr = lengths(table, cfg.unit)
    margin = num("chosen_score") - num("rejected_score")
    ids = pl.Series(table.column("pair_id"))
    f = {"lc": lc, "lr": lr, "base": num("weight"), "margin": margin, "prob": num("preference_prob"),
         "flip": (ids.hash(7).to_numpy() & 1).astype(bool), "half": (ids.hash(23).to_numpy() & 1).astype(bool),
         "chosen_model": obj("chosen_model"), "rejected_model": obj("rejected_model")}
    if cfg.no_bonus_for_degenerate and cfg.mode != "stats":
        f["no_bonus"] = degenerate_answers(table)
    return f


def decide_features(f: dict[str, np.ndarray], cfg: LengthBiasConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """(weights, keep mask, statistics) from the row features, in row order."""
    lc, lr, base = f["lc"], f["lr"], f["base"]
    n = lc.size
    diff = lc - lr
    margin = np.where(np.isfinite(f["margin"]), f["margin"], f["prob"])
    ok = np.isfinite(margin)
    corr = float(np.corrcoef(margin[ok], diff[ok])[0, 1]) if ok.sum() > 2 and np.std(margin[ok]) > 0 \
        and np.std(diff[ok]) > 0 else None
    stats: dict = {
        "unit": cfg.unit, "pairs": n, "ties": int((diff == 0).sum()),
        "frac_chosen_longer": weighted_frac_longer(diff, np.ones(n)),
        "chosen_len_hist": histogram(lc.astype(float), bins=cfg.hist_bins),
        "rejected_len_hist": histogram(lr.astype(float), bins=cfg.hist_bins),
        "mean_len_chosen": float(lc.mean()) if n else None, "mean_len_rejected": float(lr.mean()) if n else None,
        "corr_margin_length_diff": corr,
    }
    if cfg.mode == "stats" or n == 0:
        stats["diff_hist"] = diff_histogram(diff, base, cfg.hist_bins)
        stats["length_controlled"] = length_controlled(f, diff, base, cfg.max_models)
        return base, np.ones(n, dtype=bool), stats
    no_bonus = f.get("no_bonus")
    weights, keep, bins = balance(diff, base, cfg, np.random.default_rng(cfg.seed), no_bonus)
    stats["length_controlled"] = length_controlled(f, diff, weights, cfg.max_models, keep)
    ess = effective_sample_size(weights[keep])
    n_kept = int(keep.sum())
    half = f["half"]
    stats.update(bins=bins, diff_hist=diff_histogram(diff, weights * keep, cfg.hist_bins),
                 diff_hist_before=diff_histogram(diff, base, cfg.hist_bins),
                 weighted_frac_chosen_longer=weighted_frac_longer(diff, weights * keep),
                 weight_mean=float(weights[keep].mean()) if keep.any() else None,
                 weight_max=float(weights.max()) if n else None, max_weight=cfg.max_weight,
                 effective_sample_size=ess, ess_fraction=ess / n_kept if n_kept else None,
                 no_bonus_rows=int(no_bonus.sum()) if no_bonus is not None else 0,
                 heldout=heldout_balance(diff[keep], base[keep], half[keep], cfg,
                                         no_bonus[keep] if no_bonus is not None else None))
    warnings = []
    if n_kept and ess / n_kept < cfg.min_ess_fraction:
        warnings.append(f"effective sample size {ess:.0f} of {n_kept} rows ({ess / n_kept:.1%}) is below "
                        f"min_ess_fraction {cfg.min_ess_fraction:.0%}: a few heavily weighted rows dominate")
    ho = stats["heldout"]
    if ho and not ho["heldout_balanced"]:
        warnings.append(f"held-out chosen-longer fraction {ho['heldout_weighted_frac_chosen_longer']:.3f} "
                        f"(s.e. {ho['heldout_se']:.3f}) is not 0.5: the weights do not balance unseen rows")
    stats["warnings"] = warnings
    return weights, keep, stats


def apply_weights(table: pa.Table, weights: np.ndarray, keep: np.ndarray, stats: dict,
                  cfg: LengthBiasConfig) -> CheckResult:
    """The decision on `table` (all rows or one partition's): new weights, subsampled rows dropped."""
    d = Decision.keep_all(table.num_rows, stats)
    if cfg.mode != "stats" and table.num_rows:
        d.mark(~keep, "length_balance_subsample")
        table = table.set_column(table.schema.get_field_index("weight"), "weight", pa.array(weights, pa.float64()))
    return apply(table, d, RULE, cfg)


def run(table: pa.Table, cfg: LengthBiasConfig) -> CheckResult:
    weights, keep, stats = decide_features(features(table, cfg), cfg)
    return apply_weights(table, weights, keep, stats, cfg)


def degenerate_answers(table: pa.Table) -> np.ndarray:
    """Rows that must not earn a weight bonus: a looping or runaway answer on either side, a rejected echo."""
    return default_flags(table) | echoes_prompt(table, "rejected")
