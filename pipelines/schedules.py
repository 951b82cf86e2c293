"""Serving the refresh flow on its cron schedule.

Cron schedules are run by a Prefect *server*: its scheduler service creates the scheduled flow runs and the
process started by `serve` executes them. Prefect's ephemeral mode (no PREFECT_API_URL) starts a throwaway
server per command and never runs schedules, so `serve` insists on a configured API URL:

    prefect server start                      # terminal 1 (UI at http://127.0.0.1:4200)
    prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api
    dpo serve --config examples/refresh.toml  # terminal 2; Ctrl-C pauses the schedule and stops

The deployment passes the config *path*, not its content: each scheduled run reads the file afresh, so an
edited threshold applies from the next run on (and, being part of the cache key, makes a new version).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config import ConfigError, RefreshConfig, load_refresh_config


def _require_server() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConnectionError(  # an OSError: the CLI reports it as a user error (exit 2), no traceback
            "`dpo serve` needs a running Prefect server: cron schedules do not run in Prefect's ephemeral mode. "
            "Start one with `prefect server start`, then "
            "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api` (or export PREFECT_API_URL)."
        )
    return str(url)


def build_deployment(config_path: str | Path, *, name: str | None = None) -> Any:
    """The refresh flow as a RunnerDeployment with the config's cron schedule and timezone."""
    from prefect.schedules import Cron

    from pipelines.flows import refresh_flow

    path = Path(config_path).expanduser().resolve()
    cfg: RefreshConfig = load_refresh_config(path)
    if cfg.schedule is None:
        raise ConfigError(f"{path}: schedule: missing; add [schedule] with cron = \"...\" to serve this config")
    sched = cfg.schedule
    return refresh_flow.to_deployment(
        name=name or sched.deployment_name,
        schedules=[Cron(sched.cron, timezone=sched.timezone)],
        parameters={"config_path": str(path), "workspace": cfg.workspace},
        description=f"ingest + clean of the sources in {path}",
        tags=["dpo", "refresh"],
    )


def serve(config_path: str | Path, *, limit: int | None = None) -> None:
    """Register the scheduled refresh deployment and run its flow runs until interrupted (blocks)."""
    from prefect import serve as prefect_serve

    from pipelines.logging import configure_logging

    configure_logging()
    _require_server()
    prefect_serve(build_deployment(config_path), limit=limit)
