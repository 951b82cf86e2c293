"""The transformers backend: batched sampling with left padding and a KV cache, on CPU or GPU.

`model.generate` draws from one global generator per batch, so a sample would depend on which other
prompts shared its batch. This loop instead gives every (prompt, sample) its own torch.Generator, making
answers identical however the work is batched or sharded.
"""

from __future__ import annotations

from typing import Any

from dpo_train.generation.config import GenerationConfig
from dpo_train.generation.core import Messages, Sample, derive_seed
from dpo_train.templates import encode_prompt, eos_token_ids
from storage.templates import Labels


def resolve_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        # Half precision on CPU is slow and lossy; "auto" keeps the checkpoint's dtype only on GPU.
        return torch.float32 if device == "cpu" else "auto"
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def load_tokenizer(path: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        # Padding positions are masked out, so any real id works; EOS is the conventional stand-in.
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, *, dtype: str = "auto", device: str | None = None,
                   trust_remote_code: bool = False) -> tuple[Any, Any, str]:
    """(model in eval mode, tokenizer, device) from a local HF directory; safetensors only."""
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype, dev), trust_remote_code=trust_remote_code, use_safetensors=True
    )
    model.to(dev).eval()
    return model, load_tokenizer(path, trust_remote_code=trust_remote_code), dev


def _filter_top_p(probs: Any, top_p: float) -> Any:
    import torch

    sorted_p, order = torch.sort(probs, dim=-1, descending=True)
    # Keep the smallest prefix whose mass reaches top_p (the token that crosses the threshold included).
    drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    out = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return out / out.sum(-1, keepdim=True)


def sample_with_logprobs(logits: Any, temperature: float, top_p: float, generators: list[Any]) -> tuple[Any, Any]:
    """Next token per row and its log-prob under the distribution it was drawn from.

    Greedy at temperature 0 (log-prob under the model's own softmax), else temperature + nucleus sampling with
    each row's generator (log-prob under the tempered, top-p renormalised distribution). At T=1, top_p=1 this
    is log pi(token | context), which the Monte-Carlo KL needs."""
    import torch

    if temperature == 0:
        nxt = logits.argmax(-1)
        return nxt, torch.log_softmax(logits.float(), -1).gather(-1, nxt[:, None])[:, 0]
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        probs = _filter_top_p(probs, top_p)
    nxt = torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)])
    return nxt, probs.gather(-1, nxt[:, None])[:, 0].log()


def sample_next(logits: Any, temperature: float, top_p: float, generators: list[Any]) -> Any:
    """Next token per row: greedy at temperature 0, else temperature + nucleus sampling per-row generator."""
    return sample_with_logprobs(logits, temperature, top_p, generators)[0]


# (sampled ids, their log-probs, stop reason) of one sequence
Generated = tuple[list[int], list[float], str]


def _hit_stop_string(tok: Any, toks: list[int], stop: tuple[str, ...]) -> bool:
    text = tok.decode(toks, skip_special_tokens=True)
    return any(s in text for s in stop)


def generate_batch(model: Any, tok: Any, prompt_ids: list[list[int]], seeds: list[int],
                    cfg: GenerationConfig, device: str, eos: set[int]) -> list[Generated]:
    import torch

    pad = int(tok.pad_token_id)
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids], device=device)
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
    # Left padding shifts real tokens right; positions must count real tokens only.
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    eos_t = torch.tensor(sorted(eos), device=device)
    out_tokens: list[list[int]] = [[] for _ in prompt_ids]
    out_lps: list[list[float]] = [[] for _ in prompt_ids]
    reasons = ["length"] * len(prompt_ids)
    finished = torch.zeros(len(prompt_ids), dtype=torch.bool, device=device)
    out = model(input_ids=input_ids, attention_mask=attn, position_ids=pos, use_cache=True)
    for _ in range(cfg.max_new_tokens):
        nxt, lps = sample_with_logprobs(out.logits[:, -1, :], cfg.temperature, cfg.top_p, gens)
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        hit_eos = torch.isin(nxt, eos_t) & ~finished
        for i in torch.nonzero(~finished).flatten().tolist():
            out_tokens[i].append(int(nxt[i]))
            out_lps[i].append(float(lps[i]))
            if bool(hit_eos[i]):
                reasons[i] = "eos"
            elif cfg.stop and _hit_stop_string(tok, out_tokens[i], cfg.stop):
                reasons[i] = "stop_string"
        finished |= torch.tensor([r != "length" for r in reasons], device=device)
        if bool(finished.all()):
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=-1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=nxt[:, None], attention_mask=attn, position_ids=pos,
                    past_key_values=out.past_key_values, use_cache=True)
    return list(zip(out_tokens, out_lps, reasons, strict=True))


def response_text(tok: Any, token_ids: list[int], stop: tuple[str, ...] = ()) -> str:
    """The answer's text for judges and people: special tokens dropped, cut before a stop string (as vLLM
    reports it). Training never re-encodes this text; it uses the sampled ids."""
    text = tok.decode(token_ids, skip_special_tokens=True)
    cuts = [text.find(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


def generate_transformers(msgs: list[Messages], ids: list[str], cfg: GenerationConfig,
                          labels: list[Labels | None]) -> list[Sample]:
    import torch

    model, tok, device = load_causal_lm(cfg.model, dtype=cfg.dtype, device=cfg.device,
                                        trust_remote_code=cfg.trust_remote_code)
    eos = eos_token_ids(tok, model)
    if not eos:
        raise ValueError(f"{cfg.model}: tokenizer and model define no EOS token; answers could never stop")
    encoded = [encode_prompt(tok, m, lab) for m, lab in zip(msgs, labels, strict=True)]
    jobs = [(r, k) for r in range(len(msgs)) for k in range(cfg.n)]
    # Longest prompts first so each batch pads little; the order cannot change answers (per-job seeds).
    jobs.sort(key=lambda j: -len(encoded[j[0]]))
    samples: list[Sample] = []
    with torch.inference_mode():
        for start in range(0, len(jobs), cfg.batch_size):
            batch = jobs[start:start + cfg.batch_size]
            seeds = [derive_seed(cfg.seed, ids[r], k) for r, k in batch]
            outs = generate_batch(model, tok, [encoded[r] for r, _ in batch], seeds, cfg, device, eos)
            for (r, k), seed, (toks, lps, reason) in zip(batch, seeds, outs, strict=True):
                samples.append(Sample(r, k, response_text(tok, toks, cfg.stop),
                                      "length" if reason == "length" else "stop", len(toks), seed,
                                      tuple(toks), tuple(lps), reason, tuple(encoded[r])))
    return samples
