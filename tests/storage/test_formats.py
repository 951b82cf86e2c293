"""storage.formats: export markers, source turn labels, refusing what is not ours."""

from __future__ import annotations

import json

import pytest

from storage.formats import EXPORT_MARKER, ExportRefused, export, marker_path


@pytest.mark.parametrize("fmt,name", [("trl-standard", "o.jsonl"), ("trl-conversational", "o.parquet"),
                                      ("hf-dataset", "o_hf")])
def test_every_export_carries_its_marker(small_pairs, tmp_path, fmt, name):
    """The format round-trips are tests/storage/test_workspace.py::test_export_formats; here, the marker."""
    out = export(small_pairs, tmp_path / name, fmt)
    marker = marker_path(out)
    assert json.loads(marker.read_text())["rows"] == 10
    assert marker == (out / EXPORT_MARKER if fmt == "hf-dataset" else tmp_path / f".{name}{EXPORT_MARKER}")


def test_source_turn_labels_are_kept(small_pairs, tmp_path):
    out = export(small_pairs, tmp_path / "o.jsonl", labels_by_source={"unit": {"user": "Human"}})
    assert json.loads(out.read_text().splitlines()[0])["prompt"] == "Human: question 0\n\nAssistant:"


def test_existing_target_without_marker_is_refused_even_with_overwrite(small_pairs, tmp_path):
    mine = tmp_path / "mine.jsonl"
    mine.write_text("keep me\n")
    for overwrite in (False, True):
        with pytest.raises(ExportRefused):
            export(small_pairs, mine, overwrite=overwrite)
    assert mine.read_text() == "keep me\n"
