"""One Prefect test harness (a temporary SQLite-backed server) for the whole pipelines test session."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    # The harness server's telemetry heartbeat races its own migrations on SQLite ("database is locked").
    saved = os.environ.get("PREFECT_SERVER_ANALYTICS_ENABLED")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    try:
        with prefect_test_harness(server_startup_timeout=90):
            yield
    finally:
        if saved is None:
            os.environ.pop("PREFECT_SERVER_ANALYTICS_ENABLED", None)
        else:
            os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = saved


@pytest.fixture
def hh_small(tmp_path: Path, shared_data: Path) -> Path:
    """The first 300 HH rows as their own file: real quirks, small enough for fast flow tests."""
    src = shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz"
    out = tmp_path / "hh_small.jsonl"
    with gzip.open(src, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(300)]
    out.write_text("".join(lines), encoding="utf-8")
    return out


@pytest.fixture
def hh_with_broken(tmp_path: Path, hh_small: Path) -> Path:
    """HH rows plus two unparseable lines, so the quarantine has something in it."""
    out = tmp_path / "hh_broken.jsonl"
    out.write_text(hh_small.read_text(encoding="utf-8") + "{not json\n" + json.dumps({"chosen": 3}) + "\n",
                   encoding="utf-8")
    return out
