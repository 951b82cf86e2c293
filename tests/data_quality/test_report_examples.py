"""The report shows dropped rows beside the row they were judged against, and readable cluster-size labels."""

from __future__ import annotations

import json
from pathlib import Path

from data_quality.gate import GateConfig, run_gate
from data_quality.report import draw_cluster_sizes, render_report
from storage.schema import build_pair_table

ROWS = json.loads((Path(__file__).parents[1] / "fixtures" / "gate_real_rows.json").read_text(encoding="utf-8"))


def test_report_shows_each_drop_beside_the_row_it_was_judged_against() -> None:
    base = [r for r in ROWS if r["tag"] == "python_indent"][0]
    rows = [*ROWS, dict(base, source="copy.jsonl", source_row=7)]  # an exact duplicate from another source
    t = build_pair_table({"prompt": [r["prompt"] for r in rows], "chosen": [r["chosen"] for r in rows],
                          "rejected": [r["rejected"] for r in rows], "source": [r["source"] for r in rows],
                          "source_row": [r["source_row"] for r in rows]})
    evals = ["List the pieces of a reinforcement learning system that can learn how to play Atari games."]
    res = run_gate(t, GateConfig.from_dict({"near_dup": {"enabled": False}}), eval_prompts=evals)
    ex = res.stats["examples"]
    assert set(ex) == set(res.stats["drops_by_reason"])  # every rule:reason has examples
    dup = ex["dedup:exact_duplicate"][0]
    assert dup["dropped"]["source"] == "copy.jsonl#7"
    assert dup["against"]["source"] == "claude-2__alpaca_eval_gpt4.json.gz#486"  # the kept row it duplicates
    assert ex["decontam:contaminated_prompt"][0]["against"] == {"eval_item": 0, "prompt": evals[0]}
    text = render_report(res)
    assert "Dropped rows, beside what they were judged against" in text
    assert "claude-2__alpaca_eval_gpt4.json.gz#486" in text and "copy.jsonl#7" in text
    assert render_report(res.stats) == text  # examples live in the stats, so a rebuilt report is the same


def test_cluster_size_labels_do_not_crowd() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sizes = {str(k): max(1, 500 // k) for k in range(2, 90)}  # AlpacaEval-like: many distinct sizes
    fig = Figure(figsize=(5.2, 3.0), dpi=90)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw_cluster_sizes(ax, sizes)
    canvas.draw()
    labels = [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
    assert 0 < len(labels) <= 10
    boxes = sorted((t.get_window_extent(canvas.get_renderer()) for t in labels), key=lambda b: b.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:], strict=False))  # no two labels overlap
