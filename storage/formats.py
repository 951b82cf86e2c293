"""Export snapshots in the formats trainers read: TRL standard / conversational (JSONL or Parquet), HF datasets.

TRL's *standard* format has plain strings and TRL concatenates prompt + answer as they are, so the prompt is the
conversation rendered with the template our trainer uses without a chat template (storage.templates, with each
row's source turn labels): every turn with its marker, then the assistant cue. A multi-turn prompt never runs
into the answer. With `keep_extra` it also carries the structured prompt as `prompt_messages` (a name TRL's
DPOTrainer ignores), which the TRL standard reader uses instead of the string when the two agree, so the export
re-ingests to the same pair ids. Its *conversational* format keeps the messages (TRL applies the model's chat
template, as our trainer does), with chosen/rejected as one assistant message each.

Exports never destroy: an existing target is refused unless `overwrite`, and even then only a previous export
of ours is replaced (a folder carries the marker file EXPORT_MARKER, a file the hidden sidecar
`.<name>.dpo-export.json`), by writing a temporary sibling and renaming it into place. The current folder, its parents and anything inside or
above a protected folder (the workspace) are never a target.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from storage.schema import MESSAGE_TYPE
from storage.templates import Labels, render_plain_rows

EXPORT_FORMATS = ("trl-standard", "trl-conversational", "hf-dataset")
EXPORT_MARKER = ".dpo-export.json"
_KEEP = ("pair_id", "weight")
# The standard export's structured prompt: not a key TRL reads (prompt/chosen/rejected/completion/messages/...),
# so TRL trains on `prompt` alone; data_quality.ingest.trl reads it back.
PROMPT_MESSAGES = "prompt_messages"
_SLICE = 20_000


class ExportRefused(FileExistsError):
    """The target exists (or is a place no export may touch): nothing was written or removed."""


def _assistant_messages(texts: pa.ChunkedArray) -> pa.Array:
    """Wrap each answer as a one-element list of {role: assistant, content: text}, on columns."""
    texts = texts.combine_chunks()
    n = len(texts)
    roles = pa.array(["assistant"] * n, pa.string())
    structs = pa.StructArray.from_arrays([roles, texts], fields=list(MESSAGE_TYPE))
    offsets = pa.array(range(n + 1), pa.int32())
    return pa.ListArray.from_arrays(offsets, structs)


def rendered_prompts(pairs: pa.Table, labels_by_source: Mapping[str, Labels] | None = None) -> pa.Array:
    """The plain-template prompt of every row; a row's source may bring its own turn labels ("Human")."""
    out = []
    for lo in range(0, pairs.num_rows, _SLICE):  # Python objects for one slice at a time
        part = pairs.slice(lo, _SLICE)
        out.extend(render_plain_rows(part.column("prompt").to_pylist(), part.column("source").to_pylist(),
                                     labels_by_source))
    return pa.array(out, pa.string())


def to_trl(pairs: pa.Table, style: str = "standard", *, keep_extra: bool = True, with_reference: bool = False,
           labels_by_source: Mapping[str, Labels] | None = None) -> pa.Table:
    """The columns TRL reads (`style` standard or conversational); `keep_extra` adds pair_id, weight and, for
    standard, `prompt_messages` (the structured prompt, so the export re-ingests to the same pairs)."""
    if style == "standard":
        out = pa.table({"prompt": rendered_prompts(pairs, labels_by_source), "chosen": pairs["chosen"],
                        "rejected": pairs["rejected"]})
        if keep_extra:
            out = out.append_column(PROMPT_MESSAGES, pairs["prompt"])
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
    # Cached reference log-probs only when asked: TRL computes its own and refuses duplicated columns.
    if with_reference and pairs["ref_chosen_logp"].null_count < pairs.num_rows:
        out = out.append_column("ref_chosen_logps", pairs["ref_chosen_logp"])
        out = out.append_column("ref_rejected_logps", pairs["ref_rejected_logp"])
    return out


def weight_warning(pairs: pa.Table) -> str | None:
    """The warning to show when sample weights are exported to a consumer that ignores them (TRL's DPOTrainer)."""
    import pyarrow.compute as pc

    n = pc.sum(pc.not_equal(pairs["weight"], 1.0)).as_py() or 0
    if not n:
        return None
    return (f"{n} of {pairs.num_rows} rows have a sample weight other than 1.0; TRL's DPOTrainer ignores the "
            "`weight` column. `dpo train` honours it; with TRL, use the column in your own loss or sampler "
            "(see README, Export).")


