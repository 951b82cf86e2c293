"""storage.formats: every export format round-trips; the standard format renders the trainer's plain template."""

from __future__ import annotations

import json

import pytest

from storage.formats import EXPORT_MARKER, ExportRefused, export, marker_path


@pytest.mark.parametrize("fmt,suffix", [("trl-standard", "jsonl"), ("trl-conversational", "parquet"),
                                        ("trl-conversational", "jsonl"), ("hf-dataset", "hf")])
def test_export_formats(small_pairs, tmp_path, fmt, suffix):
    import datasets
    import pyarrow.parquet as pq

    out = export(small_pairs, tmp_path / f"out.{suffix}", fmt)
    if suffix == "jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    elif suffix == "parquet":
        rows = pq.read_table(out).to_pylist()
    else:
        rows = datasets.load_from_disk(str(out)).to_list()
        assert (out / EXPORT_MARKER).is_file()
    assert len(rows) == 10 and marker_path(out).is_file()
    if fmt == "trl-standard":
        assert rows[0]["prompt"] == "User: question 0\n\nAssistant:" and rows[0]["chosen"] == "good answer 0"
    else:
        assert rows[0]["prompt"] == [{"role": "user", "content": "question 0"}]
        assert rows[0]["chosen"] == [{"role": "assistant", "content": "good answer 0"}]


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
