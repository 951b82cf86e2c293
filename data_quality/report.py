"""A self-contained HTML report of one gate run: accounting, drops, plots (inline PNG) and the config.

Everything is drawn from the gate's JSON-able stats, so a report can be rebuilt from a stored
`gate_stats.json` as well as from a live result. matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.figures import png_base64

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td.l,th.l{text-align:left}.acc{font-size:1.1em;background:#eef6ee;padding:.6em;
border-radius:4px}.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0}
figcaption{font-size:.85em;color:#555}pre{background:#f8f8f8;padding:.6em;font-size:.8em;overflow:auto}
table.ex{width:100%;table-layout:fixed}table.ex td{vertical-align:top}table.ex pre{white-space:pre-wrap;
max-height:14em;margin:.2em 0}.warn{background:#fdecea;padding:.5em;border-radius:4px}"""


def _stats_of(result: Any) -> dict[str, Any]:
    return result if isinstance(result, dict) else result.stats


def _bars(ax: Any, hist: dict, label: str, alpha: float = 0.6, key: str = "counts") -> None:
    e, c = hist.get("edges") or [], hist.get(key) or []
    if c:
        ax.bar(e[:-1], c, width=[e[i + 1] - e[i] for i in range(len(c))], align="edge", alpha=alpha, label=label)


def _figure(title: str, draw: Callable[[Any], None]) -> str:
    return f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{png_base64(draw)}">' \
           f"<figcaption>{html.escape(title)}</figcaption></figure>"


def _table(rows: list[dict[str, Any]], cols: list[str] | None = None) -> str:
    if not rows:
        return "<p><i>none</i></p>"
    cols = cols or list(rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v))
    head = "".join(f'<th class="{"l" if i == 0 else ""}">{html.escape(c)}</th>' for i, c in enumerate(cols))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i == 0 else ""}">{cell(r.get(c, ""))}</td>'
                                    for i, c in enumerate(cols)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _plots(stats: dict[str, Any]) -> list[str]:
    checks = stats.get("checks", {})
    lb, ni, mg, nd = (checks.get(k, {}) for k in ("length_bias", "near_identical", "margins", "near_dup"))
    figs = []
    if lb.get("chosen_len_hist", {}).get("counts"):
        def lengths(ax: Any) -> None:
            _bars(ax, lb["chosen_len_hist"], "chosen")
            _bars(ax, lb["rejected_len_hist"], "rejected")
            ax.set_xlabel(f"answer length ({lb.get('unit', 'chars')})")
            ax.set_ylabel("pairs")
            ax.legend()
        figs.append(_figure("Answer lengths, chosen vs rejected (kept rows)", lengths))
    if lb.get("diff_hist", {}).get("counts"):
        def diffs(ax: Any) -> None:
            _bars(ax, lb.get("diff_hist_before") or lb["diff_hist"], "before (weight 1)", key="weighted")
            _bars(ax, lb["diff_hist"], "after reweighting", key="weighted", alpha=0.5)
            ax.axvline(0, color="k", lw=0.8)
            ax.set_xlabel("len(chosen) - len(rejected)")
            ax.set_ylabel("total weight")
            ax.legend()
        figs.append(_figure("Length difference before / after reweighting", diffs))
    if ni.get("similarity_hist", {}).get("counts"):
        def sim(ax: Any) -> None:
            _bars(ax, ni["similarity_hist"], "sample")
            ax.axvline(stats.get("config", {}).get("near_identical", {}).get("max_similarity", 1.0), color="r", lw=1)
            ax.set_xlabel("chosen vs rejected similarity")
        figs.append(_figure(f"Chosen/rejected similarity (sample of {ni.get('similarity_sample_size')})", sim))
    for key, label in (("score_margin_hist", "score margin (chosen - rejected)"),
                       ("preference_prob_hist", "preference_prob")):
        if mg.get(key, {}).get("counts"):
            def margin(ax: Any, key: str = key, label: str = label) -> None:
                _bars(ax, mg[key], label)
                ax.set_xlabel(label)
            figs.append(_figure(f"Distribution of {label} (before the margin check)", margin))
    drops = stats.get("drops_by_reason", {})
    if drops:
        def drop_bars(ax: Any) -> None:
            items = sorted(drops.items(), key=lambda kv: kv[1])
            ax.barh([k for k, _ in items], [v for _, v in items], color="#c66")
            ax.set_xlabel("rows dropped")
        figs.append(_figure("Drops by rule:reason", drop_bars))
    sizes = nd.get("cluster_sizes", {})
    if sizes:
        figs.append(_figure("Near-duplicate cluster sizes", lambda ax: draw_cluster_sizes(ax, sizes)))
    return figs


