"""A tiny causal LM and tokenizer built locally, for tests, benchmarks and the demo (no hub access).

The model is a randomly initialised Llama (no dropout anywhere, so forwards are deterministic) and the
tokenizer a byte-level BPE trained with `tokenizers` on local text. Role markers are special tokens so
that a rendered prompt always tokenises to a prefix of prompt + answer, which the batching checks rely on.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

BOS, EOS, PAD, UNK = "<|bos|>", "<|eos|>", "<|pad|>", "<|unk|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]

# One turn per message, closed by eos; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_FINGERPRINT_FILE = "tiny_fingerprint.json"
_HH_FILE = Path("hh-rlhf") / "harmless-base-test.jsonl.gz"
_MAX_CORPUS_DOCS = 4000

_BUILTIN_CORPUS = [
    "Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, knead, let it rise, then bake.",
    "Human: What is the capital of France? Assistant: The capital of France is Paris.",
    "Human: Can you help me write a poem? Assistant: Of course. Roses are red, violets are blue.",
    "Human: Tell me a joke. Assistant: Why did the chicken cross the road? To get to the other side.",
    "Human: How can I learn Python? Assistant: Start with the official tutorial and write small programs.",
    "Human: Is it safe to eat raw eggs? Assistant: Raw eggs can carry salmonella, so cooking them is safer.",
    "I am sorry, I cannot help with that request. Please ask me something else.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>-+=*/\\&%$#@^_|~`",
]


def shared_data_dir() -> Path:
    """$DPO_SHARED_DATA, else ../shared/data next to the repository root."""
    env = os.environ.get("DPO_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def default_corpus(max_docs: int = _MAX_CORPUS_DOCS) -> list[str]:
    """Chosen and rejected texts of the hh-rlhf test split, or a small built-in corpus when it is missing."""
    path = shared_data_dir() / _HH_FILE
    if not path.exists():
        return list(_BUILTIN_CORPUS)
    docs: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            docs.extend(str(row[k]) for k in ("chosen", "rejected") if row.get(k))
            if len(docs) >= max_docs:
                break
    return docs + list(_BUILTIN_CORPUS)


def _fingerprint(docs: list[str], params: dict) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for d in docs:
        h.update(hashlib.sha256(d.encode("utf-8", "surrogatepass")).digest())
    return h.hexdigest()


def train_tokenizer(docs: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer wrapped for transformers, with bos/eos/pad and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    hf.chat_template = CHAT_TEMPLATE
    # BOS comes from the chat template, never added twice by the tokenizer itself.
    hf.add_bos_token = False
    hf.add_eos_token = False
    hf.model_max_length = 1 << 30
    return hf


def _rotary_config(cls_name: str):
    def make(hidden: int, layers: int, heads: int, inter: int, positions: int) -> dict:
        return {"cls": cls_name, "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
                "num_attention_heads": heads, "num_key_value_heads": heads, "max_position_embeddings": positions,
                "attention_dropout": 0.0}
    return make


# Model families the tests cover, one per position-embedding type: rotary (Llama, Qwen2), learned absolute
# (GPT-2: a wpe table of n_positions rows), ALiBi (Bloom: no position table, biases from the 2D mask).
FAMILIES = {
    "llama": _rotary_config("LlamaConfig"),
    "qwen2": _rotary_config("Qwen2Config"),
    "gpt2": lambda hidden, layers, heads, inter, positions: {
        "cls": "GPT2Config", "n_embd": hidden, "n_layer": layers, "n_head": heads, "n_inner": inter,
        "n_positions": positions, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "bloom": lambda hidden, layers, heads, inter, positions: {
        "cls": "BloomConfig", "hidden_size": hidden, "n_layer": layers, "n_head": heads,
        "hidden_dropout": 0.0, "attention_dropout": 0.0},
}


def build_tiny(tokenizer, *, seed: int, n_layers: int, hidden: int, heads: int, max_positions: int,
               intermediate: int | None = None, family: str = "llama"):
    """A randomly initialised causal LM of `family` (see FAMILIES) sized by the arguments (deterministic)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    kw = FAMILIES[family](hidden, n_layers, heads, intermediate or 4 * hidden, max_positions)
    cfg = getattr(transformers, kw.pop("cls"))(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, **kw)
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    return model.float().eval()


def make_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 4096,
    n_layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    max_positions: int = 512,
    family: str = "llama",
) -> Path:
    """Build (or reuse) a tiny HF-format causal LM + tokenizer in `out_dir` and return its path.

    Deterministic for its arguments and corpus; a directory holding a matching fingerprint is reused as is.
    """
    out = Path(out_dir)
    docs = [str(d) for d in corpus] if corpus is not None else default_corpus()
    params = {"seed": seed, "vocab_size": vocab_size, "n_layers": n_layers, "hidden": hidden, "heads": heads,
              "max_positions": max_positions, "template": CHAT_TEMPLATE, "version": 1}
    if family != "llama":  # llama directories made before families existed stay valid
        params["family"] = family
    fp = _fingerprint(docs, params)
    fp_file = out / _FINGERPRINT_FILE
    if fp_file.exists() and json.loads(fp_file.read_text()).get("fingerprint") == fp:
        return out

    tokenizer = train_tokenizer(docs, vocab_size)
    model = build_tiny(tokenizer, seed=seed, n_layers=n_layers, hidden=hidden, heads=heads,
                       max_positions=max_positions, family=family)
    # Written beside the target then renamed, so a crash never leaves a half model that looks cached.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _FINGERPRINT_FILE).write_text(json.dumps({"fingerprint": fp, "params": params}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
