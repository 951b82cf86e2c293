"""Where a model comes from: a local folder, or a Hugging Face hub id that must be cached or reachable.

Checked before anything loads, so a missing path or an offline hub id is one line in seconds, not a traceback
after minutes of connection retries.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def check_model(ref: str) -> None:
    """Fail in one line, before any loading, on a model that is neither a local folder nor reachable."""
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"model {ref}: not a folder (give the folder holding config.json)")
        return
    if path.is_absolute() or ref.startswith((".", "~")) or ref.count("/") > 1 or "\\" in ref:
        raise FileNotFoundError(f"model path {ref} does not exist")
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(ref, "config.json"), str):
        return  # a hub id already in the local cache
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or not hub_reachable():
        raise ConnectionError(f"model {ref!r} is not a local folder, not in the Hugging Face cache, and the hub "
                              "cannot be reached: download it where the hub is reachable, or pass a local path")


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the hub, so an offline machine fails in seconds, not after minutes of retries."""
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True