# -- where an export may go ----------------------------------------------------------------------------------
def marker_path(target: Path) -> Path:
    """Where the export marker of `target` lives: inside a folder export, beside a file export."""
    return target / EXPORT_MARKER if target.is_dir() else target.with_name(f".{target.name}{EXPORT_MARKER}")


def _write_marker(path: Path, fmt: str, rows: int) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps({"written_by": "dpo export", "format": fmt, "rows": rows}) + "\n")
    os.replace(tmp, path)


def check_target(target: Path, fmt: str, *, overwrite: bool, protect: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """The resolved target, or ExportRefused saying why nothing may be written there."""
    if target.is_symlink():
        raise ExportRefused(f"export target {target} is a symbolic link: give the real path")
    path = target.resolve()
    cwd = Path.cwd().resolve()
    if cwd.is_relative_to(path):
        raise ExportRefused(f"export target {target} is the current folder or a parent of it: give a new path")
    for root in protect:
        root = Path(root).resolve()
        if path.is_relative_to(root) or root.is_relative_to(path):
            raise ExportRefused(f"export target {target} is inside (or holds) the workspace {root}: "
                                "export outside it")
    for parent in (path, *path.parents):  # any workspace, not only the one this command uses
        if (parent / "catalog.duckdb").is_file():
            raise ExportRefused(f"export target {target} is inside the workspace {parent}: export outside it")
    if not (path.exists() or path.is_symlink()):
        return path
    if not overwrite:
        raise ExportRefused(f"export target {target} exists: pass --overwrite to replace a previous export")
    want_dir = fmt == "hf-dataset"
    if path.is_dir() != want_dir:
        kind = "folder" if path.is_dir() else "file"
        raise ExportRefused(f"export target {target} is a {kind}; {fmt} writes a {'folder' if want_dir else 'file'}")
    if not marker_path(path).is_file():
        raise ExportRefused(f"export target {target} has no export marker ({marker_path(path).name}), so it is "
                            "not a previous export of this tool: refusing to replace it (choose a new path)")
    return path


def _swap_in(tmp: Path, target: Path) -> None:
    """Move a finished temp export onto `target`; a previous export is moved aside, then removed."""
    if not target.exists():
        os.replace(tmp, target)
        return
    if not target.is_dir():
        os.replace(tmp, target)  # atomic for files
        return
    old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old, target)  # put the previous export back
        raise
    shutil.rmtree(old)  # checked to be our own export by check_target


def export(pairs: pa.Table, to: str | os.PathLike[str], fmt: str = "trl-standard", *, overwrite: bool = False,
           protect: Sequence[str | os.PathLike[str]] = (), with_reference: bool = False,
           labels_by_source: Mapping[str, Labels] | None = None) -> Path:
    """Write `pairs` to `to` atomically (temp sibling + rename). The file suffix picks JSONL or Parquet."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {EXPORT_FORMATS}")
    if fmt != "hf-dataset" and Path(to).suffix not in (".parquet", ".jsonl", ".json"):
        raise ValueError(f"cannot tell the file type of {to}: use a .jsonl or .parquet suffix")
    target = check_target(Path(to), fmt, overwrite=overwrite, protect=protect)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        if fmt == "hf-dataset":
            import datasets

            table = to_trl(pairs, "conversational", with_reference=with_reference)
            datasets.Dataset(table).save_to_disk(str(tmp))
            _write_marker(tmp / EXPORT_MARKER, fmt, pairs.num_rows)
        else:
            table = to_trl(pairs, fmt.removeprefix("trl-"), with_reference=with_reference,
                           labels_by_source=labels_by_source)
            if target.suffix == ".parquet":
                pq.write_table(table, tmp, compression="zstd")
            else:
                _write_jsonl(table, tmp)
        _swap_in(tmp, target)
        if fmt != "hf-dataset":  # after the file: a crash between the two leaves a target --overwrite refuses
            _write_marker(marker_path(target), fmt, pairs.num_rows)
        return target
    finally:
        if tmp.exists():
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()


def _write_jsonl(table: pa.Table, path: Path) -> None:
    # pyarrow has no JSON writer; this loop is on export, not on a hot ingest/clean path.
    with open(path, "w", encoding="utf-8") as fh:
        for batch in table.to_batches(max_chunksize=8192):
            for row in batch.to_pylist():
                fh.write(json.dumps(row, ensure_ascii=False))
                fh.write("\n")
