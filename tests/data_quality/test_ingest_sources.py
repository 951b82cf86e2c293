"""Sources that are not one well-formed file of one format: folders, `save_to_disk` folders (the product's own
hf-dataset export included), hub ids without a hub, files mixing formats, files of non-objects, deep nesting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from data_quality.ingest import IngestError, ingest_files
from pipelines import steps
from storage.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]
STANDARD = [{"prompt": f"q{i}?", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(3)]


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mixed_formats_are_read_row_by_row(tmp_path):
    # HH rows among TRL rows: read as HH (never a pair with the prompt "Human:"), the TRL rows as TRL.
    hh = {"chosen": "\n\nHuman: yo\n\nAssistant: sup", "rejected": "\n\nHuman: yo\n\nAssistant: go away"}
    hh_broken = {"chosen": "\n\nHuman: hi there", "rejected": "\n\nHuman: hi there\n\nAssistant: x"}
    path = jsonl(tmp_path / "mixed.jsonl", [*STANDARD, hh, hh_broken])
    res = ingest_files([path])
    assert res.formats == {str(path.absolute()): "hh+trl_standard"}
    assert res.per_source[0]["format_rows"] == {"trl_standard": 3, "hh": 2}
    pairs = res.pairs.to_pylist()
    assert [p["prompt"][0]["content"] for p in pairs] == ["q0?", "q1?", "q2?", "yo"]
    assert (pairs[3]["chosen"], pairs[3]["rejected"]) == ("sup", "go away")
    assert all(not p["prompt"][0]["content"].startswith("Human:") for p in pairs)
    [q] = res.quarantine.to_pylist()
    assert q["source_row"] == 4 and q["field"] == "chosen"  # the broken HH row, quarantined as HH
    forced = ingest_files([path], format="trl_standard")  # the user's choice holds, with the odd rows counted
    assert forced.formats == {str(path.absolute()): "trl_standard"} and forced.per_source[0]["rows_like"] == {"hh": 2}


def test_file_of_non_objects_is_quarantined_row_by_row(tmp_path):
    path = tmp_path / "strings.json"
    path.write_text(json.dumps(["a", 2, None, [1]]))
    with pytest.raises(IngestError, match=r"strings\.json: format 'unknown' \(detected\) kept none of 4 rows") as e:
        ingest_files([path])
    q = e.value.result.quarantine.to_pylist()
    assert [(r["source_row"], r["error"]) for r in q] == [
        (0, "row is a str, expected an object"), (1, "row is a int, expected an object"),
        (2, "row is a NoneType, expected an object"), (3, "row is a list, expected an object")]
    assert all(r["source"] == str(path.absolute()) for r in q)
    # Among good rows, each non-object row is quarantined and the rest is kept.
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([STANDARD[0], "junk", 7, STANDARD[1]]))
    res = ingest_files([mixed])
    assert res.counts == {"input_rows": 4, "kept": 2, "rejected": 0, "quarantined": 2}


def test_deeply_nested_json_is_a_clear_error_not_a_traceback(tmp_path):
    array = tmp_path / "deep.json"
    array.write_text("[" + "[" * 5000 + "]" * 5000 + "]")
    with pytest.raises(IngestError, match=r"deep\.json: .* kept none of 1 rows.*nested deeper than JSON's 1024"):
        ingest_files([array])
    # A JSON array streams element by element: only the deep element is lost, to quarantine.
    array.write_text("[" + "[" * 5000 + "]" * 5000 + "," + json.dumps(STANDARD[0]) + "]")
    res = ingest_files([array])
    assert res.counts == {"input_rows": 2, "kept": 1, "rejected": 0, "quarantined": 1}
    assert res.quarantine.column("source_row").to_pylist() == [0]
    lines = tmp_path / "deep.jsonl"
    lines.write_text("[" * 5000 + "]" * 5000 + "\n" + json.dumps(STANDARD[0]) + "\n")
    res = ingest_files([lines])  # JSON Lines: only the deep line is lost, to quarantine
    assert res.counts == {"input_rows": 2, "kept": 1, "rejected": 0, "quarantined": 1}


def test_folder_of_files_and_save_to_disk_through_steps(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    jsonl(folder / "a.jsonl", STANDARD[:2])
    jsonl(folder / "b.jsonl", STANDARD[2:])
    ws = Workspace(tmp_path / "ws")
    info = steps.ingest(ws, [str(folder)], "folder")
    assert (info.kept, info.quarantined) == (3, 0)
    assert info.params["format"] == "trl_standard"  # recorded as used, even when detected
    again = steps.ingest(ws, [str(folder)], "folder")
    assert again.snapshot_id == info.snapshot_id  # the folder's fingerprint is stable
    jsonl(folder / "b.jsonl", STANDARD[1:])
    assert steps.ingest(ws, [str(folder)], "folder").snapshot_id != info.snapshot_id  # and content-sensitive

    from storage.formats import export

    exported = export(ws.read(info.snapshot_id), tmp_path / "hf", "hf-dataset")
    back = steps.ingest(ws, [str(exported)], "roundtrip")
    assert back.kept == 3 and back.params["format"] == "trl_conversational"
    assert sorted(r["chosen"] for r in ws.read(back.snapshot_id).to_pylist()) == ["yes 0", "yes 1", "yes 2"]


def _dpo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.slow
def test_cli_hub_id_offline_and_forced_format_errors(tmp_path):
    ws = str(tmp_path / "ws")
    off = _dpo("-w", ws, "ingest", "someone/some-preference-set", "-d", "hub", env={"HF_HUB_OFFLINE": "1"})
    assert off.returncode == 2, off.stderr
    assert "Traceback" not in off.stdout + off.stderr
    err = [line for line in off.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and "hf://datasets/someone/some-preference-set" in err[0] and "HF_HUB_OFFLINE" in err[0]
    fixture = REPO / "tests" / "fixtures" / "formats" / "sharegpt.jsonl"
    forced = _dpo("-w", ws, "ingest", str(fixture), "-d", "sg", "--format", "trl_conversational")
    assert forced.returncode == 2 and "Traceback" not in forced.stderr
    assert "kept none of 6 rows" in forced.stderr and "--format sharegpt" in forced.stderr
    ok = _dpo("-w", ws, "ingest", str(fixture), "-d", "sg")
    assert ok.returncode == 0, ok.stderr
    assert "format: sharegpt" in ok.stdout + ok.stderr
    shown = _dpo("-w", ws, "show", "sg", "--json")
    assert json.loads(shown.stdout)["params"]["format"] == "sharegpt"
    mapped = jsonl(tmp_path / "custom.jsonl", [{"q": "hi?", "a": {"good": "yes"}, "bad": "no"}])
    m = _dpo("-w", ws, "ingest", str(mapped), "-d", "m", "--map", "prompt=q,chosen=a.good,rejected=bad")
    assert m.returncode == 0, m.stderr
    assert "format: mapped" in m.stdout + m.stderr
    pku = REPO / "tests" / "fixtures" / "formats" / "pku_saferlhf.jsonl"
    safer = _dpo("-w", ws, "ingest", str(pku), "-d", "pku", "-o", "pku_label=safer")
    assert safer.returncode == 0, safer.stderr
    assert json.loads(_dpo("-w", ws, "show", "pku", "--json").stdout)["params"]["options"]["pku_label"] == "safer"
    folder = _dpo("-w", ws, "ingest", str(fixture.parent), "-d", "folder")  # a folder of files
    assert folder.returncode == 0 and "Traceback" not in folder.stderr, folder.stderr
    dir_fail = _dpo("-w", ws, "ingest", str(tmp_path / "nothing-here"), "-d", "x")
    assert dir_fail.returncode == 2 and "Traceback" not in dir_fail.stderr


def test_refresh_toml_folder_source_with_a_column_map(tmp_path):
    from pipelines.config import ConfigError, load_refresh_config

    folder = tmp_path / "custom"
    folder.mkdir()
    jsonl(folder / "part-0.jsonl", [{"q": "hi?", "a": [{"t": "hello"}], "bad": "go"}])
    jsonl(folder / "part-1.jsonl", [{"q": "bye?", "a": [{"t": "see you"}], "bad": "no"}])
    cfg_path = tmp_path / "refresh.toml"
    cfg_path.write_text('[[sources]]\nname = "custom"\npaths = ["custom"]\nmap = "prompt=q,chosen=a.0.t,rejected=bad"\n'
                        '[[sources]]\nname = "hub"\npaths = ["hf://datasets/org/set"]\n')
    cfg = load_refresh_config(cfg_path)
    params = cfg.ingest_params(cfg.sources[0])
    assert params.paths == [str(folder)] and params.options["columns"] == "prompt=q,chosen=a.0.t,rejected=bad"
    assert cfg.ingest_params(cfg.sources[1]).paths == ["hf://datasets/org/set"]  # not made relative to the file
    # What ingest_flow runs for this source: fingerprint (the folder), read, publish with the format recorded.
    info = steps.ingest(Workspace(tmp_path / "ws"), params.paths, params.dataset, options=params.options)
    assert (info.kept, info.params["format"]) == (2, "mapped")
    cfg_path.write_text('[[sources]]\nname = "custom"\npaths = ["custom"]\nmap = "answer=q"\n')
    with pytest.raises(ConfigError, match="unknown target"):
        load_refresh_config(cfg_path)


def test_deeply_nested_row_is_quarantined(tmp_path):
    # Deep enough for orjson to parse but too deep for Python's json to print back into the quarantine.
    deep = "[" * 1000 + "]" * 1000
    lines = tmp_path / "deep_row.jsonl"
    lines.write_text('{"prompt": ' + deep + ', "chosen": "a", "rejected": "b"}\n' + json.dumps(STANDARD[0]) + "\n")
    res = ingest_files([lines])
    assert res.counts == {"input_rows": 2, "kept": 1, "rejected": 0, "quarantined": 1}
    assert res.quarantine.column("source_row").to_pylist() == [0]
    # A CSV cell holding a deeply nested JSON list (messages are JSON text in CSV).
    import csv

    cell = tmp_path / "deep_cell.csv"
    answer = json.dumps([{"role": "assistant", "content": "a"}])
    with open(cell, "w", newline="") as fh:
        csv.writer(fh).writerows([["prompt", "chosen", "rejected"], ["[" * 5000, answer, answer.replace('"a"', '"b"')],
                                  [json.dumps([{"role": "user", "content": "q"}]), answer,
                                   answer.replace('"a"', '"b"')]])
    res = ingest_files([cell])
    assert res.counts == {"input_rows": 2, "kept": 1, "rejected": 0, "quarantined": 1}


def test_hub_id_through_datasets_when_reachable(tmp_path, monkeypatch):
    # The hub itself is never contacted in tests: datasets.load_dataset and the revision look-up are stand-ins.
    import datasets

    from data_quality.ingest import hub

    calls = []

    def fake_load(name, *args, **kwargs):
        calls.append((name, args, kwargs))
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(STANDARD[:2]),
                                     "test": datasets.Dataset.from_list(STANDARD[2:])})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    monkeypatch.setattr(hub, "revision", lambda name: "0123abc")
    assert hub.hub_id("org/prefs") == "org/prefs" and hub.hub_id("hf://datasets/org/prefs") == "org/prefs"
    assert hub.hub_id("missing/file.jsonl") is None  # a data file path is never taken for a hub id
    info = steps.ingest(Workspace(tmp_path / "ws"), ["org/prefs"], "hub")
    assert calls == [("org/prefs", (), {})]  # no trust_remote_code, no other options
    assert (info.kept, info.params["format"]) == (3, "trl_standard")
    assert info.params["inputs"] == [{"path": "hf://datasets/org/prefs", "bytes": None, "xxh3": "0123abc"}]
    assert set(info.params["formats"]) == {"hf://datasets/org/prefs/train", "hf://datasets/org/prefs/test"}


def test_real_hh_rows_inside_a_trl_file_read_as_hh(tmp_path, shared_data):
    import gzip

    with gzip.open(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as fh:
        hh_rows = [json.loads(next(fh)) for _ in range(40)]
    alone = ingest_files([jsonl(tmp_path / "hh.jsonl", hh_rows)], require_pairs=False)
    mixed = ingest_files([jsonl(tmp_path / "mixed.jsonl", STANDARD * 10 + hh_rows)], require_pairs=False)
    assert mixed.per_source[0]["format_rows"] == {"trl_standard": 30, "hh": 40}
    hh_pairs = mixed.pairs.filter(mixed.pairs.column("source_row").to_numpy() >= 30)
    cols = ["prompt", "chosen", "rejected"]
    assert hh_pairs.select(cols).to_pylist() == alone.pairs.select(cols).to_pylist()  # same pairs as HH alone
    assert mixed.quarantine.num_rows == alone.quarantine.num_rows


@pytest.mark.parametrize("name", ["rows.csv", "rows.tsv.gz"])
def test_csv_streams_in_batches_with_the_rows_polars_read(tmp_path, name):
    """Arrow's streaming reader (1 MiB blocks) gives exactly the rows the whole-file polars read gave: every cell
    text, an empty cell null, a quoted empty cell "", "NA" and "null" kept as text, quoted separators and newlines."""
    import gzip

    import polars as pl

    from data_quality.ingest.containers import _csv_batches, read_csv
    from data_quality.ingest.options import IngestOptions

    sep = "\t" if ".tsv" in name else ","
    tricky = ['"a, ""quoted""\nanswer"', "", '""', "NA", "null", "3.5", "  padded  "]
    lines = [sep.join(["prompt", "chosen", "rejected"])]
    lines += [sep.join([f"p{i} " + "x" * 200, tricky[i % len(tricky)], f"r{i}"]) for i in range(20_000)]
    data = ("\n".join(lines) + "\n").encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    want = pl.read_csv(data, separator=sep, infer_schema=False).to_dicts()
    rows = read_csv(path, str(path), IngestOptions())
    assert rows.quarantine == [] and rows.records == list(enumerate(want))
    assert sum(1 for _ in _csv_batches(path, sep, [])) > 2  # streamed: a 4 MB file comes in several batches
