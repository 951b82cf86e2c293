"""The Prefect flow around `pipelines.rounds.iterate`: each round step runs as a named task in the UI.

Resume is the catalog's job (the `rounds` table), not Prefect's cache, so a re-run after a kill, or on a
machine with a fresh Prefect database, still skips every finished step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import flow, task

from pipelines.iterate_config import IterateConfig


def _as_task(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return task(name=name, retries=0)(fn)()


@flow(name="dpo-iterate", log_prints=True)
def iterate_flow(config: dict[str, Any], rounds: int | None = None) -> list[dict[str, Any]]:
    from pipelines.rounds import iterate

    return iterate(IterateConfig.model_validate(config), rounds=rounds, execute=_as_task)
