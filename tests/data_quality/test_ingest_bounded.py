"""Ingest holds bounded memory whatever the input's shape: streamed gzip, blank lines, one huge line.

Each case runs in a fresh process that reports its own peak RSS growth (VmHWM minus the RSS before reading),
so the assertion is about the reader, not about what the test process held before.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_CHILD = """
import json, sys
from pathlib import Path
from data_quality.ingest import ingest_files
from data_quality.ingest.options import IngestOptions

def rss(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
before = rss("VmRSS:")
res = ingest_files([sys.argv[1]], format="trl_standard", options=IngestOptions(max_line_bytes=int(sys.argv[2])))
q = res.quarantine
print(json.dumps({"growth_mb": rss("VmHWM:") - before, "pairs": res.pairs.num_rows, "input_rows": res.input_rows,
                  "errors": q.column("error").to_pylist(), "rows": q.column("source_row").to_pylist()}))
"""


def _ingest(path: Path, max_line_bytes: int = 1 << 20) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(max_line_bytes)], capture_output=True,
                         text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _gzip_stream(path: Path, pieces) -> None:
    """Write a gzip file from pieces without ever holding the whole decompressed text."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    with path.open("wb") as f:
        for p in pieces:
            f.write(comp.compress(p))
        f.write(comp.flush())


ROW = json.dumps({"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}).encode()


@pytest.mark.slow
def test_gzip_of_newlines_stays_bounded(tmp_path: Path) -> None:
    # ~60 MB of blank lines (a ~60 KB gzip) around two real rows: the old reader split it into a list of
    # 60M line objects (the 1 MB gzip of newlines that passed 9 GB).
    path = tmp_path / "blank.jsonl.gz"
    _gzip_stream(path, [ROW + b"\n"] + [b"\n" * (1 << 20)] * 60 + [ROW + b"\n"])
    assert path.stat().st_size < 2 << 20
    got = _ingest(path)
    assert got["pairs"] == 2 and got["input_rows"] == 2 and got["errors"] == []
    assert got["growth_mb"] < 150, got["growth_mb"]


@pytest.mark.slow
def test_huge_line_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    # A 200 MB line (a gzip bomb of one row) between good rows: refused at the line limit, named by line number.
    path = tmp_path / "bomb.jsonl.gz"
    _gzip_stream(path, [ROW + b"\n", b'{"prompt": "' + b"a" * (1 << 20)] + [b"a" * (1 << 20)] * 200
                 + [b'", "chosen": "x", "rejected": "y"}\n', ROW + b"\n"])
    got = _ingest(path, max_line_bytes=4 << 20)
    assert got["pairs"] == 2 and got["input_rows"] == 3
    assert got["rows"] == [1] and "max_line_bytes" in got["errors"][0]
    assert got["growth_mb"] < 150, got["growth_mb"]


def test_multi_member_gzip_and_truncated_tail_still_read(tmp_path: Path) -> None:
    from data_quality.ingest.containers import read_jsonl
    from data_quality.ingest.options import IngestOptions

    path = tmp_path / "two.jsonl.gz"
    path.write_bytes(gzip.compress(ROW + b"\n") + gzip.compress(ROW + b"\n\n" + ROW + b"\n") + b"\x00" * 16)
    rows = read_jsonl(path, "s", IngestOptions())
    assert [i for i, _ in rows.records] == [0, 1, 3] and rows.quarantine == []
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(ROW + b"\n" + ROW + b"\n")[:-12])
    rows = read_jsonl(cut, "s", IngestOptions())
    assert len(rows.records) >= 1 and "truncated" in rows.quarantine[-1]["error"]


@pytest.mark.slow
def test_gzip_json_array_is_streamed_and_a_huge_element_refused(tmp_path: Path) -> None:
    # 20k rows, 60 MB of whitespace between elements and a 200 MB element (a gzip bomb of one row): the old
    # reader held the whole decompressed text and parsed it whole (over 500 MB); now one piece and one element.
    path = tmp_path / "bomb.json.gz"
    body = [b"[", ROW] + [b"," + ROW] * 10_000 + [b" " * (1 << 20)] * 60
    bomb = [b',{"prompt": "' + b"a" * (1 << 20)] + [b"a" * (1 << 20)] * 200 + [b'", "chosen": "x", "rejected": "y"}']
    _gzip_stream(path, body + bomb + [b"," + ROW] * 10_000 + [b"]"])
    assert path.stat().st_size < 2 << 20
    got = _ingest(path, max_line_bytes=4 << 20)
    assert got["pairs"] == 20_001 and got["input_rows"] == 20_002
    assert got["rows"] == [10_001] and "max_line_bytes" in got["errors"][0]
    assert got["growth_mb"] < 150, got["growth_mb"]


@pytest.mark.slow
def test_json_array_rows_equal_the_whole_file_parse_on_alpaca_eval() -> None:
    """Every AlpacaEval annotation file (JSON arrays): the streamed reader gives exactly the rows the whole-file
    parse gave, so the same pairs and pair ids."""
    import orjson

    from data_quality.ingest.json_array import read_json
    from data_quality.ingest.options import IngestOptions

    files = sorted(Path("/work/shared/data/alpaca_eval/annotations").glob("*.json.gz"))
    if not files:
        pytest.skip("AlpacaEval annotations not present")
    for f in files:
        rows = read_json(f, str(f), IngestOptions())
        assert rows.quarantine == [] and rows.broken is None, f
        assert rows.records == list(enumerate(orjson.loads(gzip.decompress(f.read_bytes())))), f


def test_normalise_keys_use_64_bit_offsets() -> None:
    """Issue 11: key_text cast its keys to 32-bit `string`, which fails once a column holds over 2 GiB of text
    ("input array too large" at 1.6M rows). Keys are large_string, from chunked string or large_string input, and
    the prompt keys are built chunk by chunk (never one combined 32-bit array)."""
    import pyarrow as pa

    from data_quality.checks.normalise import NormaliseConfig, key_table, key_text
    from storage.schema import build_pair_table

    texts = ["a  b ", "caf\u0065\u0301\r\n", "x\n\n\n\ny", "plain"]
    for typ in (pa.string(), pa.large_string()):
        arr = pa.chunked_array([pa.array(texts[:2], typ), pa.array(texts[2:], typ)])
        for cfg in (NormaliseConfig(), NormaliseConfig(collapse_whitespace=False, unicode_form=None)):
            key = key_text(arr, cfg)
            assert key.type == pa.large_string()
        assert key_text(arr).to_pylist() == ["a b", "caf\u00e9", "x\n\ny", "plain"]
    table = pa.concat_tables([build_pair_table({
        "prompt": [[{"role": "user", "content": f" q{i}  x "}]], "chosen": ["c"], "rejected": ["r"],
        "source": ["s"], "source_row": [i]}) for i in range(3)])
    keys = key_table(table)
    assert keys.column("prompt").num_chunks == 3
    assert keys.column("prompt").type.value_type.field("content").type == pa.large_string()
    assert [m[0]["content"] for m in keys.column("prompt").to_pylist()] == ["q0 x", "q1 x", "q2 x"]
