"""Hugging Face hub data set ids (`org/name` or `hf://datasets/org/name`) as ingest sources, through `datasets`.

Only used for a source that is not a local path. When the hub cannot be reached (offline, HF_HUB_OFFLINE=1, no
such data set) the error is one line naming the id; nothing here runs remote code (datasets 3+ refuses loading
scripts).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from data_quality.ingest.containers import RawRows
from data_quality.ingest.tables import BATCH_ROWS, batch_rows

PREFIX = "hf://datasets/"
_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
_DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".csv", ".tsv", ".gz")


def hub_id(source: str) -> str | None:
    """The data set id when `source` names one on the hub rather than a local path, else None."""
    if source.startswith(PREFIX):
        return source[len(PREFIX):].strip("/")
    if Path(source).exists() or not _ID.match(source) or source.lower().endswith(_DATA_SUFFIXES):
        return None
    return source


def _offline_error(name: str, exc: BaseException) -> ValueError:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else (
        f"the hub is unreachable or has no such data set ({type(exc).__name__})")
    return ValueError(f"{PREFIX}{name}: cannot load this Hugging Face data set: {why}; download it where the hub "
                      "is reachable (datasets' save_to_disk) and ingest that folder")


def revision(name: str) -> str:
    """The data set's current commit on the hub (its content fingerprint)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().dataset_info(name)
    except Exception as exc:  # noqa: BLE001 - any failure here means: the hub cannot tell us
        raise _offline_error(name, exc) from None
    return str(info.sha)


def read_hub(name: str) -> list[RawRows]:
    """Every split of the data set, one source each (`hf://datasets/org/name/split`)."""
    import datasets

    try:
        loaded = datasets.load_dataset(name)
    except Exception as exc:  # noqa: BLE001 - network, auth and not-found errors have many types
        raise _offline_error(name, exc) from None
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("train", loaded)]
    out = []
    for split, ds in splits:
        # The cached table is memory-mapped by `datasets`: rows are made a batch at a time as ingest reads them.
        batches = iter(ds.data.table.to_batches(BATCH_ROWS))
        out.append(RawRows(f"{PREFIX}{name}/{split}", "hf_hub", records=batch_rows(batches)))
    return out
