"""The TRL standard export: the trainer tokenises the exported prompt text, and the export re-ingests to the same
pairs (real HH-RLHF and AlpacaEval rows through the product's ingest and export)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from storage.formats import PROMPT_MESSAGES


class NoTemplate:
    """A tokenizer without a chat template, as far as rendering is concerned."""

    chat_template = None


def _hh_file(shared_data: Path, tmp_path: Path, n: int = 300) -> Path:
    src = shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    lines = gzip.open(src, "rt", encoding="utf-8").readlines()[:n]
    out = tmp_path / "hh_small.jsonl"
    out.write_text("".join(lines), encoding="utf-8")
    return out


def _alpaca_file(shared_data: Path, tmp_path: Path, n: int = 60) -> Path:
    src = shared_data / "alpaca_eval" / "annotations" / "alpaca-7b_concise__weighted_alpaca_eval_gpt4_turbo.json.gz"
    rows = json.loads(gzip.open(src, "rt", encoding="utf-8").read())[:n]
    out = tmp_path / "alpaca_small.json"
    out.write_text(json.dumps(rows), encoding="utf-8")
    return out


def _ingest(ws, path: Path, dataset: str, fmt: str | None = None):
    from pipelines.steps import ingest

    return ingest(ws, [str(path)], dataset, format=fmt)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _trainer_prompts(ws, ref: str, tokenizer) -> tuple[list[str], list[list[int]]]:
    """What `dpo train` renders and tokenises for the snapshot's rows (labels looked up as the trainer does)."""
    from dpo_train.batching import render_prompts, tokenize_pairs
    from storage.templates import snapshot_turn_labels

    info = ws.resolve(ref)
    table = ws.read(info.snapshot_id)
    labels = snapshot_turn_labels(ws, info)
    texts, _ = render_prompts(tokenizer, table.column("prompt").to_pylist(), table.column("source").to_pylist(),
                              labels)
    ids = tokenize_pairs(table, tokenizer, max_length=1 << 20, max_prompt_length=1 << 19,
                         labels_by_source=labels).prompt if not isinstance(tokenizer, NoTemplate) else []
    return texts, ids


def test_the_hh_format_labels_are_the_hh_readers_markers():
    from data_quality.ingest import hh
    from storage.templates import FORMAT_TURN_LABELS

    for fmt in ("hh", "nectar"):  # nectar prompts are HH dialogues, parsed by hh.parse_prompt
        assert FORMAT_TURN_LABELS[fmt] == {"user": hh.HUMAN.strip().removesuffix(":"),
                                           "assistant": hh.ASSISTANT.strip().removesuffix(":")}


def test_trainer_renders_the_exported_hh_prompt_byte_for_byte(workspace, shared_data, tmp_path):
    from dpo_train.tiny import train_tokenizer
    from pipelines.export import export_snapshot

    _ingest(workspace, _hh_file(shared_data, tmp_path), "hh")
    workspace.publish("hh_clean", workspace.read("hh"), parents=["hh"], kind="clean")  # labels via lineage
    out = export_snapshot(workspace, "hh_clean", tmp_path / "hh.jsonl").path
    exported = [r["prompt"] for r in _jsonl(out)]
    texts, _ = _trainer_prompts(workspace, "hh_clean", NoTemplate())
    assert texts == exported
    assert all(p.startswith("Human: ") and p.endswith("\n\nAssistant:") for p in exported)
    assert sum("\n\nHuman: " in p for p in exported) > 50  # multi-turn rows keep every marker

    # The token ids the trainer reads are the tokenisation of the exported string (a tokenizer without a chat
    # template, as TRL tokenises a standard prompt).
    tok = train_tokenizer([json.dumps(r) for r in _jsonl(out)[:100]], vocab_size=400)
    tok.chat_template = None
    _, ids = _trainer_prompts(workspace, "hh_clean", tok)
    assert ids == [list(x) for x in tok(exported)["input_ids"]]


def test_trainer_renders_the_exported_alpaca_eval_prompt_byte_for_byte(workspace, shared_data, tmp_path):
    from pipelines.export import export_snapshot

    _ingest(workspace, _alpaca_file(shared_data, tmp_path), "alpaca", "alpaca_eval")
    out = export_snapshot(workspace, "alpaca", tmp_path / "alpaca.parquet").path
    exported = pq.read_table(out).column("prompt").to_pylist()
    texts, _ = _trainer_prompts(workspace, "alpaca", NoTemplate())
    assert texts == exported and len(exported) > 40
    assert all(p.startswith("User: ") and p.endswith("\n\nAssistant:") for p in exported)


