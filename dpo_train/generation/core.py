"""The one generation interface: prompts in, a table of exactly n answers per prompt out.

Seeds are derived per (prompt, sample) from the config seed and the prompt's content hash, so an answer does
not depend on batch size, shard count or the position of its prompt in the list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa
import xxhash

from dpo_train.generation.config import GenerationConfig
from storage.schema import MESSAGE_TYPE, hash_text, render_messages
from storage.templates import Labels

GENERATION_SCHEMA = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.list_(MESSAGE_TYPE), nullable=False),
        # The prompt's source (the prompt table's `source`, null without one): without a chat template it picks
        # the prompt's turn labels (storage.templates.row_labels), for the sampler and for the judges after it.
        pa.field("source", pa.string()),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("model", pa.string()),
        pa.field("finish_reason", pa.string()),  # "stop" (EOS or stop string) or "length" (max_new_tokens)
        pa.field("num_tokens", pa.int32()),  # generated tokens, the closing EOS included
        pa.field("seed", pa.int64()),
        # Token-exact record of the sample: training and KL use these ids, never a re-encoding of `response`
        # (decode -> encode is not the identity: BPE merges differ, special tokens and partial UTF-8 are lost).
        pa.field("prompt_token_ids", pa.list_(pa.int32())),  # the prompt as the sampler saw it
        pa.field("token_ids", pa.list_(pa.int32())),  # sampled ids; the closing EOS only when one was sampled
        pa.field("token_logprobs", pa.list_(pa.float32())),  # the sampler's log-prob of each sampled id
        pa.field("stop_reason", pa.string()),  # STOP_REASONS: eos | stop_string | length
    ]
)
STOP_REASONS = ("eos", "stop_string", "length")

Messages = list[dict[str, str]]
PromptsLike = pa.Table | Sequence[Sequence[dict]]


@dataclass(frozen=True)
class Sample:
    """One generated answer, as a backend reports it (row index into the prompt list)."""

    prompt_row: int
    sample_index: int
    response: str
    finish_reason: str
    num_tokens: int
    seed: int
    token_ids: tuple[int, ...] = ()
    token_logprobs: tuple[float, ...] = ()
    stop_reason: str | None = None  # eos | stop_string | length
    prompt_token_ids: tuple[int, ...] = ()


# A backend gets distinct prompts, their ids and their plain-template turn labels (None: the defaults; a chat
# template ignores them) and returns exactly cfg.n samples per prompt.
Backend = Callable[[list[Messages], list[str], GenerationConfig, list[Labels | None]], list[Sample]]


def derive_seed(base_seed: int, prompt_id: str, sample_index: int | None = None) -> int:
    """A 31-bit seed from the config seed and the prompt (and sample); fits every backend's seed type."""
    key = f"{base_seed}\x1f{prompt_id}" + ("" if sample_index is None else f"\x1f{sample_index}")
    return xxhash.xxh3_64_intdigest(key.encode()) & 0x7FFFFFFF


def normalise_prompts(prompts: PromptsLike) -> tuple[list[Messages], list[str]]:
    """Distinct prompts (first occurrence kept) and their ids (see `distinct_prompts`)."""
    msgs, ids, _ = distinct_prompts(prompts)
    return msgs, ids


def distinct_prompts(prompts: PromptsLike) -> tuple[list[Messages], list[str], list[str | None]]:
    """Distinct prompts (first occurrence kept), their ids and their sources (a table's `source` column, else
    None).

    A prompt snapshot taken from a pair table repeats a prompt once per pair; generating for each copy would
    give one prompt_id several groups of n, so copies are folded before generation.
    """
    if isinstance(prompts, pa.Table):
        if "prompt" not in prompts.column_names:
            raise ValueError("prompt table needs a 'prompt' column of chat messages")
        msgs = prompts.column("prompt").to_pylist()
        ids = prompts.column("prompt_id").to_pylist() if "prompt_id" in prompts.column_names else None
        sources = prompts.column("source").to_pylist() if "source" in prompts.column_names else [None] * len(msgs)
    else:
        msgs = [list(p) for p in prompts]
        ids, sources = None, [None] * len(msgs)
    out_msgs: list[Messages] = []
    out_ids: list[str] = []
    out_sources: list[str | None] = []
    seen: set[str] = set()
    for i, m in enumerate(msgs):
        if not m or not isinstance(m, list) or not all(isinstance(x, dict) and "role" in x and "content" in x
                                                       for x in m):
            raise ValueError(f"prompt {i} is not a non-empty list of {{role, content}} messages: {m!r}")
        pid = ids[i] if ids is not None and ids[i] else hash_text(render_messages(m))
        if pid in seen:
            continue
        seen.add(pid)
        out_msgs.append([{"role": x["role"], "content": x["content"]} for x in m])
        out_ids.append(pid)
        out_sources.append(sources[i])
    return out_msgs, out_ids, out_sources


T = TypeVar("T")


def shard(prompts: T, num_shards: int, index: int) -> T:
    """Shard `index` of `num_shards` (strided): every prompt lands in exactly one shard, sizes differ by <= 1.

    Works on a list/sequence (returns a list) or a pa.Table (returns a table).
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index must be in [0, {num_shards}), got {index}")
    if isinstance(prompts, pa.Table):
        return prompts.take(pa.array(range(index, prompts.num_rows, num_shards), pa.int64()))  # type: ignore[return-value]
    return list(prompts)[index::num_shards]  # type: ignore[index,return-value]


def assemble_table(msgs: list[Messages], ids: list[str], samples: list[Sample], cfg: GenerationConfig,
                   sources: list[str | None] | None = None) -> pa.Table:
    """The output table, ordered by (prompt, sample_index); fails if any prompt lacks exactly n answers."""
    counts = [0] * len(msgs)
    for s in samples:
        counts[s.prompt_row] += 1
    bad = [(ids[i], c) for i, c in enumerate(counts) if c != cfg.n]
    if bad:
        raise RuntimeError(f"backend {cfg.backend!r} returned the wrong number of answers for "
                           f"{len(bad)} prompt(s) (expected n={cfg.n}): {bad[:5]}")
    ordered = sorted(samples, key=lambda s: (s.prompt_row, s.sample_index))
    return pa.table(
        {
            "prompt_id": [ids[s.prompt_row] for s in ordered],
            "prompt": [msgs[s.prompt_row] for s in ordered],
            "source": [sources[s.prompt_row] if sources else None for s in ordered],
            "sample_index": [s.sample_index for s in ordered],
            "response": [s.response for s in ordered],
            "model": [cfg.model] * len(ordered),
            "finish_reason": [s.finish_reason for s in ordered],
            "num_tokens": [s.num_tokens for s in ordered],
            "seed": [s.seed for s in ordered],
            "prompt_token_ids": [list(s.prompt_token_ids) or None for s in ordered],
            "token_ids": [list(s.token_ids) if s.stop_reason else None for s in ordered],
            "token_logprobs": [list(s.token_logprobs) or None for s in ordered],
            "stop_reason": [s.stop_reason for s in ordered],
        },
        schema=GENERATION_SCHEMA,
    )
