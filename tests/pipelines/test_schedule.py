"""A real local Prefect server: `serve` registers the cron deployment and the scheduler creates runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines.config import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _poll(fn: Any, what: str, deadline: float) -> Any:
    while time.monotonic() < deadline:
        try:
            got = fn()
        except httpx.HTTPError:
            got = None
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_build_deployment_needs_a_schedule(tmp_path: Path) -> None:
    from pipelines.schedules import build_deployment

    (tmp_path / "a.jsonl").write_text("{}\n")
    cfg = tmp_path / "r.toml"
    cfg.write_text('[[sources]]\nname = "a"\npaths = ["a.jsonl"]\n')
    with pytest.raises(ConfigError, match="schedule"):
        build_deployment(cfg)


@pytest.mark.slow
def test_serve_registers_cron_deployment_and_runs_get_scheduled(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello there",
                                                  "rejected": "\n\nHuman: hi\n\nAssistant: go away"}) + "\n")
    cfg = tmp_path / "refresh.toml"
    cfg.write_text('workspace = "ws"\n[schedule]\ncron = "*/5 * * * *"\ntimezone = "Europe/Paris"\n'
                   'deployment_name = "nightly"\n[[sources]]\nname = "a"\npaths = ["a.jsonl"]\n')
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
               PREFECT_UI_ENABLED="false", PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
               PREFECT_LOGGING_LEVEL="WARNING", PREFECT_RUNNER_POLL_FREQUENCY="1")
    deadline = time.monotonic() + 150
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, cwd=tmp_path, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runner = None
    try:
        _poll(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, "server health", deadline)
        runner = subprocess.Popen(
            [sys.executable, "-c", f"from pipelines.schedules import serve; serve({str(cfg)!r})"],
            env={**env, "PREFECT_API_URL": api, "PYTHONPATH": str(REPO)}, cwd=REPO, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def deployment() -> dict[str, Any] | None:
            deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json()
            return next((d for d in deps if d["name"] == "nightly"), None)

        dep = _poll(deployment, "the deployment", deadline)
        assert dep["parameters"]["config_path"] == str(cfg)
        cron = dep["schedules"][0]["schedule"]
        assert cron["cron"] == "*/5 * * * *" and cron["timezone"] == "Europe/Paris"

        def scheduled() -> list[dict[str, Any]]:
            body = {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}}}}
            return httpx.post(f"{api}/flow_runs/filter", json=body, timeout=5).json()

        # The served process executes runs of the deployment: trigger one now rather than wait for the cron.
        # Under CI load the sqlite-backed server can answer 5xx ("database is locked"): retry until it returns a run.
        def create_run() -> dict[str, Any] | None:
            resp = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={}, timeout=10)
            return resp.json() if resp.status_code in (200, 201) else None

        run = _poll(create_run, "the flow run to be created", deadline)

        def finished() -> str | None:
            state = httpx.get(f"{api}/flow_runs/{run['id']}", timeout=5).json()["state"]["type"]
            return state if state in ("COMPLETED", "FAILED", "CRASHED") else None

        assert _poll(finished, "the triggered run to finish", deadline) == "COMPLETED"
        assert (tmp_path / "ws" / "catalog.duckdb").exists()
        assert runner.poll() is None, "serve exited early"

        # pyproject pins sqlalchemy<2.1: with 2.1 Prefect 3.8.8's scheduler creates no runs at all.
        runs = _poll(scheduled, "a scheduled flow run", deadline)
        assert runs[0]["state"]["type"] == "SCHEDULED"
    finally:
        if runner is not None:
            _stop(runner)
        _stop(server)
    assert server.returncode is not None
