"""Issue 11: ingest memory is bounded by batches, not by the row count. Parquet is streamed in small batches
(never `read_table`), every container is a stream read once, and kept pairs go to a spill file that the
publish places as pairs.parquet, so 4x the rows costs (almost) no more peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_quality.ingest import ingest_files
from data_quality.ingest.options import IngestOptions

REPO = Path(__file__).resolve().parents[2]
WORDS = "the model answer prompt data quality pair chosen rejected token policy margin judge score".split()


def _write_pairs(path: Path, rows: int, text_chars: int = 1000) -> None:
    """`rows` TRL-standard rows, ~3 x `text_chars` of text each, written in row groups of 5,000."""
    base = [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(text_chars // 6)) for i in range(97)]
    with pq.ParquetWriter(path, pa.schema([(c, pa.string()) for c in ("prompt", "chosen", "rejected")])) as w:
        for start in range(0, rows, 5000):
            idx = range(start, min(rows, start + 5000))
            w.write_table(pa.table({"prompt": [f"{i} {base[i % 97]}" for i in idx],
                                    "chosen": [f"{base[(i + 1) % 97]} {i}" for i in idx],
                                    "rejected": [f"{base[(i + 2) % 97]} r{i}" for i in idx]}),
                          row_group_size=5000)


_CHILD = """
import json, resource, sys, tracemalloc
from pathlib import Path
import pyarrow as pa
from data_quality.ingest import ingest_files
from storage.workspace import Workspace
ws = Workspace(Path(sys.argv[2]))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[4] == "1":  # what the ingest itself allocates (Python heap + Arrow pool), free of allocator noise
    tracemalloc.start()
res = ingest_files([sys.argv[1]], require_pairs=sys.argv[3] == "1")
# (old code, with no spill, publishes the tables: the test then measures that)
info = ws.publish("mem", getattr(res, "pairs_file", None) or res.pairs,
                  rejects=getattr(res, "rejects_file", None) or res.rejects,
                  quarantine=getattr(res, "quarantine_file", None) or res.quarantine, input_rows=res.input_rows)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "base_mb": base / 1024, "kept": res.counts["kept"], "published": info.kept,
                  "rejected": info.rejected, "quarantined": info.quarantined,
                  "alloc_mb": (tracemalloc.get_traced_memory()[1] + pa.default_memory_pool().max_memory()) / 2**20}))
"""


def _peak(data: Path, ws: Path, require_pairs: bool = True, trace: bool = False) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(data), str(ws), "1" if require_pairs else "0",
                          "1" if trace else "0"], cwd=REPO, capture_output=True,
                         text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_rows(tmp_path: Path) -> None:
    """15k vs 60k rows of ~3 KB (45 vs 180 MB of text): the old reader held every parsed row as Python objects
    plus the whole Arrow table (peak grew by several times the extra data); now the peak stays within 1.3x."""
    small, big = tmp_path / "small.parquet", tmp_path / "big.parquet"
    _write_pairs(small, 15_000)
    _write_pairs(big, 60_000)
    a = _peak(small, tmp_path / "ws_small")
    b = _peak(big, tmp_path / "ws_big")
    print("peak MB", a, b)
    assert (a["kept"], b["kept"]) == (15_000, 60_000) and b["published"] == 60_000
    extra_text_mb = 45_000 * 3 * 1000 / 1e6
    assert b["peak_mb"] < 1.3 * a["peak_mb"], (a, b)
    assert b["peak_mb"] - a["peak_mb"] < 0.25 * extra_text_mb, (a, b)


def test_parquet_is_read_in_batches_never_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`read_table` (the whole file in memory) is never called; rows arrive as a stream read once."""
    path = tmp_path / "p.parquet"
    _write_pairs(path, 12_000, text_chars=60)

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("ingest read a whole Parquet file with read_table")

    monkeypatch.setattr(pq, "read_table", refuse)
    from data_quality.ingest.sources import read_path

    [rows] = read_path(path, IngestOptions())
    assert rows.n_rows == 0  # nothing parsed until the stream is read
    res = ingest_files([path])
    assert res.counts == {"input_rows": 12_000, "kept": 12_000, "rejected": 0, "quarantined": 0}
    # The spill holds the kept pairs in small row groups, so a later reader can stream them too.
    monkeypatch.undo()
    meta = pq.ParquetFile(res.pairs_file).metadata
    assert meta.num_rows == 12_000 and meta.num_row_groups >= 1
    assert max(meta.row_group(i).num_rows for i in range(meta.num_row_groups)) <= 25_000