def draw_cluster_sizes(ax: Any, sizes: dict) -> None:
    """Bars on a numeric axis with a few integer ticks (one label per distinct size overlapped), log counts."""
    from matplotlib.ticker import MaxNLocator

    ks = sorted(int(k) for k in sizes)
    ax.bar(ks, [sizes[str(k)] if str(k) in sizes else sizes[k] for k in ks], color="#69c", width=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
    if ks and max(ks) > 50:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("near-duplicate cluster size")
    ax.set_ylabel("clusters")


def _side(r: dict | None) -> str:
    if not r:
        return "<i>the pair itself</i>"
    if "eval_item" in r:
        body = html.escape(r["prompt"]) if r.get("prompt") else "<i>(text not recorded)</i>"
        return f"<b>eval item {r['eval_item']}</b><pre>{body}</pre>"
    if r.get("missing"):
        return f"<i>pair {html.escape(r['pair_id'])} not found</i>"
    return (f"<b>{html.escape(r['source'])}</b><br>prompt<pre>{html.escape(r['prompt'])}</pre>"
            f"chosen<pre>{html.escape(r['chosen'])}</pre>rejected<pre>{html.escape(r['rejected'])}</pre>")


def _examples(examples: dict[str, list[dict]] | None) -> str:
    """Per rule:reason, dropped rows beside the row each was judged against."""
    if examples is None:
        return "<p><i>not recorded in these statistics</i></p>"
    if not examples:
        return "<p><i>no drops</i></p>"
    parts = []
    for key, items in sorted(examples.items()):
        rows = "".join(f'<tr><td class="l">{_side(e["dropped"])}</td><td class="l">{_side(e["against"])}</td></tr>'
                       for e in items)
        parts.append(f"<h3>{html.escape(key)}</h3><table class='ex'><tr><th class='l'>dropped</th>"
                     f"<th class='l'>judged against</th></tr>{rows}</table>")
    return "".join(parts)


def render_report(result: Any, *, parent: Any = None, dataset: str | None = None, quarantined: int = 0,
                  title: str | None = None) -> str:
    """HTML for a GateResult (or anything with .stats, or the stats dict itself)."""
    stats = _stats_of(result)
    checks = stats.get("checks", {})
    n_in, kept, rej = stats.get("input_rows", 0), stats.get("kept", 0), stats.get("rejected", 0)
    parent_id = getattr(parent, "snapshot_id", parent)
    quarantined = quarantined or int(getattr(parent, "quarantined", 0) or 0)
    title = title or f"Quality gate report{f': {dataset}' if dataset else ''}"
    acc = f"input {n_in} = kept {kept} + rejected {rej}" + (" ✓" if n_in == kept + rej else " ✗ MISMATCH")
    if quarantined:
        acc += f"; the parent snapshot also quarantined {quarantined} unreadable source rows " \
               f"(source rows = {n_in + quarantined} = kept + rejected + quarantined)"
    lb = checks.get("length_bias", {})
    lc = lb.get("length_controlled", {})
    ho = lb.get("heldout") or {}
    length_rows = [{"statistic": k, "value": v} for k, v in (
        ("fraction chosen longer", lb.get("frac_chosen_longer")),
        ("weighted fraction chosen longer", lb.get("weighted_frac_chosen_longer")),
        ("mean length chosen", lb.get("mean_len_chosen")), ("mean length rejected", lb.get("mean_len_rejected")),
        ("corr(margin, length diff)", lb.get("corr_margin_length_diff")),
        ("length coefficient (logit per tanh-sd)", lc.get("length_coef")),
        ("length coefficient with weights", lc.get("length_coef_weighted")),
        ("P(longer preferred) at +1 sd", lc.get("p_longer_preferred_at_1sd")),
        ("largest weight (cap)", f"{lb['weight_max']:.3g} ({lb.get('max_weight')})" if "weight_max" in lb else None),
        ("effective sample size", f"{lb['effective_sample_size']:.0f} of {kept} ({lb['ess_fraction']:.1%})"
         if lb.get("ess_fraction") is not None else None),
        ("rows denied a weight bonus (loops, runaways, echoes)", lb.get("no_bonus_rows")),
        ("held-out chosen-longer fraction, weights fitted on the other half",
         f"{ho['heldout_frac_chosen_longer_before']:.3f} -> {ho['heldout_weighted_frac_chosen_longer']:.3f} "
         f"± {ho['heldout_se']:.3f} ({'balanced' if ho['heldout_balanced'] else 'NOT balanced'})"
         if ho else None)) if v is not None]
    warnings = "".join(f'<p class="warn">{html.escape(w)}</p>' for w in lb.get("warnings", []))
    steps = [{"check": n, "rows in": s.get("rows_in"), "rows out": s.get("rows_out"),
              "dropped": sum(s.get("dropped", {}).values()), "seconds": s.get("seconds")} for n, s in checks.items()]
    drops = [{"rule:reason": k, "rows": v} for k, v in sorted(stats.get("drops_by_reason", {}).items())]
    nd = checks.get("near_dup", {})
    nd_rows = [{"statistic": k, "value": nd[k]} for k in ("bands", "rows_per_band", "candidates", "verified_pairs",
                                                          "clusters", "rows_in_clusters", "cross_source_clusters",
                                                          "max_cluster") if k in nd]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>parent snapshot: <b>{html.escape(str(parent_id or '-'))}</b></p>" if parent_id else "",
        f'<p class="acc">{html.escape(acc)}</p>',
        "<h2>Checks, in order</h2>", _table(steps),
        "<h2>Drops by reason</h2>", _table(drops),
        "<h2>Plots</h2>", '<div class="grid">', *_plots(stats), "</div>",
        "<h2>Dropped rows, beside what they were judged against</h2>", _examples(stats.get("examples")),
        "<h2>Length bias</h2>", warnings, _table(length_rows),
        "<h3>Length-controlled win rates per model</h3>", _table(lc.get("models", [])),
        "<h3>Reweighting bins (|length difference|)</h3>", _table(lb.get("bins", [])),
        "<h2>Near-duplicates</h2>", _table(nd_rows),
        "<h2>Resolved configuration</h2>",
        f"<pre>{html.escape(json.dumps(stats.get('config', {}), indent=1, sort_keys=True))}</pre>",
        "</body></html>",
    ]
    return "".join(parts)


def write_report(result: Any, path: str | Path, **kwargs: Any) -> Path:
    """Render the report and write it to `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(result, **kwargs), encoding="utf-8")
    return path
