"""`dpo export`: never destroys what it did not write, and writes what TRL trains on as our trainer does."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from pipelines.cli import main


def _tree(root: Path) -> dict[str, str]:
    """Every file under `root` with its content hash: equal before and after means untouched."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path, small_pairs, monkeypatch):
    """A user's project folder (cwd) with files of its own and a workspace inside it."""
    from storage.workspace import Workspace

    proj = tmp_path / "project"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "train.py").write_text("print('mine')\n")
    (proj / "notes.jsonl").write_text('{"prompt": "my own notes", "chosen": "x", "rejected": "y"}\n')
    (tmp_path / "sibling.txt").write_text("the parent's file\n")
    Workspace(proj / "ws").publish("d", small_pairs)
    monkeypatch.chdir(proj)
    return proj


def _export(capsys, *args: str) -> tuple[int, str]:
    rc = main(["-w", "ws", "export", "d@1", *args])
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


@pytest.mark.parametrize("to", [".", "..", "src", "ws", "ws/snapshots/d/v1", "ws/snapshots/d", "notes.jsonl"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_export_never_touches_what_it_did_not_write(project, capsys, to, overwrite):
    fmt = "trl-standard" if to.endswith(".jsonl") else "hf-dataset"
    before = _tree(project.parent)
    rc, text = _export(capsys, "--to", to, "--format", fmt, *(["--overwrite"] if overwrite else []))
    assert rc == 2, text
    assert "Traceback" not in text and "export target" in text
    assert _tree(project.parent) == before
    assert main(["-w", "ws", "sql", "SELECT count(*) AS n FROM d"]) == 0  # the workspace still works


def test_export_onto_an_existing_file_of_another_kind_is_refused(project, capsys):
    before = _tree(project.parent)
    rc, text = _export(capsys, "--to", "notes.jsonl", "--format", "hf-dataset", "--overwrite")
    assert rc == 2 and "Traceback" not in text and "is a file" in text
    rc, text = _export(capsys, "--to", "src/train.py")
    assert rc == 2 and ".jsonl or .parquet" in text
    assert _tree(project.parent) == before


@pytest.mark.parametrize("fmt,name", [("hf-dataset", "out_hf"), ("trl-standard", "out.jsonl"),
                                      ("trl-conversational", "out.parquet")])
def test_a_previous_export_is_replaced_only_with_overwrite(project, capsys, fmt, name):
    rc, _ = _export(capsys, "--to", f"exports/{name}", "--format", fmt)
    assert rc == 0
    first = _tree(project / "exports")
    rc, text = _export(capsys, "--to", f"exports/{name}", "--format", fmt)
    assert rc == 2 and "--overwrite" in text
    assert _tree(project / "exports") == first
    rc, text = _export(capsys, "--to", f"exports/{name}", "--format", fmt, "--overwrite")
    assert rc == 0, text
    left = sorted(p.name for p in (project / "exports").iterdir())
    assert left == ([name] if fmt == "hf-dataset" else [f".{name}.dpo-export.json", name])  # no temp, no old
    if fmt == "hf-dataset":
        import datasets

        assert datasets.load_from_disk(str(project / "exports" / name)).num_rows == 10


def test_a_folder_that_is_not_our_export_is_never_replaced(project, capsys):
    other = project / "exports" / "hf"
    other.mkdir(parents=True)
    (other / "precious.bin").write_bytes(b"\x00" * 10)
    before = _tree(project.parent)
    rc, text = _export(capsys, "--to", "exports/hf", "--format", "hf-dataset", "--overwrite")
    assert rc == 2 and "no export marker" in text
    assert _tree(project.parent) == before


# -- what TRL trains on ----------------------------------------------------------------------------------------
@pytest.fixture
def hh_ws(tmp_path, shared_data):
    src = shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    lines = gzip.open(src, "rt", encoding="utf-8").readlines()[:200]
    small = tmp_path / "hh_small.jsonl"
    small.write_text("".join(lines), encoding="utf-8")
    ws = tmp_path / "ws"
    assert main(["-w", str(ws), "ingest", str(small), "--dataset", "hh"]) == 0
    return ws, [json.loads(x) for x in lines]


def test_trl_standard_keeps_the_turns_the_source_wrote_and_ends_with_the_assistant_cue(hh_ws, tmp_path, capsys):
    ws, src = hh_ws
    out = tmp_path / "hh.jsonl"
    assert main(["-w", str(ws), "export", "hh", "--to", str(out)]) == 0
    from storage.workspace import Workspace

    rows_of = Workspace(ws).read("hh").column("source_row").to_pylist()
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    exact = multi = 0
    for row, i in zip(rows, rows_of, strict=True):
        dialogue = src[i]["chosen"]
        prompt = dialogue[:dialogue.rfind("\n\nAssistant:") + len("\n\nAssistant:")].removeprefix("\n\n")
        assert row["prompt"].startswith("Human: ") and row["prompt"].endswith("\n\nAssistant:")
        exact += row["prompt"] == prompt  # the text the source wrote, turn markers included
        multi += row["prompt"].count("\n\nHuman: ") > 0
    assert multi > 50 and exact >= len(rows) - 2
    # The real multi-turn row of the issue: the answer follows the cue, never the user's last words.
    pens = next(r for r in rows if r["prompt"].endswith("anything to do with pens\n\nAssistant:"))
    assert pens["chosen"].startswith("No, sorry!")


def test_trl_standard_prompt_is_the_trainers_prompt(tmp_path, capsys):
    """For a source without its own markers, the export's prompt is exactly what the trainer renders."""
    from dpo_train.batching import render_prompts
    from storage.schema import build_pair_table
    from storage.workspace import Workspace

    msgs = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and now?"}],
            [{"role": "user", "content": "single"}]]
    Workspace(tmp_path / "ws").publish("c", build_pair_table({
        "prompt": msgs, "chosen": ["a", "b"], "rejected": ["c", "d"], "source": ["x"] * 2, "source_row": [0, 1],
        "weight": [1.0, 2.0]}))
    out = tmp_path / "c.jsonl"
    assert main(["-w", str(tmp_path / "ws"), "export", "c", "--to", str(out)]) == 0
    err = capsys.readouterr().err
    assert "TRL's DPOTrainer ignores the `weight` column" in err  # a consumer that ignores weights: said so

    class NoTemplate:
        chat_template = None

    want, _ = render_prompts(NoTemplate(), msgs)
    got = [json.loads(x)["prompt"] for x in out.read_text().splitlines()]
    assert got == want == ["System: Be brief.\n\nUser: hi\n\nAssistant: hello\n\nUser: and now?\n\nAssistant:",
                           "User: single\n\nAssistant:"]
    conv = tmp_path / "c_conv.jsonl"
    assert main(["-w", str(tmp_path / "ws"), "export", "c", "--to", str(conv), "--format",
                 "trl-conversational"]) == 0
    first = json.loads(conv.read_text().splitlines()[0])
    assert first["prompt"] == msgs[0] and first["chosen"] == [{"role": "assistant", "content": "a"}]
    assert "ref_chosen_logps" not in first  # only with --with-reference-logps


def test_a_trl_standard_export_reingests_to_the_same_pairs(hh_ws, tmp_path, capsys):
    """`dpo export` then `dpo ingest` of the file: same pair ids, same messages (the prompt_messages column)."""
    from storage.workspace import Workspace

    ws, _ = hh_ws
    out = tmp_path / "hh.jsonl"
    assert main(["-w", str(ws), "export", "hh", "--to", str(out)]) == 0
    assert main(["-w", str(ws), "ingest", str(out), "--dataset", "again"]) == 0
    assert "trl_standard" in capsys.readouterr().out
    w = Workspace(ws)
    cols = ("pair_id", "prompt", "chosen", "rejected")
    before, after = (sorted(zip(*(w.read(d).column(c).to_pylist() for c in cols), strict=True), key=lambda r: r[0])
                     for d in ("hh", "again"))
    assert after == before and len(after) > 150
