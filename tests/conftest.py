"""Shared fixtures: a fresh workspace per test and small pair tables."""

from __future__ import annotations

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
