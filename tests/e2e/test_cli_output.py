"""Output is the data: `dpo sql` and every listing verb print values exactly in table, JSON-lines and CSV form.

Judged on a real snapshot (HH-RLHF plus two AlpacaEval annotation files whose answers hold "[Your Name]",
"[i]", "[Chorus]", ":" runs and emoji), round-tripped row by row against the Parquet file the snapshot stores.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines.cli import main

ALPACA = ("alpaca_eval/annotations/FuseChat-Llama-3.2-1B-Instruct__weighted_alpaca_eval_gpt4_turbo.json.gz",
          "alpaca_eval/annotations/ghost-7b-alpha__alpaca_eval_gpt4.json.gz")
TRICKY = ["[name] and [Your Name]", "thumbs :thumbs_up: up", "closing [/] tag", "[bold red]red?[/bold red]",
          "é 😀 \u2028 tab\tend", ""]


@pytest.fixture(scope="module")
def real_ws(tmp_path_factory, shared_data_module):
    ws = tmp_path_factory.mktemp("out") / "ws"
    srcs = [str(shared_data_module / "hh-rlhf" / "harmless-base-test.jsonl.gz"),
            *(str(shared_data_module / a) for a in ALPACA)]
    assert main(["-w", str(ws), "ingest", *srcs, "--dataset", "mix"]) == 0
    return ws


@pytest.fixture(scope="module")
def shared_data_module():
    path = Path(os.environ.get("DPO_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"shared data not found at {path} (set DPO_SHARED_DATA)")
        pytest.skip(f"shared data not found at {path}")
    return path


@pytest.fixture
def tricky_ws(tmp_path):
    from storage.schema import build_pair_table
    from storage.workspace import Workspace

    n = len(TRICKY)
    pairs = build_pair_table({
        "prompt": [[{"role": "user", "content": f"q {t}"}] for t in TRICKY],
        "chosen": [f"{t} chosen" for t in TRICKY],
        "rejected": [f"{t} rejected" for t in TRICKY],
        "chosen_score": [0.1, 1e16, 1 / 3, None, 5e-324, -0.0],
        "source": ["unit"] * n,
        "source_row": list(range(n)),
    })
    Workspace(tmp_path / "ws").publish("t", pairs)
    return tmp_path / "ws"


def _run(capsysbinary, ws, *args) -> bytes:
    rc = main(["-w", str(ws), *args])
    captured = capsysbinary.readouterr()
    assert rc == 0, captured.err.decode()
    return captured.out


def _parquet_rows(ws) -> dict[tuple[str, int], dict]:
    from storage.workspace import Workspace

    info = Workspace(ws).resolve("mix@1")
    rows = pq.read_table(info.path / "pairs.parquet").to_pylist()
    return {(r["source"], r["source_row"]): r for r in rows}


def test_sql_json_is_the_data_for_every_row_of_a_real_snapshot(real_ws, capsysbinary):
    want = _parquet_rows(real_ws)
    text = _run(capsysbinary, real_ws, "sql", 'SELECT * FROM "mix@1"', "--format", "json")
    lines = text.decode("utf-8").split("\n")[:-1]
    assert len(lines) == len(want) > 3000
    seen = 0
    for line in lines:
        got = json.loads(line)  # every line is valid JSON on its own
        ref = want[(got["source"], got["source_row"])]
        for name, value in ref.items():
            assert got[name] == value, (name, got["source"], got["source_row"])
        seen += 1
    assert seen == len(want)
    # The real answers hold what rich markup used to eat, and the lines carry them verbatim (no \u escapes).
    raw = text.decode("utf-8")
    assert "[Your Name]" in raw and "[Chorus]" in raw and "😊" in raw


def test_sql_csv_is_the_data_for_every_row_of_a_real_snapshot(real_ws, capsysbinary):
    want = _parquet_rows(real_ws)
    text = _run(capsysbinary, real_ws, "sql", 'SELECT * FROM "mix@1"', "--format", "csv").decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == len(want)
    for got in rows:
        ref = want[(got["source"], int(got["source_row"]))]
        for name in ("pair_id", "prompt_text", "chosen", "rejected", "source", "judge", "chosen_model"):
            assert got[name] == (ref[name] or ""), name
        assert json.loads(got["prompt"]) == ref["prompt"]  # a list column, as JSON
        assert float(got["weight"]) == ref["weight"]
        if ref["preference_prob"] is not None:
            assert float(got["preference_prob"]) == ref["preference_prob"]


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_markup_and_emoji_codes_print_literally(tricky_ws, capsysbinary, fmt):
    text = _run(capsysbinary, tricky_ws, "sql", "SELECT chosen FROM t ORDER BY source_row", "--format", fmt,
                "--limit", "100").decode("utf-8")
    for t in TRICKY[:4]:
        assert f"{t} chosen" in text, (fmt, t)
    assert "👍" not in text
    if fmt == "json":
        assert [json.loads(x)["chosen"] for x in text.split("\n")[:-1]] == [f"{t} chosen" for t in TRICKY]


def test_floats_nulls_and_empty_strings_are_exact(tricky_ws, capsysbinary):
    q = "SELECT source_row, chosen_score, prompt FROM t ORDER BY source_row"
    lines = _run(capsysbinary, tricky_ws, "sql", q, "--format", "json").decode("utf-8").split("\n")[:-1]
    scores = [json.loads(x)["chosen_score"] for x in lines]
    assert scores[:3] == [0.1, 1e16, 1 / 3] and scores[3] is None and scores[4] == 5e-324
    assert math.copysign(1, scores[5]) == -1
    assert json.loads(lines[5])["prompt"] == [{"role": "user", "content": "q "}]
    rows = list(csv.reader(io.StringIO(_run(capsysbinary, tricky_ws, "sql", q, "--format", "csv").decode(),
                                       newline="")))
    assert [float(r[1]) if r[1] else None for r in rows[1:]][:5] == [0.1, 1e16, 1 / 3, None, 5e-324]
    assert json.loads(rows[1][2]) == [{"role": "user", "content": "q [name] and [Your Name]"}]


def test_timestamps_are_iso_8601(tricky_ws, capsysbinary):
    line = _run(capsysbinary, tricky_ws, "sql", "SELECT created_at FROM snapshots", "--format", "json")
    created = json.loads(line)["created_at"]
    assert created[10] == "T" and created[4] == "-"
    rows = list(csv.reader(io.StringIO(_run(capsysbinary, tricky_ws, "sql", "SELECT created_at FROM snapshots",
                                            "--format", "csv").decode())))
    assert rows[1][0][10] == "T"


@pytest.mark.parametrize("verb", [["snapshots"], ["show", "t@1"], ["sql", "SELECT 1 AS x"], ["rounds"], ["runs"]])
def test_every_listing_verb_takes_one_format_option(tricky_ws, capsysbinary, verb):
    for fmt in ("json", "csv", "table"):
        out = _run(capsysbinary, tricky_ws, *verb, "--format", fmt).decode("utf-8")
        if fmt == "json":
            for x in out.split("\n")[:-1]:
                json.loads(x)
        if fmt == "csv" and out:
            list(csv.reader(io.StringIO(out)))
    if verb[0] in ("snapshots", "show"):
        rec = json.loads(_run(capsysbinary, tricky_ws, *verb, "--format", "json").decode().split("\n")[:-1][0])
        assert rec.get("snapshot", rec.get("snapshot_id")) == "t@1"
