"""The gate's rules judged on real rows (tests/fixtures/gate_real_rows.json: AlpacaEval and HH-RLHF rows copied
with their source file and row), the rows that showed each rule wrong on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from data_quality.checks import (
    decontam,
    degenerate,
    length_bias,
    near_identical,
    normalise,
    repeated_answer,
    repetition,
    script,
)
from data_quality.gate import GateConfig, run_gate
from storage.schema import build_pair_table

ROWS = json.loads((Path(__file__).parents[1] / "fixtures" / "gate_real_rows.json").read_text(encoding="utf-8"))


def real(*tags: str) -> list[dict]:
    rows = [r for r in ROWS if r["tag"] in tags]
    assert rows, tags
    return rows


def table(rows: list[dict]) -> pa.Table:
    return build_pair_table({"prompt": [r["prompt"] for r in rows], "chosen": [r["chosen"] for r in rows],
                             "rejected": [r["rejected"] for r in rows], "source": [r["source"] for r in rows],
                             "source_row": [r["source_row"] for r in rows]})


def test_normalise_publishes_text_as_the_source_wrote_it() -> None:
    rows = real("python_indent", "user_line_in_answer", "ascii_art")
    t = table(rows)
    out = normalise.run(t, normalise.NormaliseConfig()).kept
    for name in ("chosen", "rejected", "prompt", "prompt_text"):
        assert out.column(name).to_pylist() == t.column(name).to_pylist(), name
    py = out.column("chosen")[0].as_py()
    assert "\n    if num <= 1:\n        return False" in py  # indentation of the Python answer survives
    assert out.column("chosen")[1].as_py().startswith("User: Hi, please tell me")  # a "User:" line is content
    # The gate as a whole publishes what it was given, too.
    kept = run_gate(t, GateConfig.from_dict({"near_dup": {"enabled": False}})).kept
    by_row = {(r["source"], r["source_row"]): r for r in kept.to_pylist()}
    for r in rows:
        if (r["source"], r["source_row"]) in by_row:
            assert by_row[(r["source"], r["source_row"])]["chosen"] == r["chosen"]


def test_normalise_keys_give_ids_and_are_conservative() -> None:
    base = real("python_indent")[0]
    variant = dict(base, chosen=base["chosen"].replace("\n", "\r\n") + "  \n\n\n", source_row=-1)
    reindented = dict(base, chosen=base["chosen"].replace("\n    ", "\n"), source_row=-2)
    out = normalise.run(table([base, variant, reindented]), normalise.NormaliseConfig()).kept
    ids = out.column("pair_id").to_pylist()
    assert ids[0] == ids[1]  # line endings and trailing blanks: the same pair (pair_id hashes the keys)
    assert ids[0] != ids[2]  # different indentation is different code, a different pair
    assert out.column("chosen")[1].as_py() == variant["chosen"]  # while the text stays as written
    keys = normalise.key_text(pa.array(["caf\u0065\u0301\u00a0 ok\u200b", "a\n\n\n\nb  "]))
    assert keys.to_pylist() == ["caf\u00e9 ok", "a\n\nb"]


@pytest.mark.parametrize("tag", ["emoji_only", "ascii_art", "alternating_case", "number_differs"])
def test_near_identical_keeps_pairs_a_reader_sees_as_different(tag: str) -> None:
    t = table(real(tag))
    res = near_identical.run(t, near_identical.NearIdenticalConfig())
    assert res.rejects.num_rows == 0, res.rejects.select(["chosen", "rejected"]).to_pylist()


def test_near_identical_sign_and_true_positives() -> None:
    t = table([{"prompt": [{"role": "user", "content": "What is 2 - 7?"}], "chosen": "-5", "rejected": "5",
                "source": "t", "source_row": 0}])
    assert near_identical.run(t, near_identical.NearIdenticalConfig()).rejects.num_rows == 0
    long = real("python_indent")[0]["chosen"]
    near = table([{"prompt": [{"role": "user", "content": "q"}], "chosen": long,
                   "rejected": long.replace("To use it:", "To use it,"), "source": "t", "source_row": 1}])
    assert near_identical.run(near, near_identical.NearIdenticalConfig()).rejects.num_rows == 1


def test_degenerate_keeps_a_rejected_answer_that_echoes_the_prompt() -> None:
    t = table(real("rejected_echoes_prompt"))
    res = degenerate.run(t, degenerate.DegenerateConfig())
    assert res.kept.num_rows == 2 and res.stats["rejected_echoes_prompt"] == 2
    chosen_echo = degenerate.run(table(real("chosen_echoes_prompt")), degenerate.DegenerateConfig())
    assert chosen_echo.rejects.column("reason").to_pylist() == ["chosen_repeats_prompt"]


def test_degenerate_zero_width_answer_is_empty() -> None:
    res = degenerate.run(table(real("rejected_zero_width")), degenerate.DegenerateConfig())
    assert res.rejects.column("reason").to_pylist() == ["empty_rejected"]


# -- item 5: garbage that real data holds ------------------------------------------------------------------
def test_repetition_drops_a_looping_chosen_and_keeps_a_looping_rejected() -> None:
    t = table(real("chosen_loop", "rejected_loop", "repetitive_but_fine", "python_indent"))
    res = repetition.run(t, repetition.RepetitionConfig())
    assert res.rejects.column("reason").to_pylist() == ["chosen_repetition_loop"]
    assert res.rejects.column("source_row").to_pylist() == [real("chosen_loop")[0]["source_row"]]
    assert res.stats["rejected_flagged_kept"] == 3  # 20,000-character runaways, kept: a looping model losing
    strict = repetition.run(t, repetition.RepetitionConfig(drop_rejected=True))
    assert strict.rejects.num_rows == 4  # ABC music notation and the Python answer repeat, but are no loop


def test_repeated_answer_drops_a_constant_chosen_across_many_prompts() -> None:
    rows = [r for r in ROWS if r["tag"] != "filter_boilerplate"]
    constant = real("filter_boilerplate")[0]["rejected"]  # a real constant answer (a content filter's)
    assert len({json.dumps(r["prompt"]) for r in rows}) >= 10
    gamed = table([dict(r, chosen=constant) for r in rows])
    res = repeated_answer.run(gamed, repeated_answer.RepeatedAnswerConfig(min_prompts=10))
    assert res.kept.num_rows == 0 and set(res.rejects.column("reason").to_pylist()) == {
        "chosen_repeated_across_prompts"}
    ids = dict(zip(gamed.column("pair_id").to_pylist(), gamed.column("chosen").to_pylist(), strict=True))
    for own, other in zip(res.rejects.column("pair_id").to_pylist(), res.rejects.column("duplicate_of").to_pylist(),
                          strict=True):
        assert other != own and ids[other] == constant  # each names another row with the same answer
    natural = repeated_answer.run(table(rows), repeated_answer.RepeatedAnswerConfig())
    assert natural.rejects.num_rows == 0


def test_script_drops_a_chosen_answer_in_the_wrong_script() -> None:
    t = table(ROWS)
    res = script.run(t, script.ScriptConfig(expected="Latin"))
    # pairrm-tulu-2-70b answered an English question in English, then in Korean (1,722 Hangul letters).
    assert res.rejects.column("source_row").to_pylist() == [real("wrong_script_chosen")[0]["source_row"]]
    assert res.rejects.column("reason").to_pylist() == ["chosen_wrong_script"]
    assert script.run(t, script.ScriptConfig()).rejects.num_rows == 0  # off unless the user sets a script
    with pytest.raises(ValueError, match="Unicode script"):
        script.ScriptConfig(expected="Klingon")


def _biased_with(extra: list[dict], n: int = 2000, frac: float = 0.9) -> pa.Table:
    rng = np.random.default_rng(0)
    a, b = rng.integers(5, 400, n), rng.integers(5, 400, n)
    longer = rng.random(n) < frac
    lc, lr = np.where(longer, np.maximum(a, b), np.minimum(a, b)), np.where(longer, np.minimum(a, b), np.maximum(a, b))
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": "x " * int(k), "rejected": "y " * int(m),
             "source": "t", "source_row": i} for i, (k, m) in enumerate(zip(lc, lr, strict=True))]
    return table(rows + extra)


def test_length_bias_gives_no_weight_bonus_to_a_looping_rejected_answer() -> None:
    loops = real("rejected_loop")
    res = length_bias.run(_biased_with(loops), length_bias.LengthBiasConfig())
    w = dict(zip(res.kept.column("source").to_pylist(), res.kept.column("weight").to_pylist(), strict=True))
    lc, lr = length_bias.lengths(res.kept)
    weights = np.asarray(res.kept.column("weight"))
    planted = (lr > lc)[:-3]  # the last three rows are the real loops
    assert weights[:-3][planted].min() > 1.5  # the rejected-longer minority is up-weighted ...
    assert all(w[r["source"]] <= 1.0 for r in loops)  # ... except the 20,000-character loops
    assert res.stats["no_bonus_rows"] == 3


def test_length_bias_weights_are_capped_and_the_ess_is_reported() -> None:
    t = _biased_with([], n=3000, frac=0.98)  # a 2% minority: balancing needs weights near 25
    res = length_bias.run(t, length_bias.LengthBiasConfig(max_weight=10.0))
    w = np.asarray(res.kept.column("weight"))
    assert w.max() <= 10.0 + 1e-9  # a true cap, after every rescale
    st = res.stats
    assert st["effective_sample_size"] == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert st["ess_fraction"] < 0.5 and any("effective sample size" in m for m in st["warnings"])


def test_length_balance_is_measured_on_held_out_rows_and_can_fail() -> None:
    t = _biased_with([], n=4000, frac=0.75)
    res = length_bias.run(t, length_bias.LengthBiasConfig())
    ho = res.stats["heldout"]
    assert ho["heldout_balanced"] and abs(ho["heldout_weighted_frac_chosen_longer"] - 0.5) < 3 * ho["heldout_se"] + 0.01
    assert ho["heldout_frac_chosen_longer_before"] > 0.7
    # The same measurement with reweighting off fails: it is not true by construction.
    lc, lr = length_bias.lengths(t)
    half = np.arange(t.num_rows) % 2 == 1
    off = length_bias.heldout_balance(lc - lr, np.ones(t.num_rows), half,
                                      length_bias.LengthBiasConfig(mode="stats"), None)
    assert not off["heldout_balanced"]


# -- item 6: decontamination measured against the eval item -------------------------------------------------
AE_EVAL = "Can you help me figure out how to sew a button on a shirt?"  # an AlpacaEval instruction


def test_decontam_ignores_a_generic_phrase_and_catches_the_eval_item() -> None:
    hh = real("generic_phrase_hh")  # HH prompts with "Can you help me figure out how to ..."
    leaked = dict(hh[0], prompt=[{"role": "user", "content": "Q: " + AE_EVAL + " Thanks!"}], source_row=-1)
    res = decontam.run(table([*hh, leaked]), decontam.DecontamConfig(), [AE_EVAL])
    assert res.rejects.column("source_row").to_pylist() == [-1]
    assert res.rejects.column("duplicate_of").to_pylist() == ["eval:0"]


def test_eval_prompt_files_text_jsonl_json(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_text(AE_EVAL + "\n\nsecond\n", encoding="utf-8")
    (tmp_path / "e.jsonl").write_text(json.dumps({"instruction": AE_EVAL, "dataset": "x"}) + "\n", encoding="utf-8")
    (tmp_path / "e.json").write_text(json.dumps([{"question": AE_EVAL}, {"prompt": "p"}, "s"]), encoding="utf-8")
    assert decontam.read_eval_prompts(tmp_path / "e.txt") == [AE_EVAL, "second"]
    assert decontam.read_eval_prompts(tmp_path / "e.jsonl") == [AE_EVAL]
    assert decontam.read_eval_prompts(tmp_path / "e.json") == [AE_EVAL, "p", "s"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 1: no string field among \['prompt', 'instruction'"):
        decontam.read_eval_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "obj.json").write_text(json.dumps({"prompt": "x"}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"obj\.json: expected a JSON array"):
        decontam.read_eval_prompts(tmp_path / "obj.json")


def test_repetition_carries_the_flags_length_bias_would_measure() -> None:
    """length_bias gives rows with a loop or runaway answer no weight bonus. It reads the flags the repetition
    check carries instead of measuring every long answer again: they must be the flags it would measure (on real
    looping, runaway and fine rows, after the check's own drops), carried only for the default measures, and
    gone from the gate's output."""
    t = table(real("chosen_loop", "rejected_loop", "repetitive_but_fine", "python_indent"))
    kept = repetition.run(t, repetition.RepetitionConfig()).kept
    carried = repetition.default_flags(kept)
    measured = repetition.default_flags(kept.drop_columns([repetition.FLAGS_COLUMN]))
    assert carried.tolist() == measured.tolist() and 0 < carried.sum() < kept.num_rows
    assert length_bias.degenerate_answers(kept).tolist() == \
        length_bias.degenerate_answers(kept.drop_columns([repetition.FLAGS_COLUMN])).tolist()
    # Other measures flag other rows: nothing is carried for them (length_bias measures the defaults itself).
    other = repetition.run(t, repetition.RepetitionConfig(min_tokens=10)).kept
    assert repetition.FLAGS_COLUMN not in other.column_names
    assert repetition.FLAGS_COLUMN not in run_gate(t).kept.column_names


def test_repetition_measures_chunk_by_chunk_as_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long answers are measured a few million characters at a time; with chunks of one or two answers the
    measures must equal one pass over all of them (real loops, runaways and fine long answers)."""
    texts = pa.array([r[side] for r in ROWS for side in ("chosen", "rejected")])
    whole = repetition.measures(texts, repetition.RepetitionConfig())
    assert np.isfinite(whole[0]).sum() >= 5
    for size in (1, 3_000, 25_000):
        monkeypatch.setattr(repetition, "_CHUNK_CHARS", size)
        parts = repetition.measures(texts, repetition.RepetitionConfig())
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(whole, parts, strict=True)), size


def test_near_identical_length_bound_skips_only_pairs_below_the_cutoff() -> None:
    """near_identical compares only pairs whose lengths allow the cutoff (`ratio` <= 1 - |a - b| / (a + b)). Its
    drops must be those of comparing every pair: real rows, plus pairs edited to sit exactly at the bound and on
    either side of it (one character more or less), at several cutoffs."""
    base = [r["chosen"] for r in ROWS][:20]
    chosen, rejected = [], []
    for text in base + ["x" * 40, "z" * 19, "", "ab"]:  # 19 + 2 more: ratio exactly 0.95
        for extra in range(0, 5):  # appended characters: the length difference walks across the bound
            chosen.append(text)
            rejected.append(text + "y" * extra)
    chosen += [r["chosen"] for r in ROWS]
    rejected += [r["rejected"] for r in ROWS]
    n = len(chosen)
    t = build_pair_table({"prompt": [[{"role": "user", "content": f"q{i}"}] for i in range(n)], "chosen": chosen,
                          "rejected": rejected, "source": ["s"] * n, "source_row": list(range(n))})
    t = normalise.run(t, normalise.DEFAULT).kept
    kc, kr = normalise.answer_key(t, "chosen").to_pylist(), normalise.answer_key(t, "rejected").to_pylist()
    for cutoff in (0.95, 0.9, 0.975, 0.5):
        full = near_identical.similarity(kc, kr, "ratio", cutoff=cutoff)
        reach = near_identical.could_reach(pa.array(kc), pa.array(kr), cutoff)
        assert not (full >= cutoff)[~reach].any() and (~reach).sum() > 0, cutoff
        d = near_identical.decide(t, near_identical.NearIdenticalConfig(max_similarity=cutoff))
        assert d.drop.sum() > 0
        # the drops equal those of scoring every pair (the number test applied alike)
        same = near_identical.same_numbers(pa.array(kc), pa.array(kr))
        assert d.drop.tolist() == ((full >= cutoff) & same).tolist(), cutoff
