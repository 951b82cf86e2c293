"""The vLLM backend (GPU): `LLM` + `SamplingParams`, imported lazily so CPU machines never need vllm.

Prompts are tokenised here with the same template code as training and passed as token ids, so vLLM does
not re-apply a chat template or add a second BOS. Each prompt carries its own seed, which keeps its answers
independent of how prompts are sharded across processes or GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dpo_train.generation.config import GenerationConfig
from dpo_train.generation.core import Messages, Sample, derive_seed
from dpo_train.templates import encode_prompt
from storage.templates import Labels

INSTALL_HINT = "install the GPU extra on a CUDA machine: pip install -e '.[gpu]'"


class BackendUnavailable(RuntimeError):
    """The backend's package or hardware is missing on this machine."""


def require_vllm() -> Any:
    """The vllm module, or BackendUnavailable saying what is missing (package, or a CUDA GPU)."""
    try:
        import vllm
    except ImportError as exc:
        raise BackendUnavailable(f"generation backend 'vllm' needs the vllm package, which is not installed "
                                 f"({exc}); {INSTALL_HINT}, or use backend='transformers'") from exc
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("generation backend 'vllm' needs a CUDA GPU and none is visible "
                                 "(torch.cuda.is_available() is False); use backend='transformers' on CPU")
    return vllm


def llm_kwargs(cfg: GenerationConfig) -> dict[str, Any]:
    """Keyword arguments for vllm.LLM."""
    kw: dict[str, Any] = {
        "model": cfg.model,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "trust_remote_code": cfg.trust_remote_code,
    }
    kw.update(cfg.extra)
    return kw


def sampling_params_kwargs(cfg: GenerationConfig, seed: int) -> dict[str, Any]:
    """Keyword arguments for vllm.SamplingParams of one prompt (`seed` is that prompt's derived seed)."""
    return {
        "n": cfg.n,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_tokens": cfg.max_new_tokens,
        "seed": seed,
        # logprobs=0: the log-prob of each sampled token (and no alternatives), recorded with the sample.
        "logprobs": 0,
        **({"stop": list(cfg.stop)} if cfg.stop else {}),
    }


def stop_reason(comp: Any) -> str:
    """eos | stop_string | length from a vLLM CompletionOutput (finish_reason + stop_reason)."""
    if comp.finish_reason != "stop":  # "length", or "abort"/None: the answer was cut, no EOS was sampled
        return "length"
    # vLLM: stop_reason is None for EOS, the string for a stop string, an int for a stop token id.
    return "stop_string" if isinstance(getattr(comp, "stop_reason", None), str) else "eos"


def sampled_logprobs(comp: Any) -> tuple[float, ...]:
    """The log-prob of each sampled token from `comp.logprobs` (one {token_id: Logprob} per position)."""
    if not getattr(comp, "logprobs", None):
        return ()
    out = []
    for tid, pos in zip(comp.token_ids, comp.logprobs, strict=True):
        lp = pos[tid]
        out.append(float(getattr(lp, "logprob", lp)))
    return tuple(out)


def outputs_to_samples(outputs: Sequence[Any], seeds: Sequence[int], n: int) -> list[Sample]:
    """Samples from vLLM RequestOutputs (in prompt order): `.prompt_token_ids`, and `.outputs[k]` with text,
    token_ids, logprobs, finish_reason and stop_reason; the ids are kept exactly as sampled."""
    if len(outputs) != len(seeds):
        raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(seeds)} prompts")
    samples: list[Sample] = []
    for row, (req, seed) in enumerate(zip(outputs, seeds, strict=True)):
        if len(req.outputs) != n:
            raise RuntimeError(f"vLLM returned {len(req.outputs)} answers for prompt {row}, expected {n}")
        for k, comp in enumerate(req.outputs):
            reason = stop_reason(comp)
            samples.append(Sample(row, k, comp.text, "length" if reason == "length" else "stop",
                                  len(comp.token_ids), seed, tuple(int(t) for t in comp.token_ids),
                                  sampled_logprobs(comp), reason,
                                  tuple(int(t) for t in getattr(req, "prompt_token_ids", None) or ())))
    return samples


def generate_vllm(msgs: list[Messages], ids: list[str], cfg: GenerationConfig,
                  labels: list[Labels | None]) -> list[Sample]:
    vllm = require_vllm()
    llm = vllm.LLM(**llm_kwargs(cfg))
    tok = llm.get_tokenizer()
    seeds = [derive_seed(cfg.seed, pid) for pid in ids]
    prompts = [{"prompt_token_ids": encode_prompt(tok, m, lab)} for m, lab in zip(msgs, labels, strict=True)]
    params = [vllm.SamplingParams(**sampling_params_kwargs(cfg, s)) for s in seeds]
    outputs = llm.generate(prompts, params, use_tqdm=True)
    return outputs_to_samples(outputs, seeds, cfg.n)