def test_with_a_chat_template_the_trainer_ignores_source_labels(workspace, shared_data, tmp_path):
    """A chat model renders its own role markers on both sides: the labels only apply to the plain template."""
    from dpo_train.templates import render_prompt
    from dpo_train.tiny import train_tokenizer

    _ingest(workspace, _hh_file(shared_data, tmp_path, 40), "hh")
    tok = train_tokenizer(["Human: hi Assistant: hello"], vocab_size=300)  # has the tiny chat template
    texts, _ = _trainer_prompts(workspace, "hh", tok)
    prompts = workspace.read("hh").column("prompt").to_pylist()
    assert texts == [render_prompt(tok, m) for m in prompts]
    assert not any("Human:" in t.split("\n", 1)[0] for t in texts)


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_standard_export_reingests_to_the_same_pairs(workspace, shared_data, tmp_path, suffix):
    from pipelines.export import export_snapshot

    first = _ingest(workspace, _hh_file(shared_data, tmp_path), "hh")
    out = export_snapshot(workspace, "hh", tmp_path / f"hh{suffix}").path
    again = _ingest(workspace, out, "again")
    assert set(again.meta["formats"].values()) == {"trl_standard"}
    assert again.quarantined == 0 and again.kept == first.kept

    def by_id(ref: str) -> dict[str, tuple]:
        t = workspace.read(ref)
        cols = [t.column(c).to_pylist() for c in ("pair_id", "prompt", "chosen", "rejected", "prompt_text")]
        return {pid: rest for pid, *rest in zip(*cols, strict=True)}

    before, after = by_id("hh"), by_id("again")
    assert set(after) == set(before)
    assert after == before  # prompt messages, chosen, rejected and prompt_text identical, row for row


def test_an_edited_prompt_string_wins_over_its_stale_messages(workspace, tmp_path):
    """The text TRL trains on is the prompt: messages that no longer render to it are not used."""
    from pipelines.export import export_snapshot
    from storage.schema import build_pair_table

    msgs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "and now?"}], [{"role": "user", "content": "single"}]]
    workspace.publish("c", build_pair_table({"prompt": msgs, "chosen": ["a", "b"], "rejected": ["c", "d"],
                                             "source": ["x"] * 2, "source_row": [0, 1]}))
    out = export_snapshot(workspace, "c", tmp_path / "c.jsonl").path
    rows = _jsonl(out)
    assert rows[0][PROMPT_MESSAGES] == msgs[0]
    rows[1]["prompt"] = "Answer briefly. single"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _ingest(workspace, out, "again")
    got = workspace.read("again").column("prompt").to_pylist()
    assert got == [msgs[0], [{"role": "user", "content": "Answer briefly. single"}]]


def test_without_extra_columns_the_standard_export_is_trls_three_columns(small_pairs):
    from storage.formats import to_trl

    assert to_trl(small_pairs, "standard", keep_extra=False).column_names == ["prompt", "chosen", "rejected"]
    assert to_trl(small_pairs, "standard").column_names == ["prompt", "chosen", "rejected", PROMPT_MESSAGES,
                                                            "pair_id", "weight"]


def test_turn_markers_inside_content_still_round_trip(workspace, tmp_path):
    """Why a column and not parsing: content holding a blank line and a turn marker stays one message."""
    from pipelines.export import export_snapshot
    from storage.schema import build_pair_table

    msgs = [[{"role": "system", "content": "Quote:\n\nUser: hi\n\nAssistant: yo"}, {"role": "user", "content": "ok?"}]]
    workspace.publish("q", build_pair_table({"prompt": msgs, "chosen": ["a"], "rejected": ["b"], "source": ["x"],
                                             "source_row": [0]}))
    out = export_snapshot(workspace, "q", tmp_path / "q.jsonl").path
    assert _jsonl(out)[0]["prompt"] == "System: Quote:\n\nUser: hi\n\nAssistant: yo\n\nUser: ok?\n\nAssistant:"
    _ingest(workspace, out, "again")
    assert workspace.read("again").column("prompt").to_pylist() == msgs
    assert workspace.read("again").column("pair_id").to_pylist() == workspace.read("q").column("pair_id").to_pylist()
