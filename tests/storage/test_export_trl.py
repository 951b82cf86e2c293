"""TRL 1.16's own DPOTrainer on our exports: it accepts the standard export's extra columns (prompt_messages,
pair_id, weight), and its token ids are our trainer's, without a chat template (standard export) and with one
(conversational export). Tiny local tokenizer and models (dpo_train.tiny): no downloads."""

from __future__ import annotations

import gzip

import pytest

pytest.importorskip("trl")


@pytest.fixture
def hh_export(workspace, shared_data, tmp_path):
    from pipelines.export import export_snapshot
    from pipelines.steps import ingest

    lines = gzip.open(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt", encoding="utf-8").readlines()
    src = tmp_path / "hh_src.jsonl"
    src.write_text("".join(lines[:8]), encoding="utf-8")  # 3 of the 8 are multi-turn
    ingest(workspace, [str(src)], "hh")
    return workspace, lines[:8], export_snapshot


def _tiny(lines: list[str]):
    from dpo_train.tiny import build_tiny, train_tokenizer

    tok = train_tokenizer(lines, vocab_size=400)
    size = {"n_layers": 1, "hidden": 32, "heads": 2, "max_positions": 4096}
    return tok, build_tiny(tok, seed=0, **size), build_tiny(tok, seed=1, **size)


def _trl(path, tok, model, ref, tmp_path, *, steps: int = 0):
    import datasets
    from trl import DPOConfig, DPOTrainer

    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
    cfg = DPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", per_device_train_batch_size=2,
                    max_length=None, use_cpu=True, max_steps=max(steps, 1), save_strategy="no")
    trainer = DPOTrainer(model=model, ref_model=ref, args=cfg, train_dataset=ds, processing_class=tok)
    if steps:
        trainer.train()
    return trainer


def test_trl_trains_on_the_standard_export_with_the_trainers_token_ids(hh_export, tmp_path):
    from dpo_train.batching import tokenize_pairs
    from storage.formats import PROMPT_MESSAGES
    from storage.templates import snapshot_turn_labels

    ws, lines, export_snapshot = hh_export
    out = export_snapshot(ws, "hh", tmp_path / "hh.jsonl").path
    tok, model, ref = _tiny(lines)
    tok.chat_template = None  # a model without a chat template: both sides use the plain template
    trainer = _trl(out, tok, model, ref, tmp_path, steps=1)  # the extra columns do not stop a training step
    assert PROMPT_MESSAGES in trainer.train_dataset.column_names
    assert trainer.state.global_step == 1

    info = ws.resolve("hh")
    ours = tokenize_pairs(ws.read(info.snapshot_id), tok, max_length=1 << 20, max_prompt_length=1 << 19,
                          labels_by_source=snapshot_turn_labels(ws, info))
    assert trainer.train_dataset["prompt_ids"] == ours.prompt  # "Human: ...\n\nAssistant:" on both sides
    assert trainer.train_dataset["chosen_ids"] == ours.chosen
    assert trainer.train_dataset["rejected_ids"] == ours.rejected


def test_with_a_chat_template_trl_on_the_conversational_export_sees_the_trainers_prompt(hh_export, tmp_path):
    from dpo_train.templates import encode_prompt

    ws, lines, export_snapshot = hh_export
    out = export_snapshot(ws, "hh", tmp_path / "hh_conv.jsonl", "trl-conversational").path
    tok, model, ref = _tiny(lines)  # with dpo_train.tiny's chat template
    trainer = _trl(out, tok, model, ref, tmp_path)
    prompts = ws.read("hh").column("prompt").to_pylist()
    assert trainer.train_dataset["prompt_ids"] == [encode_prompt(tok, m) for m in prompts]
