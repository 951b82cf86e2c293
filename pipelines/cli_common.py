"""What the `dpo` verbs share: the workspace from the options, TOML configs, quiet model loading."""

from __future__ import annotations

import argparse
import os
from typing import Any


def workspace(args: argparse.Namespace):
    from storage.workspace import Workspace

    return Workspace(args.workspace)


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:  # a ValueError: exit 2 with the file and position
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc


def quiet_transformers() -> None:
    """Weight-loading progress bars of every model load would bury the command's own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
