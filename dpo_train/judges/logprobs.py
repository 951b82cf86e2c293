"""Summed log-probs of responses given their templated prompts (implicit reward, KL estimates)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dpo_train.templates import encode_prompt, encode_response


def response_logprobs(model: Any, tokenizer: Any, prompts: Sequence[Sequence[dict]], responses: Sequence[str],
                      *, batch_size: int = 8, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(sum of log pi(y_t | x, y_<t) over response tokens incl. EOS, number of response tokens) per row."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs = [(encode_prompt(tokenizer, p), encode_response(tokenizer, r)) for p, r in zip(prompts, responses,
                                                                                          strict=True)]
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
            mask = torch.zeros_like(ids, dtype=torch.bool)
            for row, i in enumerate(idx):
                p, r = len(seqs[i][0]), len(seqs[i][1])
                mask[row, p:p + r] = True
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
            logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            tok_sums = (logp * mask[:, 1:]).sum(-1).double().cpu().numpy()
            sums[idx] = tok_sums
    return sums, counts
