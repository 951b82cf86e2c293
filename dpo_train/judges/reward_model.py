"""Judge with a local sequence-classification reward model (safetensors, no remote code by default)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from dpo_train.judges.base import Judge, check_rows, fingerprint_model_dir
from dpo_train.templates import has_chat_template, render_plain
from storage.templates import Labels


def render_conversation(tokenizer: Any, prompt: list[dict], response: str, labels: Labels | None = None) -> str:
    """Prompt and answer as one string, in the reward model's own chat format when it has one, else the plain
    template with the prompt's source's turn `labels` (the text `dpo export` writes)."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in prompt]
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False)
    return f"{render_plain(msgs, labels)} {response}"


@dataclass
class RewardModelJudge(Judge):
    """Score = the model's single logit (num_labels=1), else the log-prob of its last class ("good")."""

    path: str
    batch_size: int = 8
    max_length: int = 1024
    dtype: str = "auto"
    device: str | None = None
    trust_remote_code: bool = False
    kind: ClassVar[str] = "reward_model"
    _loaded: Any = field(default=None, init=False, repr=False)
    _version: str | None = field(default=None, init=False, repr=False)

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = fingerprint_model_dir(self.path)
        return self._version

    def _load(self) -> tuple[Any, Any, str]:
        if self._loaded is None:
            from transformers import AutoModelForSequenceClassification

            from dpo_train.generation.hf import load_tokenizer, resolve_device, resolve_dtype

            dev = resolve_device(self.device)
            model = AutoModelForSequenceClassification.from_pretrained(
                self.path, dtype=resolve_dtype(self.dtype, dev), trust_remote_code=self.trust_remote_code,
                use_safetensors=True)
            tok = load_tokenizer(self.path, trust_remote_code=self.trust_remote_code)
            # The model finds each row's last real token through pad_token_id; keep the two in agreement.
            model.config.pad_token_id = tok.pad_token_id
            tok.padding_side = "right"
            tok.truncation_side = "left"  # keep the answer when a long conversation must be cut
            self._loaded = (model.to(dev).eval(), tok, dev)
        return self._loaded

    def score(self, table: pa.Table) -> np.ndarray:
        import torch

        check_rows(table)
        model, tok, dev = self._load()
        texts = [render_conversation(tok, p, r, lab) for p, r, lab in zip(
            table.column("prompt").to_pylist(), table.column("response").to_pylist(), self.turn_labels(table),
            strict=True)]
        out = np.zeros(len(texts), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                enc = tok(texts[start:start + self.batch_size], padding=True, truncation=True,
                          max_length=self.max_length, add_special_tokens=not has_chat_template(tok),
                          return_tensors="pt").to(dev)
                logits = model(**enc).logits.float()
                vals = logits[:, 0] if logits.shape[-1] == 1 else torch.log_softmax(logits, -1)[:, -1]
                out[start:start + len(vals)] = vals.cpu().numpy()
        return out
