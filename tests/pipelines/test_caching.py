"""Idempotence: same inputs + config + code -> the existing snapshot; any change -> a new version."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import steps
from storage.workspace import Workspace


def test_file_hash_streams_and_depends_on_bytes(tmp_path: Path) -> None:
    p = tmp_path / "big.bin"
    p.write_bytes(b"x" * (3 * (1 << 20) + 17))  # several chunks plus a tail
    h = steps.file_hash(p)
    assert h == steps.file_hash(p)
    p.write_bytes(b"x" * (3 * (1 << 20) + 16) + b"y")
    assert steps.file_hash(p) != h


def test_ingest_reuses_snapshot_until_input_options_or_code_change(
        workspace: Workspace, hh_small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = steps.ingest(workspace, [str(hh_small)], "hh_raw")
    assert a.cache_key and a.cache_key.startswith("ingest:")
    # a new Workspace object stands for a restarted process: the catalog is the cache
    again = steps.ingest(Workspace(workspace.root), [str(hh_small)], "hh_raw")
    assert again.snapshot_id == a.snapshot_id
    assert [s.snapshot_id for s in workspace.list_snapshots("hh_raw")] == ["hh_raw@1"]

    opts = steps.ingest(workspace, [str(hh_small)], "hh_raw", options={"max_raw_chars": 1000})
    assert opts.snapshot_id == "hh_raw@2"

    with hh_small.open("a", encoding="utf-8") as f:
        f.write('{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello", '
                '"rejected": "\\n\\nHuman: hi\\n\\nAssistant: go away"}\n')
    changed = steps.ingest(workspace, [str(hh_small)], "hh_raw")
    assert changed.snapshot_id == "hh_raw@3" and changed.input_rows == a.input_rows + 1

    monkeypatch.setattr(steps, "code_version", lambda: "other-code")
    assert steps.ingest(workspace, [str(hh_small)], "hh_raw").snapshot_id == "hh_raw@4"


def test_clean_reuses_snapshot_until_gate_or_parent_change(workspace: Workspace, hh_small: Path) -> None:
    raw = steps.ingest(workspace, [str(hh_small)], "hh_raw")
    c1 = steps.clean(workspace, "hh_raw")
    assert c1.dataset == "hh" and c1.kind == "clean" and c1.parents == [raw.snapshot_id]
    assert c1.params["dedup"]["enabled"] is True  # thresholds recorded, defaults filled in
    # the spelled-out default and the empty config are the same configuration
    assert steps.clean(workspace, "hh_raw", {"dedup": {"enabled": True}}).snapshot_id == c1.snapshot_id
    assert steps.clean(workspace, "hh_raw@1", shards=3).snapshot_id == c1.snapshot_id
    c2 = steps.clean(workspace, "hh_raw", {"near_identical": {"max_similarity": 0.5}})
    assert c2.snapshot_id == "hh@2" and c2.rejected >= c1.rejected
    assert [s.version for s in workspace.list_snapshots("hh")] == [1, 2]
    assert steps.recorded_gate_stats(c1) is not None and (c1.path / "report.html").exists()


def test_ingest_publishes_the_spill_file_without_reading_the_pairs_into_memory(
        workspace: Workspace, hh_small: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from data_quality.ingest.api import IngestResult

    def never(self: IngestResult) -> None:
        raise AssertionError("the kept pairs were read back whole before publishing")

    expected = steps.ingest(workspace, [str(hh_small)], "hh_table")  # the same rows, for comparison
    monkeypatch.setattr(IngestResult, "pairs", property(never))
    info = steps.ingest(workspace, [str(hh_small)], "hh_spilled")
    assert info.kept == expected.kept > 0 and info.content_hash == expected.content_hash
