"""The pair table: the one Arrow schema every part of the platform reads and writes.

A row is one preference pair. Prompts are kept twice on purpose: as chat messages (what a chat template
needs) and as a flat text rendering (what SQL, hashing and dedup need). Ids are content hashes, so the same
pair gets the same id in every source, run and machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

SCHEMA_VERSION = 1

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])

PAIR_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.list_(MESSAGE_TYPE), nullable=False),
        pa.field("prompt_text", pa.string(), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field("chosen_score", pa.float64()),
        pa.field("rejected_score", pa.float64()),
        pa.field("preference_prob", pa.float64()),
        pa.field("chosen_model", pa.string()),
        pa.field("rejected_model", pa.string()),
        pa.field("judge", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("round", pa.int32(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
        pa.field("ref_chosen_logp", pa.float64()),
        pa.field("ref_rejected_logp", pa.float64()),
        # Generated pairs only (null for offline data): the token ids exactly as sampled, so training uses what
        # the policy produced instead of a re-encoding of the text, and why each answer stopped
        # (eos | stop_string | length: an answer cut by length carries no EOS).
        pa.field("prompt_token_ids", pa.list_(pa.int32())),
        pa.field("chosen_token_ids", pa.list_(pa.int32())),
        pa.field("rejected_token_ids", pa.list_(pa.int32())),
        pa.field("chosen_stop", pa.string()),
        pa.field("rejected_stop", pa.string()),
    ],
    metadata={"dpo.schema_version": str(SCHEMA_VERSION)},
)

REQUIRED_COLUMNS = ("prompt", "chosen", "rejected", "source", "source_row")
OPTIONAL_DEFAULTS: dict[str, object] = {"round": 0, "weight": 1.0}

# A row that could not be parsed or validated: kept verbatim with where it came from and why.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_row", pa.int64(), nullable=False),
        pa.field("field", pa.string()),
        pa.field("error", pa.string(), nullable=False),
        pa.field("raw", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
    ]
)

# A row a quality rule dropped: the whole pair plus the rule, reason, parameters and the pair it duplicated.
REJECT_EXTRA_FIELDS = [
    pa.field("rule", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("params", pa.string()),  # JSON of the rule's thresholds
    pa.field("duplicate_of", pa.string()),  # pair_id kept in its place, where relevant
]
REJECTS_SCHEMA = pa.schema(list(PAIR_SCHEMA) + REJECT_EXTRA_FIELDS)

ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
_ID_SLICE = 20_000
_SEP = "\x1f"  # unit separator: cannot occur in normalised text, so field boundaries are unambiguous


def render_messages(messages: Sequence[dict] | None) -> str:
    """Flat text of a conversation: a single user turn renders as its content alone."""
    if not messages:
        return ""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{ROLE_LABELS.get(m['role'], m['role'])}: {m['content']}" for m in messages)


def hash_text(text: str) -> str:
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8", "surrogatepass"))


def prompt_ids(prompt_text: Iterable[str]) -> list[str]:
    return [hash_text(p) for p in prompt_text]


def pair_ids(prompt_text: Iterable[str], chosen: Iterable[str], rejected: Iterable[str]) -> list[str]:
    """Stable pair id: xxh3-128 of prompt, chosen and rejected joined by a unit separator."""
    return [hash_text(f"{p}{_SEP}{c}{_SEP}{r}") for p, c, r in zip(prompt_text, chosen, rejected, strict=True)]


def empty_table(schema: pa.Schema = PAIR_SCHEMA) -> pa.Table:
    return schema.empty_table()


def render_prompts(prompt: pa.Array) -> pa.Array:
    """`render_messages` of every row of a list<struct<role, content>> array, on columns."""
    values = prompt.flatten()  # respects slicing, so offsets are rebased to 0
    offsets = pc.subtract(prompt.offsets, prompt.offsets[0])
    # large_string throughout: the kernels want one string type, and a slice's text may pass 2 GB
    role, content = values.field("role").cast(pa.large_string()), values.field("content").cast(pa.large_string())
    label = role
    for name, shown in ROLE_LABELS.items():
        label = pc.if_else(pc.equal(role, name), _large(shown), label)
    pieces = pc.binary_join_element_wise(label, content, _large(": "))
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, pieces), _large("\n\n"))
    n = pc.list_value_length(prompt).fill_null(0)
    head = pc.min_element_wise(offsets.slice(0, len(prompt)), max(len(values) - 1, 0))
    single = pc.and_(pc.equal(n, 1), pc.equal(role.take(head), "user")) if len(values) else pc.equal(n, 1)
    out = pc.if_else(single, content.take(head), joined) if len(values) else joined
    return pc.if_else(pc.equal(n, 0), _large(""), out).cast(pa.string())


def _large(s: str) -> pa.Scalar:
    return pa.scalar(s, pa.large_string())


def hash_texts(texts: pa.Array) -> pa.Array:
    """`hash_text` of every string, read straight from the Arrow buffers (no Python str per row)."""
    if texts.null_count:
        raise ValueError("hash_texts: null text")
    texts = texts.cast(pa.large_string())
    bounds = np.frombuffer(texts.buffers()[1], np.int64)[texts.offset:texts.offset + len(texts) + 1].tolist()
    data = memoryview(texts.buffers()[2] or b"")
    digest = xxhash.xxh3_128_hexdigest
    return pa.array([digest(data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)], pa.string())


def _columnar_ids(part: pa.Table) -> bool:
    """Whether the columnar path gives exactly what the per-row one does: it has no notion of a null text."""
    msgs = part.column("prompt").combine_chunks().flatten()
    return not (part.column("chosen").null_count or part.column("rejected").null_count
                or msgs.field("role").null_count or msgs.field("content").null_count)


def with_ids(table: pa.Table) -> pa.Table:
    """Recompute prompt_text, prompt_id and pair_id from prompt/chosen/rejected (after any normalisation)."""
    # In slices: the rendered and joined texts exist for one slice at a time (memory stays flat).
    texts, pids, ids = [], [], []
    for lo in range(0, table.num_rows, _ID_SLICE):
        part = table.slice(lo, _ID_SLICE)
        if _columnar_ids(part):
            text = render_prompts(part.column("prompt").combine_chunks())
            texts.append(text)
            pids.append(hash_texts(text))
            answers = [part.column(c).combine_chunks().cast(pa.large_string()) for c in ("chosen", "rejected")]
            ids.append(hash_texts(pc.binary_join_element_wise(text.cast(pa.large_string()), *answers, _large(_SEP))))
            continue
        text = [render_messages(m) for m in part.column("prompt").to_pylist()]
        texts.append(pa.array(text, pa.string()))
        pids.append(pa.array(prompt_ids(text), pa.string()))
        ids.append(pa.array(pair_ids(text, part.column("chosen").to_pylist(), part.column("rejected").to_pylist()),
                            pa.string()))
    cols = {
        "prompt_text": pa.chunked_array(texts, pa.string()),
        "prompt_id": pa.chunked_array(pids, pa.string()),
        "pair_id": pa.chunked_array(ids, pa.string()),
    }
    for name, arr in cols.items():
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    return table


def build_pair_table(columns: dict[str, Sequence | pa.Array]) -> pa.Table:
    """Make a schema-conformant pair table from column data; fills ids, defaults and missing optional columns.

    `prompt` is a list of {role, content} messages per row. Unknown columns fail loudly.
    """
    unknown = set(columns) - set(PAIR_SCHEMA.names)
    if unknown:
        raise ValueError(f"unknown pair-table columns: {sorted(unknown)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"pair table is missing required columns: {missing}")
    n = len(columns["chosen"])
    arrays: dict[str, pa.Array] = {}
    for field in PAIR_SCHEMA:
        if field.name in columns:
            arrays[field.name] = pa.array(columns[field.name], field.type) if not isinstance(
                columns[field.name], pa.Array | pa.ChunkedArray
            ) else columns[field.name].cast(field.type)
        elif field.name in OPTIONAL_DEFAULTS:
            arrays[field.name] = pa.array([OPTIONAL_DEFAULTS[field.name]] * n, field.type)
        elif field.name in ("pair_id", "prompt_id", "prompt_text"):
            arrays[field.name] = pa.nulls(n, field.type)  # filled by with_ids below
        else:
            arrays[field.name] = pa.nulls(n, field.type)
    table = pa.table(arrays)
    table = with_ids(table)
    return conform(table)


def conform(table: pa.Table, schema: pa.Schema = PAIR_SCHEMA) -> pa.Table:
    """Order, cast and complete columns to `schema`; raises naming the offending column."""
    arrays = []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            if not col.type.equals(field.type):
                try:
                    col = col.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise TypeError(f"column {field.name!r}: cannot cast {col.type} to {field.type}: {exc}") from exc
            if not field.nullable and col.null_count:
                raise ValueError(f"column {field.name!r} has {col.null_count} null value(s) but may not be null")
        elif field.name in OPTIONAL_DEFAULTS:
            col = pa.array([OPTIONAL_DEFAULTS[field.name]] * table.num_rows, field.type)
        elif field.nullable:
            col = pa.nulls(table.num_rows, field.type)
        else:
            raise ValueError(f"required column {field.name!r} is missing")
        arrays.append(col)
    return pa.Table.from_arrays(arrays, schema=schema)


def validate_pair_table(table: pa.Table) -> None:
    """Raise ValueError naming the first problem: schema, nulls, empty answers or non-positive weights."""
    conform(table)
    for name in ("chosen", "rejected"):
        if table.num_rows and pc.any(pc.equal(pc.utf8_length(table.column(name)), 0)).as_py():
            row = pc.index(pc.utf8_length(table.column(name)), 0).as_py()
            raise ValueError(f"row {row}: field {name!r} is empty")
    if table.num_rows and pc.any(pc.less_equal(table.column("weight"), 0)).as_py():
        raise ValueError("field 'weight' must be > 0 on every row")


def rejects_table(pairs: pa.Table, rule: str, reasons: Sequence[str] | str, params: str | None,
                  duplicate_of: Sequence[str | None] | None = None) -> pa.Table:
    """Attach rule/reason/params/duplicate_of to dropped pair rows, giving a REJECTS_SCHEMA table."""
    n = pairs.num_rows
    pairs = conform(pairs)
    reasons_arr = pa.array([reasons] * n if isinstance(reasons, str) else list(reasons), pa.string())
    extra = [
        pa.array([rule] * n, pa.string()),
        reasons_arr,
        pa.array([params] * n, pa.string()),
        pa.array(list(duplicate_of) if duplicate_of is not None else [None] * n, pa.string()),
    ]
    return pa.Table.from_arrays(list(pairs.columns) + extra, schema=REJECTS_SCHEMA)


def quarantine_table(rows: Sequence[dict]) -> pa.Table:
    """Quarantine rows from dicts with keys of QUARANTINE_SCHEMA (missing optional keys become null)."""
    return pa.Table.from_pylist([{k: r.get(k) for k in QUARANTINE_SCHEMA.names} for r in rows],
                                schema=QUARANTINE_SCHEMA)
