"""Generated pairs train on their token ids exactly as they were sampled.

Decoding a sample to text and encoding it again is not the identity (BPE merges differ, special tokens and
partial UTF-8 bytes are lost), and the text path closes every answer with an EOS, including answers the sampler
cut at max_new_tokens, which would teach the policy to stop where it was cut off. A pair row that carries
`prompt_token_ids`/`chosen_token_ids`/`rejected_token_ids` (storage.schema, filled by dpo_train.pairing from
the generations) is therefore fed to the trainer as those ids; rows without them (offline data) take the text
path, with the same template rule (dpo_train.templates).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from dpo_train.batching import TokenizedPairs, tokenize_pairs
from dpo_train.templates import encode_prompt, encode_response
from storage.templates import Labels, row_labels

ID_COLUMNS = ("prompt_token_ids", "chosen_token_ids", "rejected_token_ids")


def has_sampled_ids(table: pa.Table) -> bool:
    return all(c in table.column_names for c in ID_COLUMNS) and table.column("chosen_token_ids").null_count \
        < table.num_rows


def sampled_encoding(
    table: pa.Table, tokenizer: Any, labels_by_source: Mapping[str, Labels] | None = None,
) -> tuple[list[list[int]], list[list[int]], list[list[int]], int, int]:
    """(prompt, chosen, rejected) ids per row: the sampled ids where the row has all three, else the text path
    (templated prompt; answer + EOS); plus the number of sampled rows and of sampled answers without EOS."""
    cols = [table.column(c).to_pylist() for c in ID_COLUMNS]
    eos = tokenizer.eos_token_id
    prompts: list[list[int]] = []
    chosen: list[list[int]] = []
    rejected: list[list[int]] = []
    sampled = without_eos = 0
    msgs, ch_txt, rj_txt = (table.column(c).to_pylist() for c in ("prompt", "chosen", "rejected"))
    labels = row_labels(table.column("source").to_pylist() if labels_by_source else None, labels_by_source,
                        table.num_rows)
    for i, (p, c, r) in enumerate(zip(*cols, strict=True)):
        if p and c is not None and r is not None:
            sampled += 1
            without_eos += sum(1 for a in (c, r) if not a or a[-1] != eos)
            prompts.append(list(p))
            chosen.append(list(c))
            rejected.append(list(r))
        else:
            prompts.append(encode_prompt(tokenizer, msgs[i], labels[i]))
            chosen.append(encode_response(tokenizer, ch_txt[i]))
            rejected.append(encode_response(tokenizer, rj_txt[i]))
    return prompts, chosen, rejected, sampled, without_eos


def tokenize_table(table: pa.Table, tokenizer: Any, **kw: Any) -> TokenizedPairs:
    """`batching.tokenize_pairs`, using the sampled ids of generated pairs as they are (see module doc)."""
    if not has_sampled_ids(table):
        return tokenize_pairs(table, tokenizer, **kw)
    p, c, r, sampled, without_eos = sampled_encoding(table, tokenizer, kw.get("labels_by_source"))
    data = tokenize_pairs(table, tokenizer, encoded=(p, c, r), **kw)
    data.stats.sampled_rows, data.stats.answers_without_eos = sampled, without_eos
    return data
