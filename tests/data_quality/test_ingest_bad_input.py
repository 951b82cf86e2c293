"""Hand-made bad corpora: each bad row lands in quarantine naming file, row and field; the rest ingests."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_quality.ingest import IngestError, IngestOptions, ingest_files
from storage.schema import validate_pair_table

GOOD = {"prompt": "p", "chosen": "good", "rejected": "bad"}


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def accounted(res, n: int) -> None:
    assert res.input_rows == n == res.pairs.num_rows + res.rejects.num_rows + res.quarantine.num_rows
    validate_pair_table(res.pairs)


def quarantined(res) -> dict[int, dict]:
    return {r["source_row"]: r for r in res.quarantine.to_pylist()}


def test_jsonl_bad_rows(tmp_path):
    big = "x" * (10 * 1024 * 1024)
    lines = [
        line(GOOD),                                              # 0 ok
        b'{"prompt": "p", "chosen": "good", "rejected": \n',     # 1 broken JSON
        line({**GOOD, "chosen": 42}),                            # 2 wrong type
        line({"prompt": "p", "chosen": "good"}),                 # 3 missing field
        line({**GOOD, "rejected": ""}),                          # 4 empty string
        b'{"prompt": "p", "chosen": "caf\xe9", "rejected": "b"}\n',  # 5 latin-1 byte, not UTF-8
        line({**GOOD, "chosen": "a\x00b"}),                      # 6 NUL via \u0000 escape
        b'{"prompt": "p", "chosen": "a\x00b", "rejected": "b"}\n',  # 7 raw NUL byte
        line({**GOOD, "rejected": big}),                         # 8 10 MB field
        line([1, 2]),                                            # 9 not an object
        b"\n",                                                   # blank line: not a row
        line({**GOOD, "prompt": "   "}),                         # 11 whitespace only
        line(GOOD),                                              # 12 ok
    ]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(lines))
    res = ingest_files([path])
    accounted(res, 12)
    assert res.pairs.column("source_row").to_pylist() == [0, 12]
    q = quarantined(res)
    assert set(q) == {1, 2, 3, 4, 5, 6, 7, 8, 9, 11}
    assert all(r["source"] == str(path.absolute()) and r["raw"] for r in q.values())
    assert "invalid JSON" in q[1]["error"] and q[1]["stage"] == "parse"
    assert q[2]["field"] == "chosen" and "got int" in q[2]["error"]
    assert q[3]["field"] == "rejected" and "missing" in q[3]["error"]
    assert q[4]["field"] == "rejected" and "empty" in q[4]["error"]
    assert "UTF-8" in q[5]["error"] and "\\xe9" in q[5]["raw"]
    assert q[6]["field"] == "chosen" and "NUL" in q[6]["error"]
    assert "invalid JSON" in q[7]["error"]
    assert q[8]["field"] == "rejected" and "max_field_bytes" in q[8]["error"]
    assert len(q[8]["raw"]) < 70_000 and "truncated" in q[8]["raw"]  # raw is clipped to 64 Ki characters
    assert "list" in q[9]["error"]
    assert q[11]["field"] == "prompt" and "whitespace" in q[11]["error"]

    roomy = ingest_files([path], options=IngestOptions(max_field_bytes=20 * 1024 * 1024))
    assert 8 in roomy.pairs.column("source_row").to_pylist()


def test_truncated_gzip_jsonl(tmp_path):
    data = b"".join(line({**GOOD, "chosen": f"good {i}"}) for i in range(2000))
    blob = gzip.compress(data)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(blob[: len(blob) * 2 // 3])
    res = ingest_files([path])
    accounted(res, res.input_rows)
    assert 100 < res.pairs.num_rows < 2000
    [q] = res.quarantine.to_pylist()
    assert "truncated" in q["error"] and q["source_row"] == res.pairs.num_rows
    assert res.pairs.column("source_row").to_pylist() == list(range(res.pairs.num_rows))


def test_truncated_gzip_at_line_boundary_is_still_reported(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    whole = gzip.compress(line(GOOD) * 3)
    # A complete stream without its 8-byte trailer: all three rows decode but the end marker is missing.
    path.write_bytes(whole[:-8])
    res = ingest_files([path])
    assert res.pairs.num_rows == 3 and res.quarantine.num_rows == 1
    assert "truncated" in res.quarantine.column("error")[0].as_py()


def test_json_array_broken_element_and_truncation(tmp_path):
    rows = [json.dumps({**GOOD, "chosen": f"c{i}"}) for i in range(5)]
    rows[2] = '{"prompt": "p", "chosen": oops, "rejected": "b"}'
    path = tmp_path / "arr.json"
    path.write_text("[\n" + ",\n".join(rows) + "\n]")
    res = ingest_files([path], format="trl_standard")
    accounted(res, 5)
    assert res.pairs.column("source_row").to_pylist() == [0, 1, 3, 4]
    assert quarantined(res)[2]["raw"].startswith('{"prompt": "p", "chosen": oops')

    blob = gzip.compress(json.dumps([{**GOOD, "chosen": f"c{i}" * 50} for i in range(300)]).encode())
    cut = tmp_path / "arr.json.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    # A cut array is a broken download: refused whole, naming the file and where its text ends.
    with pytest.raises(ValueError, match=r"arr\.json\.gz: truncated file.*gzip stream is truncated.*at byte \d+"):
        ingest_files([cut], format="trl_standard")


@pytest.mark.parametrize(("text", "where"), [
    ("[", "at byte 1 inside element 0"),
    ('[{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "cho', "at byte 70 inside element 1"),
    ('  [{"prompt": "a", "chosen": "b", "rejected": "c"},', "at byte 51 inside element 1"),
])
def test_truncated_json_array_is_refused(tmp_path, text, where):
    path = tmp_path / "cut.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"cut\.json: truncated file.*never closed.*{where}"):
        ingest_files([path], format="trl_standard")
    # Told to keep what it can, the rows before the cut are kept and the cut is quarantined (nothing lost).
    res = ingest_files([path], format="trl_standard", require_pairs=False)
    accounted(res, res.input_rows)
    assert "truncated file" in res.quarantine.column("error")[-1].as_py()


@pytest.mark.parametrize(("name", "data"), [("e.jsonl", b""), ("e.json", b""), ("blank.jsonl", b"\n \n"),
                                            ("e.json.gz", gzip.compress(b"", mtime=0)), ("arr.json", b" [ ] ")])
def test_empty_file_is_refused(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"{name.replace('.', '[.]')}: no rows"):
        ingest_files([path])
    assert ingest_files([path], require_pairs=False).input_rows == 0


def test_too_deep_element_is_quarantined_as_that_row(tmp_path):
    path = tmp_path / "deep.json"
    rows = [line(GOOD).strip(), b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", line(GOOD).strip()]
    path.write_bytes(b"[" + b",".join(rows) + b"]")
    res = ingest_files([path], format="trl_standard")
    accounted(res, 3)
    q = quarantined(res)
    assert list(q) == [1] and "nested deeper than" in q[1]["error"] and q[1]["raw"].startswith('{"prompt": [[[')


def test_oversized_and_empty_elements(tmp_path):
    big = json.dumps({**GOOD, "chosen": "x" * 5000})
    path = tmp_path / "arr.json"
    path.write_text(f'[{json.dumps(GOOD)}, {big},, {json.dumps(GOOD)}] ["after"]')
    res = ingest_files([path], format="trl_standard", options=IngestOptions(max_line_bytes=1000))
    accounted(res, 5)
    q = quarantined(res)
    assert res.pairs.column("source_row").to_pylist() == [0, 3]
    assert "max_line_bytes limit of 1000 bytes" in q[1]["error"] and q[1]["raw"] is None
    assert "empty array element" in q[2]["error"]
    assert "after the array" in q[4]["error"] and q[4]["raw"] == '["after"]'


def test_json_array_split_matches_whole_parse_at_every_piece_size(tmp_path, monkeypatch):
    """Quotes, backslash runs, brackets and commas inside strings, cut at every piece boundary."""
    import orjson

    from data_quality.ingest import containers, json_array

    tricky = ['a "quoted" [x], {y}', "ends in \\", "\\\\\"]", "tab\there", "caf\u00e9 \\\"", ",]}", ""]
    value = [{"prompt": t, "chosen": [t, {"k": [1, 2.5, None, True]}], "n": i} for i, t in enumerate(tricky)]
    value += [[1, [2, [3]]], "str,]", 12345678901234567890123, -0.0]
    data = json.dumps(value, indent=1).encode()
    path = tmp_path / "tricky.json"
    path.write_bytes(data)
    want = list(enumerate(orjson.loads(data)))  # today's whole-file parse
    for chunk in (1, 2, 3, 5, 8, 13, 64, 1 << 20):
        monkeypatch.setattr(containers, "_CHUNK", chunk)
        rows = json_array.read_json(path, "s", IngestOptions())
        assert rows.quarantine == [] and rows.records == want, chunk


def test_csv_bad_rows(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"prompt,chosen,rejected\n"
                     b"p,good,bad\n"
                     b"p,caf\xe9,bad\n"         # not UTF-8
                     b"p,only-two\n"           # ragged
                     b"p,,bad\n"               # empty cell
                     b"p,good,bad\n")
    res = ingest_files([path])
    accounted(res, 5)
    assert res.pairs.column("source_row").to_pylist() == [0, 4]
    q = quarantined(res)
    assert q[1]["field"] == "chosen" and "UTF-8" in q[1]["error"]
    assert "cells" in q[2]["error"]
    assert q[3]["field"] == "chosen"


def test_parquet_nulls_and_types(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"prompt": ["p", "p", None], "chosen": ["a", None, "c"],
                             "rejected": ["b", "b", "d"]}), path)
    res = ingest_files([path])
    accounted(res, 3)
    # A null prompt means an implicit one; "c" and "d" share no prefix, so there is none to take.
    assert [(r["source_row"], r["field"]) for r in res.quarantine.to_pylist()] == [(1, "chosen"), (2, "prompt")]
    assert res.pairs.column("source_row").to_pylist() == [0]


def test_empty_and_all_broken_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"{nope\n{also nope\n")
    res = ingest_files([broken], require_pairs=False)
    accounted(res, 2)
    assert res.formats[str(broken.absolute())] == "unknown"
    # By default a source of which nothing could be read fails, naming it; an empty file always does.
    with pytest.raises(IngestError, match=r"broken\.jsonl: format 'unknown' \(detected\) kept none of 2 rows"):
        ingest_files([broken])
    with pytest.raises(ValueError, match=r"empty\.jsonl: no rows \(the jsonl file is empty\)"):
        ingest_files([empty, broken])
