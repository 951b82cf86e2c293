"""Shared fixtures: a fresh workspace per test and small pair tables."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("DPO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def workspace(tmp_path):
    from storage.workspace import Workspace

    return Workspace(tmp_path / "ws")


@pytest.fixture
def small_pairs():
    from storage.schema import build_pair_table

    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(10)]
    return build_pair_table({
        "prompt": prompts,
        "chosen": [f"good answer {i}" for i in range(10)],
        "rejected": [f"bad answer {i}" for i in range(10)],
        "source": ["unit"] * 10,
        "source_row": list(range(10)),
    })


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        if os.environ.get("CI"):  # CI always has shared/ beside the clone: a missing copy must fail, not skip
            pytest.fail(f"shared data not found at {SHARED_DATA} (set DPO_SHARED_DATA)")
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def without_chat_template(model_dir: Path, out: Path) -> Path:
    """A copy of a local model whose tokenizer has no chat template: prompts take the plain template."""
    out.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.is_file() and f.name != "chat_template.jinja":
            (out / f.name).write_bytes(f.read_bytes())
    conf = json.loads((out / "tokenizer_config.json").read_text())
    conf.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(conf))
    return out


@pytest.fixture
def short_hh(tmp_path, shared_data) -> Path:
    """16 real HH-RLHF rows short enough for a tiny model's positions (prompt and answers < 300 chars)."""
    out = tmp_path / "hh_short.jsonl"
    with gzip.open(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz", "rt", encoding="utf-8") as fh:
        rows = [line for line in fh if max(len(v) for v in json.loads(line).values()) < 300][:16]
    out.write_text("".join(rows), encoding="utf-8")
    return out
