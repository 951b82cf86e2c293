"""From pair rows to model inputs: templating, tokenisation, truncation, batching and the joint forward.

Prompt and answer are tokenised separately and concatenated (answer + EOS), which is exactly what a sampler
produces at generation time; the prompt rule is `dpo_train.templates` (chat template with
add_generation_prompt and no extra special tokens; a plain "User: ...\\n\\nAssistant:" template otherwise).
Every truncation, drop and template anomaly is counted in `TokenizeStats` and logged, never silent.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from dpo_train.logps import target_logps
from dpo_train.templates import has_chat_template, render_prompt_rows
from storage.templates import Labels

log = logging.getLogger(__name__)

IGNORE = -100
TRUNCATION_MODES = ("keep_end", "keep_start")


@dataclass
class TokenizeStats:
    rows: int = 0
    kept: int = 0
    dropped: int = 0  # prompt alone leaves no room for any answer token
    prompt_truncated: int = 0
    answer_truncated: int = 0  # pairs where chosen or rejected lost tokens
    double_bos_fixed: int = 0
    double_eos_fixed: int = 0
    prompt_not_prefix: int = 0  # answers whose joint tokenisation does not start with the prompt tokens
    sampled_rows: int = 0  # pairs trained on their sampled token ids (dpo_train.sampled_pairs), not their text
    answers_without_eos: int = 0  # sampled answers cut at max_new_tokens: trained on without an EOS
    dropped_pair_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dropped_pair_ids"] = d["dropped_pair_ids"][:100]
        return d


@dataclass
class TokenizedPairs:
    prompt: list[list[int]]
    chosen: list[list[int]]
    rejected: list[list[int]]
    weights: np.ndarray  # normalised to mean 1 over the kept rows
    rows: np.ndarray  # index of each kept pair in the source table
    stats: TokenizeStats

    def __len__(self) -> int:
        return len(self.prompt)

    def lengths(self) -> np.ndarray:
        return np.array([len(p) + max(len(c), len(r)) for p, c, r in
                         zip(self.prompt, self.chosen, self.rejected, strict=True)], dtype=np.int64)


def render_prompts(tokenizer: Any, prompts: Sequence[Sequence[dict]], sources: Sequence[str] | None = None,
                   labels_by_source: Mapping[str, Labels] | None = None) -> tuple[list[str], bool]:
    """Prompt strings and whether the tokenizer should add its own special tokens (plain template only).

    The rendering rule lives in `dpo_train.templates`, shared with generation, judges and evaluation, so a
    prompt is tokenised the same way everywhere; without a chat template a row's source may bring its own turn
    labels (`labels_by_source`, from storage.templates.snapshot_turn_labels), as the TRL standard export does."""
    return render_prompt_rows(tokenizer, prompts, sources, labels_by_source), not has_chat_template(tokenizer)


def _encode(tokenizer: Any, texts: list[str], special: bool) -> list[list[int]]:
    if not texts:
        return []
    return [list(x) for x in tokenizer(texts, add_special_tokens=special)["input_ids"]]


def _encode_text(
    table: pa.Table, tokenizer: Any, stats: TokenizeStats, check_prefix: bool,
    labels_by_source: Mapping[str, Labels] | None = None,
) -> tuple[list[list[int]], dict[str, list[list[int]]]]:
    """Prompt and answer ids from the text (answer + EOS), counting template anomalies in `stats`."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    sources = table.column("source").to_pylist() if labels_by_source and "source" in table.column_names else None
    texts, special = render_prompts(tokenizer, table.column("prompt").to_pylist(), sources, labels_by_source)
    prompts = _encode(tokenizer, texts, special)
    chosen_txt = table.column("chosen").to_pylist()
    rejected_txt = table.column("rejected").to_pylist()
    answers = {"chosen": _encode(tokenizer, chosen_txt, False), "rejected": _encode(tokenizer, rejected_txt, False)}

    if check_prefix:
        for txt in (chosen_txt, rejected_txt):
            joint = _encode(tokenizer, [p + a for p, a in zip(texts, txt, strict=True)], special)
            stats.prompt_not_prefix += sum(j[: len(p)] != p for j, p in zip(joint, prompts, strict=True))

    for p in prompts:
        # A template that writes BOS plus a tokenizer that adds one again gives two; the model never saw that.
        if bos is not None and len(p) >= 2 and p[0] == bos and p[1] == bos:
            del p[0]
            stats.double_bos_fixed += 1
    for ids_list in answers.values():
        for ids in ids_list:
            if eos is not None:
                if ids and ids[-1] == eos:
                    stats.double_eos_fixed += 1  # the text already ended in EOS; keep just one
                else:
                    ids.append(eos)
    return prompts, answers


