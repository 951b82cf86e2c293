"""How the `dpo` command reports a failure: one line naming what went wrong, never a traceback (`--debug` has it).

A user error (bad input file, unknown snapshot, bad SQL, a model path that does not exist, a hub that cannot be
reached, a catalog held by another process) exits 2 with its message, which already names the file, row or field
where the code raising it knows them. Anything else is a bug: exit 1, the exception's type and message, and
the hint to rerun with --debug. Prefect logs a failed flow or task with its traceback; `quiet_tracebacks` keeps
the log line and drops the traceback from it.
"""

from __future__ import annotations

import logging

from pipelines import output

EXIT_USER = 2
EXIT_BUG = 1

# Every type a user's input, environment or data can raise through the verbs. ValueError covers our own
# ConfigError, RowError and ReferenceMismatchError and pydantic's ValidationError; OSError covers missing
# files, folders given as files, permissions, full disks and an unreachable Hugging Face hub.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, OSError, TypeError, RecursionError,
                                                 UnicodeError, EOFError)


def _user_error_types() -> tuple[type[BaseException], ...]:
    extra: list[type[BaseException]] = []
    try:
        import duckdb

        extra.append(duckdb.Error)  # bad SQL, a catalog locked by another process
    except ImportError:  # pragma: no cover - duckdb is a dependency
        pass
    try:
        import httpx

        extra.append(httpx.TransportError)  # a Prefect server or judge endpoint that cannot be reached
    except ImportError:  # pragma: no cover - httpx comes with prefect
        pass
    try:
        from storage.errors import StorageError
        from storage.locks import LockHeldError

        extra += [StorageError, LockHeldError]  # catalog busy, disk full, query limits, a run lock held
    except ImportError:  # pragma: no cover - older checkout
        pass
    from dpo_train.generation.vllm_backend import BackendUnavailable
    from pipelines.rounds import RoundFailure

    return (*USER_ERRORS, *extra, BackendUnavailable, RoundFailure)


def describe(exc: BaseException) -> str:
    """The one-line message: the exception's own text (a KeyError's text unquoted), else its type."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, RecursionError):
        text = "input nested too deeply to read (a JSON value nested thousands of levels deep?)"
    else:
        text = str(exc)
    text = " ".join(text.split()) if text.count("\n") > 3 else text.strip()
    return text or type(exc).__name__


def report_error(exc: BaseException) -> int:
    if isinstance(exc, _user_error_types()):
        # DuckDB's IO errors (a catalog locked by another process) are not the query's fault.
        sql = type(exc).__module__.startswith(("duckdb", "_duckdb")) and "IO" not in type(exc).__name__
        label = "SQL error:" if sql else "error:"
        output.message(describe(exc), label=label, style="bold red")
        return EXIT_USER
    output.message(f"{type(exc).__name__}: {describe(exc)} (this is a bug: rerun with --debug for the traceback)",
                   label="internal error:", style="bold red")
    return EXIT_BUG


class _DropTraceback(logging.Filter):
    """Keep the log line of a failed flow or task run, drop the traceback attached to it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


_FILTER = _DropTraceback()
_PREFECT_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine", "prefect")


def quiet_tracebacks(enabled: bool = True) -> None:
    for name in _PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        if enabled and _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        elif not enabled and _FILTER in logger.filters:
            logger.removeFilter(_FILTER)
