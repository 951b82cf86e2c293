"""`dpo train` on a real HH snapshot, model without a chat template: it tokenises the prompt `dpo export` writes."""

from __future__ import annotations

import gzip
import json

from dpo_train import batching
from dpo_train.trainer import TrainConfig, train


def test_dpo_train_tokenises_the_exported_hh_prompt(workspace, plain_model_dir, shared_data, tmp_path, monkeypatch):
    from pipelines.export import export_snapshot
    from pipelines.steps import ingest

    lines = gzip.open(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt", encoding="utf-8").readlines()
    src = tmp_path / "hh_src.jsonl"
    src.write_text("".join(lines[:12]), encoding="utf-8")
    ingest(workspace, [str(src)], "hh")
    exported = [json.loads(x)["prompt"] for x in
                export_snapshot(workspace, "hh", tmp_path / "hh.jsonl").path.read_text().splitlines()]

    seen = {}
    real = batching.render_prompts

    def spy(tokenizer, *args, **kw):
        texts, special = real(tokenizer, *args, **kw)
        seen["tok"], seen["texts"] = tokenizer, texts
        return texts, special

    monkeypatch.setattr(batching, "render_prompts", spy)
    train(TrainConfig(snapshot="hh", model=str(plain_model_dir), per_device_batch_size=4, max_length=256,
                      max_prompt_length=128, max_steps=1, save_steps=0, report=False), workspace)
    assert not getattr(seen["tok"], "chat_template", None)
    assert seen["texts"] == exported  # byte for byte, so the same ids before truncation
    assert all(p.startswith("Human: ") for p in exported)
