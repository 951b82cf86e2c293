"""The HTML run report: config, data accounting and a plot per metric (matplotlib Agg, PNGs inline)."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from storage.figures import png_base64

PLOTS = [("loss",), ("rewards/chosen", "rewards/rejected", "rewards/margin"), ("rewards/accuracy",),
         ("logps/chosen", "logps/rejected"), ("logratio/offpolicy",), ("kl/onpolicy", "kl/onpolicy_mc"),
         ("nll_per_token",), ("grad_norm",), ("lr",), ("tokens_per_s",), ("len/chosen", "len/rejected")]


def _plot(series: dict[str, list[tuple[int, float]]], names: tuple[str, ...]) -> str:
    def draw(ax: Any) -> None:
        for name in names:
            pts = sorted(series[name])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, lw=1.2)
        ax.set_xlabel("step")
        ax.set_title(", ".join(names), fontsize=9)
        if len(names) > 1:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)

    return png_base64(draw, 5, 3)


def write_report(path: Path, *, run_id: str, rows: list[tuple[int, str, float]], info: dict[str, Any],
                 config: dict[str, Any]) -> Path:
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for step, name, value in rows:
        series[name].append((int(step), float(value)))
    imgs = [f'<img src="data:image/png;base64,{_plot(series, names)}"/>'
            for names in PLOTS if all(n in series for n in names)]
    final = {k: sorted(v)[-1][1] for k, v in series.items()}
    esc = lambda x: html.escape(json.dumps(x, indent=1, sort_keys=True, default=str))  # noqa: E731
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>run {html.escape(run_id)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}img{margin:4px;border:1px solid #ddd}"
            "pre{background:#f6f6f6;padding:8px}</style></head><body>"
            f"<h1>Training run {html.escape(run_id)}</h1><h2>Run</h2><pre>{esc(info)}</pre>"
            f"<h2>Final metrics</h2><pre>{esc(final)}</pre><h2>Curves</h2>{''.join(imgs)}"
            f"<h2>Config</h2><pre>{esc(config)}</pre></body></html>")
    path.write_text(page, encoding="utf-8")
    return path
