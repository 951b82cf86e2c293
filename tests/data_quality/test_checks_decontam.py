"""Decontamination against user-supplied eval prompts."""

from __future__ import annotations

from data_quality.checks import decontam
from storage.schema import build_pair_table

EVAL = ["Write a short poem about the autumn leaves falling in the quiet park at dusk"]


def test_decontam_prompt_and_answer_overlap() -> None:
    rows = [
        ("Please write a short poem about the autumn leaves falling in the quiet park", "ok", "no"),  # prompt
        ("Something else entirely", "Sure: poem about the autumn leaves falling in the quiet park at dusk", "x"),
        ("Write a poem", "Leaves fall.", "No."),  # shares fewer than 8 consecutive words
    ]
    t = build_pair_table({"prompt": [[{"role": "user", "content": p}] for p, _, _ in rows],
                          "chosen": [c for _, c, _ in rows], "rejected": [r for _, _, r in rows],
                          "source": ["t"] * 3, "source_row": [0, 1, 2]})
    res = decontam.run(t, decontam.DecontamConfig(ngram=8), EVAL)
    assert dict(zip(res.rejects.column("source_row").to_pylist(), res.rejects.column("reason").to_pylist(),
                    strict=True)) == {0: "contaminated_prompt", 1: "contaminated_chosen"}
    only_prompt = decontam.run(t, decontam.DecontamConfig(fields=("prompt_text",)), EVAL)
    assert only_prompt.rejects.column("source_row").to_pylist() == [0]
    assert decontam.run(t, decontam.DecontamConfig(), None).kept.num_rows == 3


def test_decontam_min_fraction_of_the_eval_item() -> None:
    t = build_pair_table({"prompt": [[{"role": "user", "content": "hello"}]] * 2,
                          "chosen": ["Sure: poem about the autumn leaves falling in the quiet park at dusk", "fine"],
                          "rejected": ["x", "y"], "source": ["t"] * 2, "source_row": [0, 1]})
    # The answer shares 12 consecutive words ("poem ... dusk") with the eval prompt: 5 of its 8 distinct 8-grams.
    cfg = {"long_ngram": None}
    assert decontam.run(t, decontam.DecontamConfig(min_fraction=0.62, **cfg), EVAL).rejects.num_rows == 1
    assert decontam.run(t, decontam.DecontamConfig(min_fraction=0.63, **cfg), EVAL).rejects.num_rows == 0
    # ... but 12 words are not a long n-gram of 13: with the fraction out of reach, nothing is flagged.
    assert decontam.run(t, decontam.DecontamConfig(min_fraction=1.0, long_ngram=13), EVAL).rejects.num_rows == 0
    assert decontam.run(t, decontam.DecontamConfig(min_fraction=1.0, long_ngram=12), EVAL).rejects.num_rows == 1


def test_a_text_equally_covered_by_two_eval_items_names_the_first() -> None:
    """Seen on the shared data: an eval file holding one prompt twice named either copy, by group_by's order,
    so the memory and out-of-core runs of one input disagreed on `duplicate_of` (213 rows of 56k)."""
    n = 400
    prompts = [f"{i} {EVAL[0]}" for i in range(n)]  # each row holds all of the eval item's n-grams
    t = build_pair_table({"prompt": [[{"role": "user", "content": p}] for p in prompts],
                          "chosen": ["ok"] * n, "rejected": ["no"] * n, "source": ["t"] * n,
                          "source_row": list(range(n))})
    cfg = decontam.DecontamConfig(long_ngram=None)
    for eval_prompts, named in ((EVAL * 2, "eval:0"), (["unrelated words only here", *EVAL * 3], "eval:1")):
        res = decontam.run(t, cfg, eval_prompts)
        assert res.rejects.num_rows == n
        assert set(res.rejects.column("duplicate_of").to_pylist()) == {named}
