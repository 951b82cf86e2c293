"""Prompt-prefix sharing: chosen and rejected of a pair in one row, the prompt encoded once.

A pair becomes one row `[prompt, chosen, rejected]` instead of two rows `[prompt, chosen]`, `[prompt, rejected]`.
A 4D additive attention mask lets rejected tokens see the prompt and earlier rejected tokens but never chosen,
and rejected position ids continue from the prompt length, so every answer token sees exactly the context (and
rotary positions) it has in the unshared layout: the log-probs are the same up to float summation order, while
the prompt's tokens go through the model once instead of twice.

The last prompt position predicts the first token of both answers, so one label tensor cannot describe the
targets; each answer gets its own (`chosen_labels`, `rejected_labels`), shifted already: the label at position
t is the token that position t predicts. Both are scored from one log-softmax.

Needs an attention implementation that honours a custom 4D float mask and explicit position_ids (eager and
sdpa in transformers do; flash-attention kernels do not), and positions that follow position_ids (learned or
rotary; not ALiBi, which follows the 2D mask): `dpo_train.preflight` falls back to two rows per pair otherwise.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dpo_train.batching import IGNORE, TokenizedPairs
from dpo_train.logps import target_logps


def shared_lengths(data: TokenizedPairs) -> np.ndarray:
    """Row width of each pair in the shared layout (what length grouping should sort by)."""
    return np.array([len(p) + len(c) + len(r) for p, c, r in zip(data.prompt, data.chosen, data.rejected, strict=True)],
                    dtype=np.int64)


def collate_shared(data: TokenizedPairs, indices: np.ndarray, pad_id: int) -> dict[str, Tensor]:
    """Right-padded rows [prompt, chosen, rejected] with their 4D mask, position ids and per-answer labels."""
    n = len(indices)
    plen = np.array([len(data.prompt[i]) for i in indices])
    clen = np.array([len(data.chosen[i]) for i in indices])
    rlen = np.array([len(data.rejected[i]) for i in indices])
    width = int((plen + clen + rlen).max())
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), 3, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected, 3 pad
    chosen_labels = torch.full((n, width), IGNORE, dtype=torch.long)
    rejected_labels = torch.full((n, width), IGNORE, dtype=torch.long)
    for row, i in enumerate(indices):
        p, c, r = data.prompt[i], data.chosen[i], data.rejected[i]
        lp, lc, lr = len(p), len(c), len(r)
        end = lp + lc + lr
        input_ids[row, :end] = torch.tensor(p + c + r, dtype=torch.long)
        position_ids[row, : lp + lc] = torch.arange(lp + lc)
        position_ids[row, lp + lc: end] = torch.arange(lp, lp + lr)
        # pads keep position 0: their outputs are never read, and a position past the model's table (learned
        # embeddings such as GPT-2's wpe) would fail; real positions stay below max(lp + lc, lp + lr) <= max_length
        segment[row, :lp], segment[row, lp:lp + lc], segment[row, lp + lc:end] = 0, 1, 2
        # position lp-1 (last prompt token) predicts c[0] and r[0]; later answer positions predict their next token
        chosen_labels[row, lp - 1: lp + lc - 1] = torch.tensor(c, dtype=torch.long)
        rejected_labels[row, lp - 1] = r[0]
        rejected_labels[row, lp + lc: end - 1] = torch.tensor(r[1:], dtype=torch.long)
    # the B x T x T mask is built from `segment` where the model runs (shared_forward), not here on the host
    return {"input_ids": input_ids, "segment": segment, "position_ids": position_ids,
            "chosen_labels": chosen_labels, "rejected_labels": rejected_labels,
            "weights": torch.as_tensor(data.weights[indices], dtype=torch.float32),
            "min_prompt": torch.tensor(int(plen.min())), "tokens": torch.tensor(int((plen + clen + rlen).sum()))}


def attention_mask(segment: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive B x 1 x T x T mask from segment ids, on segment's device.

    A query sees causal keys that are prompt or its own answer; pads (only after all real tokens, so never seen
    by them) see every earlier key, which keeps their softmax rows finite. Additive, not bool: eager attention
    adds the mask to the scores, sdpa takes either.
    """
    width = segment.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segment.device).tril()
    q, k = segment[:, :, None], segment[:, None, :]
    allowed = causal & ((k == 0) | (k == q) | (q == 3))
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def shared_forward(model: torch.nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Summed answer log-probs and lengths of chosen and rejected, from one forward per pair row.

    The LM head runs only from the first answer-predicting position on (`logits_to_keep`), and the
    log-softmax normaliser is computed once per position and shared by both answers' targets.
    """
    input_ids = batch["input_ids"]
    width = input_ids.shape[1]
    mask = attention_mask(batch["segment"], next(model.parameters()).dtype)
    keep = width - int(batch["min_prompt"]) + 1
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=batch["position_ids"], use_cache=False,
                logits_to_keep=keep)
    labels = torch.stack((batch["chosen_labels"], batch["rejected_labels"]), -1)[:, width - keep:]
    token_logps = target_logps(out.logits, labels, IGNORE)
    counts = (labels != IGNORE).sum(1)
    logps = token_logps.sum(1)
    return {"chosen_logps": logps[:, 0], "rejected_logps": logps[:, 1],
            "chosen_lengths": counts[:, 0], "rejected_lengths": counts[:, 1]}
