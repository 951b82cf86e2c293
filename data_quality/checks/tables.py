"""The gate's statistics as flat Arrow tables, so the catalog (and SQL) sees the same numbers as the report."""

from __future__ import annotations

from typing import Any

import pyarrow as pa


def _hist_rows(metric: str, hist: dict | None) -> list[dict]:
    if not hist or not hist.get("edges"):
        return []
    e, c = hist["edges"], hist["counts"]
    w = hist.get("weighted")
    return [{"metric": metric, "bin_lo": float(e[i]), "bin_hi": float(e[i + 1]), "count": int(c[i]),
             "weighted": float(w[i]) if w is not None else None} for i in range(len(c))]


def stats_tables(stats: dict[str, Any]) -> dict[str, pa.Table]:
    checks = stats.get("checks", {})
    drops = [{"rule": k.split(":", 1)[0], "reason": k.split(":", 1)[1], "rows": int(v)}
             for k, v in stats.get("drops_by_reason", {}).items()]
    steps = [{"step": i, "check": name, "rows_in": int(st.get("rows_in", 0)), "rows_out": int(st.get("rows_out", 0)),
              "seconds": float(st.get("seconds", 0.0))} for i, (name, st) in enumerate(checks.items())]
    hist: list[dict] = []
    lb = checks.get("length_bias", {})
    hist += _hist_rows("length_diff_before", lb.get("diff_hist_before") or lb.get("diff_hist"))
    hist += _hist_rows("length_diff_after", lb.get("diff_hist"))
    hist += _hist_rows("chosen_length", lb.get("chosen_len_hist"))
    hist += _hist_rows("rejected_length", lb.get("rejected_len_hist"))
    hist += _hist_rows("similarity", checks.get("near_identical", {}).get("similarity_hist"))
    hist += _hist_rows("score_margin", checks.get("margins", {}).get("score_margin_hist"))
    hist += _hist_rows("preference_prob", checks.get("margins", {}).get("preference_prob_hist"))
    clusters = [{"cluster_size": int(k), "clusters": int(v)}
                for k, v in checks.get("near_dup", {}).get("cluster_sizes", {}).items()]
    lc = lb.get("length_controlled", {})
    summary = [{"metric": k, "value": float(v)} for k, v in {
        "input_rows": stats.get("input_rows"), "kept": stats.get("kept"), "rejected": stats.get("rejected"),
        "frac_chosen_longer": lb.get("frac_chosen_longer"),
        "weighted_frac_chosen_longer": lb.get("weighted_frac_chosen_longer"),
        "corr_margin_length_diff": lb.get("corr_margin_length_diff"),
        "length_coef": lc.get("length_coef"), "length_coef_weighted": lc.get("length_coef_weighted"),
        "weight_max": lb.get("weight_max"), "effective_sample_size": lb.get("effective_sample_size"),
        "ess_fraction": lb.get("ess_fraction"),
        "heldout_weighted_frac_chosen_longer": (lb.get("heldout") or {}).get("heldout_weighted_frac_chosen_longer"),
        "heldout_se": (lb.get("heldout") or {}).get("heldout_se"),
    }.items() if v is not None]
    schemas = {
        "gate_drops": pa.schema([("rule", pa.string()), ("reason", pa.string()), ("rows", pa.int64())]),
        "gate_steps": pa.schema([("step", pa.int64()), ("check", pa.string()), ("rows_in", pa.int64()),
                                 ("rows_out", pa.int64()), ("seconds", pa.float64())]),
        "gate_hist": pa.schema([("metric", pa.string()), ("bin_lo", pa.float64()), ("bin_hi", pa.float64()),
                                ("count", pa.int64()), ("weighted", pa.float64())]),
        "gate_clusters": pa.schema([("cluster_size", pa.int64()), ("clusters", pa.int64())]),
        "gate_length_bins": pa.schema([("bin_lo", pa.float64()), ("bin_hi", pa.float64()),
                                       ("chosen_longer", pa.int64()), ("rejected_longer", pa.int64()),
                                       ("chosen_longer_factor", pa.float64()),
                                       ("rejected_longer_factor", pa.float64())]),
        "gate_length_models": pa.schema([("model", pa.string()), ("n", pa.int64()), ("win_rate", pa.float64()),
                                         ("lc_win_rate", pa.float64()), ("length_coef", pa.float64()),
                                         ("frac_longer", pa.float64())]),
        "gate_summary": pa.schema([("metric", pa.string()), ("value", pa.float64())]),
    }
    rows = {"gate_drops": drops, "gate_steps": steps, "gate_hist": hist, "gate_clusters": clusters,
            "gate_length_bins": lb.get("bins", []), "gate_length_models": lc.get("models", []),
            "gate_summary": summary}
    return {name: pa.Table.from_pylist(rows[name], schema=schema) for name, schema in schemas.items()}
