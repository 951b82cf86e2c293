"""Export snapshots in the formats trainers read: TRL standard / conversational (JSONL or Parquet), HF datasets.

TRL's *standard* format has plain strings (prompt, chosen, rejected); its *conversational* format has message
lists, with chosen/rejected as one assistant message each. The prompt text for the standard format is the flat
rendering stored in the pair table, so it round-trips through our own ingest.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.schema import MESSAGE_TYPE

EXPORT_FORMATS = ("trl-standard", "trl-conversational", "hf-dataset")
_KEEP = ("pair_id", "weight")


def _assistant_messages(texts: pa.ChunkedArray) -> pa.Array:
    """Wrap each answer as a one-element list of {role: assistant, content: text}, on columns."""
    texts = texts.combine_chunks()
    n = len(texts)
    roles = pa.array(["assistant"] * n, pa.string())
    structs = pa.StructArray.from_arrays([roles, texts], fields=list(MESSAGE_TYPE))
    offsets = pa.array(range(n + 1), pa.int32())
    return pa.ListArray.from_arrays(offsets, structs)


def to_trl(pairs: pa.Table, style: str = "standard", *, keep_extra: bool = True) -> pa.Table:
    if style == "standard":
        out = pa.table({"prompt": pairs["prompt_text"], "chosen": pairs["chosen"], "rejected": pairs["rejected"]})
    elif style == "conversational":
        out = pa.table({
            "prompt": pairs["prompt"],
            "chosen": _assistant_messages(pairs["chosen"]),
            "rejected": _assistant_messages(pairs["rejected"]),
        })
    else:
        raise ValueError(f"unknown TRL style {style!r}: use 'standard' or 'conversational'")
    if keep_extra:
        for name in _KEEP:
            out = out.append_column(name, pairs[name])
        # Reference log-probs travel too when cached, under the column names TRL uses.
        if pairs["ref_chosen_logp"].null_count < pairs.num_rows:
            out = out.append_column("ref_chosen_logps", pairs["ref_chosen_logp"])
            out = out.append_column("ref_rejected_logps", pairs["ref_rejected_logp"])
    return out


def export(pairs: pa.Table, to: str | os.PathLike[str], fmt: str = "trl-standard") -> Path:
    """Write `pairs` to `to` atomically (temp name + rename). The file suffix picks JSONL or Parquet."""
    target = Path(to)
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {EXPORT_FORMATS}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        if fmt == "hf-dataset":
            import datasets

            datasets.Dataset(to_trl(pairs, "conversational")).save_to_disk(str(tmp))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            return target
        table = to_trl(pairs, fmt.removeprefix("trl-"))
        suffixes = "".join(target.suffixes[-2:])
        if target.suffix == ".parquet":
            pq.write_table(table, tmp, compression="zstd")
        elif suffixes in (".jsonl", ".json") or target.suffix in (".jsonl", ".json"):
            _write_jsonl(table, tmp)
        else:
            raise ValueError(f"cannot tell the file type of {target}: use a .jsonl or .parquet suffix")
        os.replace(tmp, target)
        return target
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def _write_jsonl(table: pa.Table, path: Path) -> None:
    import json

    # pyarrow has no JSON writer; this loop is on export, not on a hot ingest/clean path.
    with open(path, "w", encoding="utf-8") as fh:
        for batch in table.to_batches(max_chunksize=8192):
            for row in batch.to_pylist():
                fh.write(json.dumps(row, ensure_ascii=False))
                fh.write("\n")