def tokenize_pairs(
    table: pa.Table,
    tokenizer: Any,
    *,
    max_length: int,
    max_prompt_length: int,
    truncation_mode: str = "keep_end",
    check_prefix: bool = True,
    encoded: tuple[list[list[int]], list[list[int]], list[list[int]]] | None = None,
    labels_by_source: Mapping[str, Labels] | None = None,
) -> TokenizedPairs:
    """Tokenise a pair table; prompts beyond `max_prompt_length` are cut per `truncation_mode`, then answers
    are cut to fit `max_length`; a pair whose prompt leaves no room for an answer token is dropped.

    `encoded`: (prompt, chosen, rejected) ids to use as given instead of tokenising the text (sampled answers,
    see dpo_train.sampled_pairs): no EOS is appended and no BOS fixed; only the length limits apply.
    `labels_by_source`: each source's plain-template turn labels (storage.templates.snapshot_turn_labels of the
    snapshot the table was read from), so a model without a chat template trains on the text `dpo export` writes."""
    if truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")
    if max_prompt_length >= max_length:
        raise ValueError(f"max_prompt_length ({max_prompt_length}) must be < max_length ({max_length})")
    bos = tokenizer.bos_token_id
    stats = TokenizeStats(rows=table.num_rows)
    if encoded is not None:
        prompts, answers = encoded[0], {"chosen": encoded[1], "rejected": encoded[2]}
    else:
        prompts, answers = _encode_text(table, tokenizer, stats, check_prefix, labels_by_source)

    weights = np.asarray(table.column("weight").to_numpy(zero_copy_only=False), dtype=np.float64) \
        if "weight" in table.column_names else np.ones(table.num_rows)
    pair_ids = table.column("pair_id").to_pylist() if "pair_id" in table.column_names else [""] * table.num_rows
    keep_p, keep_c, keep_r, rows = [], [], [], []
    for i, (p, c, r) in enumerate(zip(prompts, answers["chosen"], answers["rejected"], strict=True)):
        if len(p) + max(len(c), len(r)) > max_length and len(p) > max_prompt_length:
            stats.prompt_truncated += 1
            if truncation_mode == "keep_start":
                p = p[:max_prompt_length]
            else:  # keep the end (the question nearest the answer) but keep a leading BOS
                head = [p[0]] if bos is not None and p[0] == bos else []
                p = head + p[len(p) - (max_prompt_length - len(head)):]
        room = max_length - len(p)
        if room < 1:
            stats.dropped += 1
            stats.dropped_pair_ids.append(pair_ids[i])
            continue
        if len(c) > room or len(r) > room:
            stats.answer_truncated += 1
            c, r = c[:room], r[:room]
        keep_p.append(p)
        keep_c.append(c)
        keep_r.append(r)
        rows.append(i)

    stats.kept = len(rows)
    row_idx = np.asarray(rows, dtype=np.int64)
    w = weights[row_idx] if len(rows) else np.ones(0)
    if len(w) and np.any(w <= 0):
        raise ValueError("sample weights must be > 0")
    w = w / w.mean() if len(w) else w
    noisy = {k: v for k, v in stats.as_dict().items() if k not in ("rows", "kept", "dropped_pair_ids") and v}
    if noisy:
        log.warning("tokenisation of %d pairs: %s", stats.rows, noisy)
    return TokenizedPairs(keep_p, keep_c, keep_r, w, row_idx, stats)