def test_spill_publish_equals_table_publish(tmp_path: Path) -> None:
    """Publishing the spill file gives the snapshot a table publish gives: same rows, pair ids, content hash
    and counts, with parse and validate quarantine in the old order."""
    from storage.workspace import Workspace

    path = tmp_path / "mixed.jsonl"
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    lines = [json.dumps({**good, "prompt": f"p{i}"}) for i in range(30_000)]
    lines[5] = "{not json"
    lines[7] = json.dumps({"prompt": "p", "chosen": "", "rejected": "b"})
    path.write_text("\n".join(lines) + "\n")
    res = ingest_files([path])
    assert [r["stage"] for r in res.quarantine.to_pylist()] == ["parse", "validate"]
    ws = Workspace(tmp_path / "ws")
    by_file = ws.publish("f", res.pairs_file, rejects=res.rejects, quarantine=res.quarantine,
                         input_rows=res.input_rows)
    by_table = ws.publish("t", res.pairs, rejects=res.rejects, quarantine=res.quarantine,
                          input_rows=res.input_rows)
    assert by_file.content_hash == by_table.content_hash
    counts = ("input_rows", "kept", "rejected", "quarantined")
    assert [getattr(by_file, c) for c in counts] == [getattr(by_table, c) for c in counts]
    a = pq.read_table(by_file.path / "pairs.parquet")
    b = pq.read_table(by_table.path / "pairs.parquet")
    assert a.equals(b) and a.num_rows == 29_998


def test_empty_and_cut_files_are_still_refused(tmp_path: Path) -> None:
    """`broken` is only known once a stream is read: ingest still refuses the file, and publishes nothing."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no rows"):
        ingest_files([empty])
    cut = tmp_path / "cut.json"
    cut.write_text('[{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "cho')
    with pytest.raises(ValueError, match="truncated file"):
        ingest_files([cut])
    res = ingest_files([cut], require_pairs=False)
    assert res.counts == {"input_rows": 2, "kept": 1, "rejected": 0, "quarantined": 1}


def _write_unkept(path: Path, rows: int, text_chars: int = 1000) -> None:
    """`rows` AlpacaEval JSON lines of ~3 x `text_chars` of text that all end outside the snapshot: even rows
    are label ties (rejects), odd rows have an empty output_1 (quarantine), every 50th line is broken JSON."""
    base = [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(text_chars // 6)) for i in range(97)]
    with path.open("w") as f:
        for i in range(rows):
            if i % 50 == 49:
                f.write('{"instruction": "' + base[i % 97] * 3 + '", "output_1": \n')
                continue
            rec = {"instruction": f"{i} {base[i % 97]}", "output_1": "" if i % 2 else f"{base[(i + 1) % 97]} {i}",
                   "output_2": f"{base[(i + 2) % 97]} r{i}", "preference": 1.5, "generator_1": "m1",
                   "generator_2": "m2"}
            f.write(json.dumps(rec) + "\n")


@pytest.mark.slow
def test_rejects_and_quarantine_do_not_grow_memory(tmp_path: Path) -> None:
    """A source whose rows are all rejected or quarantined (30k vs 120k rows of ~1.5 KB): rejects and quarantine
    are written out as they are made, like the kept pairs, so the 4x file does not cost 4x the memory (they
    were held as Python lists, then as whole Arrow tables, until publish). The bound is on what the ingest and
    publish allocate (Python heap + Arrow pool peaks: flat, ~170 MB at both sizes; the old code: +4x the extra
    text); peak RSS, which the allocator's reuse makes noisy by tens of MB, gets a looser bound."""
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    _write_unkept(small, 30_000, text_chars=500)
    _write_unkept(big, 120_000, text_chars=500)
    a = _peak(small, tmp_path / "ws_small", require_pairs=False, trace=True)
    b = _peak(big, tmp_path / "ws_big", require_pairs=False, trace=True)
    print("peak MB", a, b)
    assert (a["kept"], b["rejected"], b["quarantined"]) == (0, 60_000, 60_000), b
    extra_text_mb = 90_000 * 3 * 500 / 1e6
    assert b["alloc_mb"] - a["alloc_mb"] < 0.1 * extra_text_mb, (a, b)
    assert b["peak_mb"] - a["peak_mb"] < extra_text_mb, (a, b)
