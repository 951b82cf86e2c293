"""The HTML report is self-contained and carries the accounting line, drops and plots."""

from __future__ import annotations

import re

from data_quality.gate import run_gate
from data_quality.report import render_report, write_report
from data_quality.synthetic import make_synthetic


def test_report_is_self_contained_with_plots_and_accounting(tmp_path) -> None:
    data = make_synthetic(1500, seed=2)
    res = run_gate(data.table, eval_prompts=data.eval_prompts)
    path = write_report(res, tmp_path / "r" / "report.html", dataset="synth", quarantined=3)
    text = path.read_text()
    assert f"input {data.table.num_rows} = kept {res.kept.num_rows} + rejected {res.rejects.num_rows} ✓" in text
    assert "quarantined 3" in text
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(imgs) >= 6  # lengths, length diff, similarity, margin, drops, clusters
    assert not re.search(r'(src|href)="(http|//|/)', text)  # nothing fetched from outside
    for reason in res.stats["drops_by_reason"]:
        assert reason in text
    # Rebuilding from the stats dict alone gives the same document.
    assert render_report(res.stats, dataset="synth", quarantined=3) == text
