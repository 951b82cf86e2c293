"""Every format and container, auto-detected and forced, on small hand-made files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_quality.ingest import IngestError, IngestOptions, detect_format, ingest_files
from data_quality.ingest.sources import read_path
from storage.schema import validate_pair_table

STANDARD = [{"prompt": f"What is {i}+{i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
            for i in range(5)]


def write_jsonl(path: Path, rows: list) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def ok(res, n: int) -> None:
    assert res.input_rows == n == res.pairs.num_rows + res.rejects.num_rows + res.quarantine.num_rows
    validate_pair_table(res.pairs)


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.json", "d.json.gz", "d.parquet", "d.csv",
                                  "d.csv.gz", "d.ndjson", "d.tsv"])
def test_containers(tmp_path, name):
    path = tmp_path / name
    base = name.removesuffix(".gz")
    if base.endswith((".jsonl", ".ndjson")):
        write_jsonl(path, STANDARD)
    elif base.endswith(".json"):
        data = json.dumps(STANDARD, indent=2).encode()
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    elif base.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(STANDARD), path)
    else:
        sep = "\t" if base.endswith(".tsv") else ","
        data = pl.DataFrame(STANDARD).write_csv(separator=sep).encode()
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    res = ingest_files([path])
    ok(res, 5)
    assert res.formats[str(path.absolute())] == "trl_standard"
    row = res.pairs.to_pylist()[3]
    assert row["prompt"] == [{"role": "user", "content": "What is 3+3?"}]
    assert (row["chosen"], row["rejected"], row["source_row"]) == ("It is 6.", "It is 7.", 3)
    assert row["source"] == str(path.absolute()) and row["round"] == 0 and row["weight"] == 1.0


def test_hf_datasets_dir_and_plain_dir(tmp_path):
    import datasets

    datasets.Dataset.from_list(STANDARD).save_to_disk(str(tmp_path / "ds"))
    ok(ingest_files([tmp_path / "ds"]), 5)
    datasets.DatasetDict({"train": datasets.Dataset.from_list(STANDARD),
                          "test": datasets.Dataset.from_list(STANDARD[:2])}).save_to_disk(str(tmp_path / "dd"))
    res = ingest_files([tmp_path / "dd"])
    ok(res, 7)
    assert {s["source"].rsplit("/", 1)[-1] for s in res.per_source} == {"train", "test"}
    plain = tmp_path / "plain"
    plain.mkdir()
    write_jsonl(plain / "a.jsonl", STANDARD[:2])
    pq.write_table(pa.Table.from_pylist(STANDARD[2:]), plain / "b.parquet")
    (plain / "notes.txt").write_text("ignored")
    res = ingest_files([plain])
    ok(res, 5)
    assert len(res.per_source) == 2


def test_hh_format(tmp_path):
    rows = [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine, thanks",
         "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: go away"},
        # Leading blank line stripped (seen in HH derivatives) and an inline "Human:" inside a turn.
        {"chosen": "Human: a  Human: b\n\nAssistant:  yes ", "rejected": "Human: a  Human: b\n\nAssistant: no"},
        {"chosen": "\n\nHuman: x\n\nAssistant: y", "rejected": "\n\nHuman: z\n\nAssistant: w"},  # diverge
        {"chosen": "\n\nHuman: x", "rejected": "\n\nHuman: x\n\nAssistant: w"},  # missing marker
        {"chosen": "\n\nHuman: x\n\nAssistant: y\n\nHuman: more", "rejected": "\n\nHuman: x\n\nAssistant: w"},
    ]
    res = ingest_files([write_jsonl(tmp_path / "hh.jsonl", rows)])
    ok(res, 5)
    pairs = res.pairs.to_pylist()
    assert pairs[0]["prompt"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                  {"role": "user", "content": "how are you?"}]
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("fine, thanks", "go away")
    assert pairs[1]["prompt"] == [{"role": "user", "content": "a  Human: b"}]
    assert pairs[1]["chosen"] == " yes "  # only the marker's separating space is removed
    q = res.quarantine.to_pylist()
    assert [(r["source_row"], r["field"]) for r in q] == [(2, "rejected"), (3, "chosen"), (4, "chosen")]
    assert "Assistant:" in q[1]["error"] and "ends with a Human turn" in q[2]["error"]


def test_alpaca_eval_format(tmp_path):
    base = {"instruction": "Say hi", "output_1": "hi", "generator_1": "m1", "output_2": "hello there",
            "generator_2": "m2", "annotator": "judge"}
    prefs = [1, 2, "1.000039552", "1.9", 1.5, "1.5", 0, None, "abc", 3, True, "0", "2"]
    path = tmp_path / "ae.json"
    path.write_text(json.dumps([{**base, "preference": p} for p in prefs]))
    res = ingest_files([path])
    ok(res, len(prefs))
    kept = {r["source_row"]: r for r in res.pairs.to_pylist()}
    assert kept[0]["chosen"] == "hi" and kept[0]["chosen_model"] == "m1" and kept[0]["preference_prob"] == 1.0
    assert kept[1]["chosen"] == "hello there" and kept[1]["rejected_model"] == "m1"
    assert kept[2]["chosen"] == "hi" and kept[2]["preference_prob"] == pytest.approx(1 - 0.000039552)
    assert kept[3]["chosen"] == "hello there" and kept[3]["preference_prob"] == pytest.approx(0.9)
    assert kept[12]["chosen"] == "hello there" and kept[0]["judge"] == "judge"
    assert sorted(res.rejects.column("source_row").to_pylist()) == [4, 5, 6, 11]
    assert set(res.rejects.column("rule").to_pylist()) == {"ingest_tie"}
    q = {r["source_row"]: r for r in res.quarantine.to_pylist()}
    assert set(q) == {7, 8, 9, 10} and {r["field"] for r in q.values()} == {"preference"}
    assert "'abc'" in q[8]["error"] and "null" in q[7]["error"]


def test_trl_standard_implicit_prompt(tmp_path):
    rows = [{"chosen": "Q: capital of France? A: Paris", "rejected": "Q: capital of France? A: Lyon"},
            {"chosen": "Paris", "rejected": "Lyon"}]
    res = ingest_files([write_jsonl(tmp_path / "t.jsonl", rows)])
    ok(res, 2)
    row = res.pairs.to_pylist()[0]
    assert row["prompt"][0]["content"] == "Q: capital of France? A:"
    assert (row["chosen"], row["rejected"]) == ("Paris", "Lyon")
    assert res.quarantine.column("field").to_pylist() == ["prompt"]


def test_trl_conversational(tmp_path):
    u = {"role": "user", "content": "hi"}
    rows = [
        {"prompt": [u], "chosen": [{"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "assistant", "content": "bye"}]},
        {"chosen": [u, {"role": "assistant", "content": "hello"}],  # implicit prompt
         "rejected": [u, {"role": "assistant", "content": "bye"}]},
        {"prompt": [u], "chosen": [{"role": "user", "content": "x"}],
         "rejected": [{"role": "assistant", "content": "y"}]},
        {"chosen": [u, {"role": "assistant", "content": "a"}],
         "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]},
        {"prompt": [{"role": "wizard", "content": "x"}], "chosen": [{"role": "assistant", "content": "a"}],
         "rejected": [{"role": "assistant", "content": "b"}]},
    ]
    res = ingest_files([write_jsonl(tmp_path / "c.jsonl", rows)])
    assert res.formats[str((tmp_path / "c.jsonl").absolute())] == "trl_conversational"
    ok(res, 5)
    pairs = res.pairs.to_pylist()
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [([u], "hello", "bye")] * 2
    assert res.quarantine.column("field").to_pylist() == ["chosen", "rejected", "prompt[0].role"]


def test_multi_completion_rules(tmp_path):
    rows = [
        {"instruction": "q1", "completions": [{"response": "a", "model": "A", "overall_score": 3},
                                              {"response": "b", "model": "B", "overall_score": 9},
                                              {"response": "c", "model": "C", "overall_score": 5},
                                              {"response": "d", "model": "D", "overall_score": None}]},
        {"prompt": "q2", "completions": [{"text": "x", "score": 2}, {"text": "y", "score": 2}]},
        {"prompt": "q3", "completions": [{"text": "x", "score": 2}]},
    ]
    path = write_jsonl(tmp_path / "uf.jsonl", rows)
    res = ingest_files([path])
    ok(res, 3)
    row = res.pairs.to_pylist()[0]
    assert (row["chosen"], row["rejected"], row["chosen_score"], row["rejected_score"]) == ("b", "a", 9.0, 3.0)
    assert row["chosen_model"] == "B"
    assert res.rejects.column("rule").to_pylist() == ["ingest_tie"]
    assert res.quarantine.column("field").to_pylist() == ["completions"]

    margin = ingest_files([path], options=IngestOptions(min_margin=7))
    assert margin.rejects.column("rule").to_pylist() == ["ingest_margin", "ingest_tie"]

    allp = ingest_files([path], options=IngestOptions(pairing="all_above_margin", min_margin=3))
    # q1: 3 candidate pairs (b>a margin 6 kept, a<c margin 2 rejected, b>c margin 4 kept); q2: 1 tie; q3: 1.
    assert allp.input_rows == 5 and allp.pairs.num_rows == 2 and allp.rejects.num_rows == 2

    runs = [ingest_files([path], options=IngestOptions(pairing="best_vs_random", seed=s)).pairs for s in (1, 1)]
    assert runs[0].equals(runs[1])
    picks = {ingest_files([path], options=IngestOptions(pairing="best_vs_random", seed=s)).pairs
             .column("rejected")[0].as_py() for s in range(12)}
    assert picks == {"a", "c"}


def test_format_override_and_detection_errors(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", STANDARD)
    forced = ingest_files([path], format="alpaca_eval", require_pairs=False)  # every row quarantined, no crash
    assert forced.quarantine.num_rows == 5 and forced.pairs.num_rows == 0
    with pytest.raises(IngestError, match=r"'alpaca_eval' \(forced\) kept none of 5 rows.*output_1.*"
                                          r"try --format trl_standard") as err:
        ingest_files([path], format="alpaca_eval")
    assert err.value.result.quarantine.num_rows == 5
    with pytest.raises(ValueError, match="unknown format"):
        ingest_files([path], format="nope")
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1}])
    with pytest.raises(ValueError, match=r"odd\.jsonl.*cannot detect"):
        ingest_files([odd])
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        ingest_files([tmp_path / "missing.jsonl"])
    (tmp_path / "x.bin").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match=r"x\.bin: unknown file format"):
        ingest_files([tmp_path / "x.bin"])
    [rows] = read_path(path, IngestOptions())
    assert detect_format(rows, IngestOptions()) == "trl_standard"


def test_options_from_dict():
    assert IngestOptions.from_dict({"seed": 3}).seed == 3
    with pytest.raises(ValueError, match="max_feild_bytes"):
        IngestOptions.from_dict({"max_feild_bytes": 1})
    with pytest.raises(ValueError, match="pairing"):
        IngestOptions(pairing="coin_flip")
