"""Margins and the per-prompt cap."""

from __future__ import annotations

from data_quality.checks import margins
from storage.schema import build_pair_table


def test_margins_and_cap() -> None:
    n = 6
    t = build_pair_table({
        "prompt": [[{"role": "user", "content": "q" if i < 4 else f"p{i}"}] for i in range(n)],
        "chosen": [f"c{i}" for i in range(n)], "rejected": [f"r{i}" for i in range(n)],
        "chosen_score": [1.0, 2.0, 3.0, 1.0, None, None],
        "rejected_score": [0.5, 0.0, 0.0, 1.0, None, None],
        "preference_prob": [None, None, None, None, 0.52, 0.9],
        "source": ["t"] * n, "source_row": list(range(n)),
    })
    res = margins.run(t, margins.MarginsConfig(min_score_margin=0.0, min_preference_prob=0.55, max_pairs_per_prompt=2))
    rej = dict(zip(res.rejects.column("source_row").to_pylist(), res.rejects.column("reason").to_pylist(), strict=True))
    # Row 3 ties (margin 0), row 4 is a coin flip; of q's remaining rows (margins .5, 2, 3) the cap keeps 2 and 3.
    assert rej == {3: "low_score_margin", 4: "low_preference_prob", 0: "prompt_cap"}
    assert sorted(res.kept.column("source_row").to_pylist()) == [1, 2, 5]
    off = margins.run(t, margins.MarginsConfig(min_score_margin=None, min_preference_prob=None))
    assert off.kept.num_rows == n
