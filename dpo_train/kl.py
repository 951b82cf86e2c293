"""KL(pi || pi_ref) on the policy's own samples, computed on the token ids exactly as they were sampled.

Two estimators of the sequence-level KL of the (max_new_tokens-capped) answer distributions, both unbiased
when the answers were drawn from pi at temperature 1 and top-p 1:

- Monte Carlo: log pi(y|x) - log pi_ref(y|x) summed over the sampled tokens, averaged over samples. Can be
  negative for one sample; its mean is >= 0 only in expectation.
- Exact per position (Rao-Blackwellised): at every position of the sampled path, the full next-token
  KL(pi(.|x,y<t) || pi_ref(.|x,y<t)) summed over the path. By the chain rule its expectation is the same
  sequence KL, every term is >= 0, and it has (much) lower variance because the draw of each token is
  averaged out analytically.

An answer cut at max_new_tokens contributes its sampled tokens only: no EOS is appended (an EOS that was never
sampled adds up to a nat per truncated sample, and re-encoding decoded text changes the ids for a third or more
of the samples of a small BPE model). Standard errors are over samples (std / sqrt(n)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa


@dataclass
class PathStats:
    """Per sample: summed log-probs of the sampled ids under both models, the exact per-position KL summed
    over the path, and the number of answer tokens."""

    logp_policy: np.ndarray
    logp_reference: np.ndarray
    exact_kl: np.ndarray
    num_tokens: np.ndarray


def mean_se(values: Any) -> tuple[float | None, float | None]:
    """Mean and standard error (std with ddof=1 over sqrt(n)) of the finite values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None, None
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None)


def _padded(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad: int, device: Any):
    import torch

    full = [list(p) + list(a) for p, a in zip(prompts, answers, strict=True)]
    width = max(len(f) for f in full)
    ids = torch.tensor([f + [pad] * (width - len(f)) for f in full], device=device)
    attn = torch.tensor([[1] * len(f) + [0] * (width - len(f)) for f in full], device=device)
    # mask[b, t] is True where logits[b, t] predict an answer token (t = prompt_len - 1 ... len - 2)
    mask = torch.zeros((len(full), width - 1), dtype=torch.bool, device=device)
    target = torch.zeros((len(full), width - 1), dtype=torch.long, device=device)
    for row, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        if a:
            mask[row, len(p) - 1:len(p) - 1 + len(a)] = True
            target[row, len(p) - 1:len(p) - 1 + len(a)] = torch.tensor(list(a), device=device)
    return ids, attn, mask, target


def path_statistics(policy: Any, reference: Any | None, prompt_ids: Sequence[Sequence[int]],
                    token_ids: Sequence[Sequence[int]], *, batch_size: int = 8, pad_id: int = 0,
                    device: Any = "cpu") -> PathStats:
    """PathStats of each (prompt ids, sampled answer ids) under two causal LMs (HF-style: `.logits`).

    `reference=None` means the reference is the policy itself (every statistic is then exactly 0)."""
    import torch

    n = len(token_ids)
    lp_pi, lp_ref, exact = np.zeros(n), np.zeros(n), np.zeros(n)
    ntok = np.array([len(a) for a in token_ids], dtype=np.int64)
    order = sorted(range(n), key=lambda i: -(len(prompt_ids[i]) + len(token_ids[i])))
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            ids, attn, mask, target = _padded([prompt_ids[i] for i in idx], [token_ids[i] for i in idx], pad_id,
                                              device)
            logq_pi = torch.log_softmax(policy(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), -1)
            logq_ref = logq_pi if reference is None else torch.log_softmax(
                reference(input_ids=ids, attention_mask=attn).logits[:, :-1].float(), -1)
            m = mask.to(logq_pi.dtype)
            tok_pi = logq_pi.gather(-1, target[..., None])[..., 0] * m
            tok_ref = logq_ref.gather(-1, target[..., None])[..., 0] * m
            step_kl = (logq_pi.exp() * (logq_pi - logq_ref)).sum(-1).clamp(min=0.0) * m
            lp_pi[idx] = tok_pi.sum(-1).double().cpu().numpy()
            lp_ref[idx] = tok_ref.sum(-1).double().cpu().numpy()
            exact[idx] = step_kl.sum(-1).double().cpu().numpy()
    return PathStats(lp_pi, lp_ref, exact, ntok)


def summarise(stats: PathStats, sampler_logprobs: Sequence[Sequence[float] | None] | None = None,
              ) -> dict[str, Any]:
    """The JSON record of a KL measurement: `kl` is the low-variance exact-per-position estimate with its
    `stderr`; `kl_mc`/`kl_mc_stderr` the Monte-Carlo one beside it."""
    n = int(stats.num_tokens.size)
    if n == 0:
        return {"n": 0, "kl": None, "stderr": None}
    mc = stats.logp_policy - stats.logp_reference
    kl, se = mean_se(stats.exact_kl)
    kl_mc, se_mc = mean_se(mc)
    tokens = max(int(stats.num_tokens.sum()), 1)
    out: dict[str, Any] = {
        "n": n, "kl": kl, "stderr": se, "estimator": "exact_per_position",
        "kl_mc": kl_mc, "kl_mc_stderr": se_mc,
        "kl_per_token": float(stats.exact_kl.sum() / tokens), "kl_mc_per_token": float(mc.sum() / tokens),
        "mean_tokens": float(stats.num_tokens.mean()),
    }
    if sampler_logprobs is not None:
        # The sampler's own log-probs against a fresh forward: a check that the ids and the model are the ones
        # that were sampled (only meaningful at temperature 1, top-p 1).
        diffs = [abs(sum(s) - lp) for s, lp in zip(sampler_logprobs, stats.logp_policy, strict=True) if s]
        if diffs:
            out["sampler_logp_max_abs_diff"] = float(max(diffs))
    return out


def require_token_ids(generations: pa.Table) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, sampled ids) of every row; an error naming the row when a sample lacks them."""
    for col in ("prompt_token_ids", "token_ids"):
        if col not in generations.column_names:
            raise ValueError(f"generations have no {col!r} column: KL needs the sampled token ids (regenerate "
                             "with this version; re-encoding the text would bias the estimate)")
    prompts = generations.column("prompt_token_ids").to_pylist()
    answers = generations.column("token_ids").to_pylist()
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        if not p or a is None:
            raise ValueError(f"generations row {i}: no sampled token ids (prompt_token_ids/token_ids are null)")
    return prompts, answers


def kl_to_reference(policy: str, reference: str, generations: pa.Table, *, batch_size: int = 8,
                    dtype: str = "auto", device: str | None = None) -> dict[str, Any]:
    """KL(policy || reference) on `generations` sampled from `policy` (GENERATION_SCHEMA, T=1, top-p 1)."""
    from pathlib import Path

    from dpo_train.generation.hf import load_causal_lm

    prompts, answers = require_token_ids(generations)
    pi, tok, dev = load_causal_lm(policy, dtype=dtype, device=device)
    same = Path(policy).resolve() == Path(reference).resolve()
    ref = None if same else load_causal_lm(reference, dtype=dtype, device=dev)[0]
    stats = path_statistics(pi, ref, prompts, answers, batch_size=batch_size, pad_id=int(tok.pad_token_id),
                            device=dev)
    lps = generations.column("token_logprobs").to_pylist() if "token_logprobs" in generations.column_names \
        else None
    return summarise(stats, lps)
