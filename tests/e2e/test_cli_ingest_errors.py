"""`dpo ingest` refuses files that are not a dataset - empty, or a JSON array cut short (a broken download) -
with exit 2 and one line naming the file and where it ends, never "0 rows" and exit 0; a too-deep element is
one quarantined row, the file's other rows are kept."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from pipelines.cli import main

ROW = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}
CASES = {
    "empty.jsonl": (b"", r"empty\.jsonl: no rows"),
    "empty.json": (b"  \n", r"empty\.json: no rows"),
    "open.json": (b"[", r"open\.json: truncated file.*never closed.*at byte 1 inside element 0"),
    "cut.json": (b'[{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "cho',
                 r"cut\.json: truncated file.*broken download.*at byte 70 inside element 1"),
    "cut.json.gz": (gzip.compress(json.dumps([{**ROW, "chosen": f"c{i}"} for i in range(400)]).encode())[:900],
                    r"cut\.json\.gz: truncated file.*gzip stream is truncated.*at byte \d+ inside element \d+"),
}


def _run(capfd, argv: list[str]) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    cap = capfd.readouterr()
    return rc, cap.out + cap.err


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, (data, _) in CASES.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


@pytest.mark.parametrize("name", list(CASES))
def test_empty_or_truncated_file_exits_2_with_one_line(env, capfd, name):
    rc, text = _run(capfd, ["-w", "ws", "ingest", name, "--dataset", "x"])
    assert rc == 2, text
    assert "Traceback" not in text and "internal error" not in text, text
    assert re.search(CASES[name][1], " ".join(text.split())), text


def test_too_deep_element_is_one_quarantined_row(env, capfd):
    rows = [json.dumps(ROW), '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}", json.dumps(ROW)]
    (env / "deep.json").write_text("[" + ",".join(rows) + "]")
    rc, text = _run(capfd, ["-w", "ws", "ingest", "deep.json", "--dataset", "x"])
    # input 3 = kept 2 + rejected 0 + quarantined 1
    assert rc == 0 and re.search(r"x@1\W+3\W+2\W+0\W+1\W", text), text