# -- batch order ---------------------------------------------------------------------------------------------

def epoch_order(lengths: np.ndarray, global_batch: int, *, seed: int, epoch: int, shuffle: bool = True,
                group_by_length: bool = True, drop_last: bool = False) -> list[np.ndarray]:
    """Global batches for one epoch, a pure function of (seed, epoch) so a resumed run replays it exactly.

    Length grouping sorts pairs by length inside mega-chunks of 64 batches, so a batch pads little while
    the batch order stays random.
    """
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    idx = rng.permutation(n) if shuffle else np.arange(n)
    if group_by_length:
        chunk = global_batch * 64
        idx = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in np.split(idx, range(chunk, n, chunk))]) \
            if n else idx
    batches = [idx[i:i + global_batch] for i in range(0, n, global_batch)]
    if drop_last and batches and len(batches[-1]) < global_batch:
        batches.pop()
    if shuffle and group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def split_global_batch(batch: np.ndarray, world: int, rank: int, micro: int) -> list[np.ndarray]:
    """This rank's micro-batches of a global batch: rank-strided slices so every rank sees similar lengths."""
    mine = batch[rank::world] if world > 1 else batch
    return [mine[i:i + micro] for i in range(0, len(mine), micro)]


# -- collation and the joint forward ---------------------------------------------------------------------------

def collate(data: TokenizedPairs, indices: np.ndarray, pad_id: int, *, pairs: bool = True) -> dict[str, Tensor]:
    """Right-padded inputs: rows [chosen_0..chosen_{B-1}, rejected_0..] when `pairs`, else chosen only."""
    seqs, prompt_lens = [], []
    answer_sets = (data.chosen, data.rejected) if pairs else (data.chosen,)
    for answers in answer_sets:
        for i in indices:
            seqs.append(data.prompt[i] + answers[i])
            prompt_lens.append(len(data.prompt[i]))
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (s, pl) in enumerate(zip(seqs, prompt_lens, strict=True)):
        t = torch.tensor(s, dtype=torch.long)
        input_ids[row, : len(s)] = t
        labels[row, pl: len(s)] = t[pl:]
        attention[row, : len(s)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels,
            "weights": torch.as_tensor(data.weights[indices], dtype=torch.float32),
            "min_prompt": torch.tensor(min(prompt_lens)), "tokens": torch.tensor(sum(len(s) for s in seqs))}


def sequence_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed log-prob of the labelled tokens per row and their count; logits[:, t] predicts labels[:, t]."""
    token_logps = target_logps(logits, labels.unsqueeze(-1), IGNORE).squeeze(-1)
    return token_logps.sum(-1), (labels != IGNORE).sum(-1)


def concatenated_forward(model: torch.nn.Module, batch: dict[str, Tensor], *, pairs: bool = True,
                         keep_logits: bool = True) -> dict[str, Tensor]:
    """One forward over chosen and rejected rows; logits are only computed from the first answer position
    on (`logits_to_keep`), which skips the prompt part of the LM head and its softmax."""
    input_ids, labels = batch["input_ids"], batch["labels"]
    width = input_ids.shape[1]
    keep = width - int(batch["min_prompt"]) + 1 if keep_logits else 0
    out = model(input_ids=input_ids, attention_mask=batch["attention_mask"], use_cache=False, logits_to_keep=keep)
    logits = out.logits[:, :-1]
    shifted = labels[:, width - logits.shape[1]:]
    logps, counts = sequence_logps(logits, shifted)
    if not pairs:
        return {"chosen_logps": logps, "chosen_lengths": counts}
    b = input_ids.shape[0] // 2
    return {"chosen_logps": logps[:b], "rejected_logps": logps[b:],
            "chosen_lengths": counts[:b], "rejected_lengths": counts[b:]}
