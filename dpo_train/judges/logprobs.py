"""Summed log-probs of responses given their templated prompts (implicit reward, KL estimates)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dpo_train.batching import IGNORE, sequence_logps
from dpo_train.templates import encode_prompt, encode_response
from storage.templates import Labels


def response_logprobs(model: Any, tokenizer: Any, prompts: Sequence[Sequence[dict]], responses: Sequence[str],
                      labels: Sequence[Labels | None] | None = None, *, batch_size: int = 8,
                      device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(sum of log pi(y_t | x, y_<t) over response tokens incl. EOS, number of response tokens) per row.
    `labels`: each prompt's plain-template turn labels (Judge.turn_labels), None for the defaults."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    labels = labels if labels is not None else [None] * len(prompts)
    seqs = [(encode_prompt(tokenizer, p, lab), encode_response(tokenizer, r))
            for p, r, lab in zip(prompts, responses, labels, strict=True)]
    sums = np.zeros(len(seqs), dtype=np.float64)
    counts = np.array([len(r) for _, r in seqs], dtype=np.int64)
    order = sorted(range(len(seqs)), key=lambda i: -(len(seqs[i][0]) + len(seqs[i][1])))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            full = [seqs[i][0] + seqs[i][1] for i in idx]
            width = max(len(f) for f in full)
            # Right padding: positions of real tokens start at 0 without any position_ids bookkeeping.
            ids = torch.tensor([f + [pad] * (width - len(f)) for f in full], device=device)
            attn = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in full], device=device)
            # Only response tokens are labelled: the same masked sum the trainer uses (batching.sequence_logps).
            labels = torch.full_like(ids, IGNORE)
            for row, i in enumerate(idx):
                p, r = len(seqs[i][0]), len(seqs[i][1])
                labels[row, p:p + r] = ids[row, p:p + r]
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
            sums[idx] = sequence_logps(logits, labels[:, 1:])[0].double().cpu().numpy()
    return sums, counts
