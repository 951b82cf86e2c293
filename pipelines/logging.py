"""Readable logs for the data flows: flow and task messages stay, Prefect server and client noise goes.

Call `configure_logging()` once at the start of a command, before the first flow runs: Prefect reads its
logging settings from the environment when it sets logging up, so the variables must be in place first.
Values the user already exported win over these defaults.
"""

from __future__ import annotations

import logging
import os

# Server-side and transport loggers that flood the console of a CLI run with request lines and startup
# banners; none of them says anything about the data.
_NOISY = ("uvicorn", "uvicorn.access", "uvicorn.error", "httpx", "httpcore", "prefect.server", "docket",
          "distributed", "distributed.scheduler", "distributed.nanny", "distributed.worker", "asyncio",
          "prefect._internal", "prefect.client", "prefect.events", "apprise", "aiosqlite", "alembic")


def configure_logging(*, verbose: bool = False, level: str = "INFO") -> None:
    """Quiet Prefect's server and client loggers; keep flow/task logs at `level` (DEBUG everywhere if verbose)."""
    if verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "DEBUG")
        logging.getLogger("dpo").setLevel(logging.DEBUG)
        return
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", level)
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_INTERNAL_LEVEL", "ERROR")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("dpo").setLevel(logging.getLevelNamesMapping().get(level.upper(), logging.INFO))
