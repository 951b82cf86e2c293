"""Token log-probs of chosen targets from logits, with a hand-written backward that touches the logits once.

`log_softmax + gather` through autograd materialises several vocabulary-sized temporaries in the backward
(exp(x - lse), its product with the incoming gradient, a zero tensor for the gather's scatter, their sum).
On a small model that elementwise traffic is a visible share of a step. Here the forward keeps only the
normaliser, and the backward writes the gradient `onehot * g - softmax * sum(g)` straight into one output
buffer, a cache-sized chunk of rows at a time. Same maths, same values; several targets per position are
allowed (the shared-prompt layout scores both answers' first token from the last prompt position).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_CHUNK_ROWS = 64  # 64 rows x 8k vocab x 4 bytes = 2 MiB: one chunk's exp stays in cache


class _TargetLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
        lse = torch.logsumexp(logits, -1, keepdim=True)
        out = (torch.gather(logits, -1, targets) - lse) * valid
        ctx.save_for_backward(logits, lse, targets, valid)
        return out

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor, None, None]:
        logits, lse, targets, valid = ctx.saved_tensors
        g = grads[0] * valid
        total = g.sum(-1, keepdim=True)
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], _CHUNK_ROWS):
            e = s + _CHUNK_ROWS
            chunk = grad[s:e]
            torch.sub(logits[s:e], lse[s:e], out=chunk)
            chunk.exp_().mul_(-total[s:e])
            chunk.scatter_add_(-1, targets[s:e], g[s:e])
        return grad, None, None


def target_logps(logits: Tensor, labels: Tensor, ignore_index: int) -> Tensor:
    """log softmax(logits)[..., labels] for labels of shape (*logits.shape[:-1], k); 0 where ignored."""
    valid = labels != ignore_index
    if logits.dtype in (torch.float16, torch.bfloat16):  # the normaliser over the vocabulary needs fp32
        logits = logits.float()
    flat = logits.reshape(-1, logits.shape[-1])
    k = labels.shape[-1]
    targets = labels.masked_fill(~valid, 0).reshape(-1, k)
    out = _TargetLogProbs.apply(flat, targets, valid.reshape(-1, k).to(flat.dtype))
    return out.reshape(labels.shape)
