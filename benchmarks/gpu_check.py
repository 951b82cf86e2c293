"""GPU check: the training paths that CPU tests cannot prove at speed, in a few minutes on one GPU.

    python benchmarks/gpu_check.py                 # on a GPU machine (torch, transformers, peft, pyarrow)
    python benchmarks/gpu_check.py --cpu --tiny    # smoke mode, runs anywhere in seconds (a test runs it)

Needs only torch, transformers, peft and pyarrow (no DuckDB/Polars/Prefect): it drives the trainer's own pieces
(dpo_train.prefix / losses / distributed) directly on random token ids, with a model built from a config
(random init, no download). It prints one line per check and a JSON summary (`--out` writes it to a file):

1. bf16 trains: bf16 compute (autocast) over fp32 master weights at lr 1e-6 moves > 95% of the weights and
   lowers the loss on a repeated batch; the old path (bf16 weights stepped directly) is shown beside it.
2. FSDP2 on one GPU: fully_shard + MixedPrecisionPolicy(bf16), optimizer built after sharding, gives the
   unsharded loss curve, moves the weights and gathers a full state dict.
3. Speed: tokens/s and model FLOPs utilisation (MFU) of DPO steps on a ~125M-parameter Llama, beside a plain
   forward+backward over the same tokens.
4. TRL: DPOTrainer on the same model config and batch shape, for the pairs/s ratio (skipped, saying so, when trl
   is not importable).
Exit code 0 when checks 1-3 pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpo_train import distributed as D  # noqa: E402
from dpo_train.batching import TokenizedPairs, TokenizeStats  # noqa: E402
from dpo_train.losses import Batch, LossParams, compute_loss  # noqa: E402
from dpo_train.prefix import collate_shared, shared_forward  # noqa: E402

# bf16 dense peak TFLOP/s by device name (MFU's denominator); --peak-tflops overrides
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "4090": 165.0}
SIZES = {  # (hidden, layers, heads, intermediate, vocab, prompt, answer, batch)
    "125m": (768, 12, 12, 3072, 32000, 128, 192, 8),
    "tiny": (32, 2, 2, 64, 256, 12, 16, 4),
}


def build_model(size: str, device: torch.device, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, inter, vocab, *_ = SIZES[size]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
                      tie_word_embeddings=False, attention_dropout=0.0, pad_token_id=0)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float().to(device)


def make_pairs(size: str, n: int, seed: int = 0) -> TokenizedPairs:
    """Random token ids: prompts and answers of +-25% around the size's lengths (ids >= 4; 0 pads)."""
    *_, vocab, plen, alen, _ = SIZES[size]
    rng = np.random.default_rng(seed)

    def seqs(mean: int) -> list[list[int]]:
        return [rng.integers(4, vocab, int(rng.integers(mean * 3 // 4, mean * 5 // 4 + 1))).tolist() for _ in range(n)]

    return TokenizedPairs(seqs(plen), seqs(alen), seqs(alen), np.ones(n), np.arange(n), TokenizeStats(rows=n, kept=n))


def _batch(data: TokenizedPairs, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in collate_shared(data, idx, 0).items()}


def dpo_steps(model: torch.nn.Module, data: TokenizedPairs, batches: list[np.ndarray], info: D.DistInfo, *,
              lr: float, dtype: str, ref: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> list[float]:
    """The trainer's step: shared-prompt forward under autocast, sigmoid DPO, clip, AdamW (built after wrap)."""
    model = D.wrap(model, info, dtype=dtype)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for step, idx in enumerate(batches):
        b = _batch(data, idx, info.device)
        with D.autocast(dtype, info):
            out = shared_forward(model, b)
        rc, rr = ref[step % len(ref)] if ref else (out["chosen_logps"].detach(), out["rejected_logps"].detach())
        loss, _, _ = compute_loss("sigmoid", Batch(out["chosen_logps"], out["rejected_logps"], rc, rr), LossParams())
        loss = loss.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    return losses


def reference_logps(model: torch.nn.Module, data: TokenizedPairs, batches: list[np.ndarray],
                    info: D.DistInfo, dtype: str) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    with torch.no_grad(), D.autocast(dtype, info):
        for i, idx in enumerate(batches):
            o = shared_forward(model, _batch(data, idx, info.device))
            out[i] = (o["chosen_logps"].float(), o["rejected_logps"].float())
    return out


def moved(before: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    after = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
    keys = [k for k in before if "embed_tokens" not in k]  # rows of tokens absent from the batch get no gradient
    return sum(int((after[k] != before[k]).sum()) for k in keys) / sum(before[k].numel() for k in keys)


def check_bf16(size: str, info: D.DistInfo, steps: int) -> dict:
    """lr 1e-6, one batch repeated: fp32 master weights move and the loss falls; bf16 weights mostly do not."""
    data = make_pairs(size, SIZES[size][-1])
    batches = [np.arange(len(data))] * steps
    model = build_model(size, info.device)
    before = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
    ref = reference_logps(model, data, batches[:1], info, "bfloat16")
    losses = dpo_steps(model, data, batches, info, lr=1e-6, dtype="bfloat16", ref=ref)
    frac = moved(before, model)
    old = build_model(size, info.device).to(torch.bfloat16)  # the old path: bf16 weights, AdamW steps them
    old_before = {k: v.detach().float().cpu().clone() for k, v in old.state_dict().items()}
    dpo_steps(old, data, batches, info, lr=1e-6, dtype="float32", ref=ref)
    old_frac = moved(old_before, old)
    ok = frac > 0.95 and losses[-1] < losses[0]
    return {"ok": ok, "moved": frac, "loss_first": losses[0], "loss_last": losses[-1], "old_bf16_moved": old_frac}


def check_fsdp(size: str, device: torch.device, steps: int) -> dict:
    """FSDP2 over a 1-process group against the same steps unsharded (bf16 compute both)."""
    data = make_pairs(size, SIZES[size][-1] * steps, seed=1)
    n = SIZES[size][-1]
    batches = [np.arange(i * n, (i + 1) * n) for i in range(steps)]
    plain_info = D.DistInfo(device=device)
    ref_model = build_model(size, device)
    ref = reference_logps(ref_model, data, batches, plain_info, "bfloat16")
    del ref_model
    base = dpo_steps(build_model(size, device), data, batches, plain_info, lr=1e-4, dtype="bfloat16", ref=ref)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    info = D.init("fsdp", device.type)
    model = build_model(size, device)
    before = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
    sharded = dpo_steps(model, data, batches, info, lr=1e-4, dtype="bfloat16", ref=ref)
    full, _ = D.full_state(model)
    shapes_ok = all(full[k].shape == before[k].shape for k in full)
    frac = sum(int((full[k].float() != before[k]).sum()) for k in full) / sum(v.numel() for v in full.values())
    diff = max(abs(a - b) for a, b in zip(base, sharded, strict=True))
    ok = shapes_ok and frac > 0.9 and diff < 2e-2 and all(np.isfinite(sharded))
    return {"ok": ok, "loss_unsharded": base, "loss_fsdp": sharded, "max_loss_diff": diff, "moved": frac,
            "full_state_shapes_ok": shapes_ok}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_speed(size: str, info: D.DistInfo, steps: int, peak_tflops: float | None) -> dict:
    """Tokens/s and MFU of DPO steps (bf16) vs a plain causal-LM forward+backward over the same tokens."""
    n = SIZES[size][-1]
    warm = 2
    data = make_pairs(size, n * (steps + warm), seed=2)
    batches = [np.arange(i * n, (i + 1) * n) for i in range(steps + warm)]
    model = build_model(size, info.device)
    params = sum(p.numel() for p in model.parameters())
    ref = reference_logps(model, data, batches, info, "bfloat16")
    tokens = sum(len(data.prompt[i]) + len(data.chosen[i]) + len(data.rejected[i]) for b in batches[warm:] for i in b)
    dpo_steps(model, data, batches[:warm], info, lr=1e-6, dtype="bfloat16", ref=ref)
    _sync(info.device)
    t0 = time.perf_counter()
    dpo_steps(model, data, batches[warm:], info, lr=1e-6, dtype="bfloat16", ref={i: ref[i + warm] for i in range(steps)})
    _sync(info.device)
    dpo_s = time.perf_counter() - t0
    # plain: each pair's shared row as one causal-LM row (same tokens), model(labels=...).loss.backward()
    plain = build_model(size, info.device)
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-6)
    t1 = None
    for i, idx in enumerate(batches):
        if i == warm:
            _sync(info.device)
            t1 = time.perf_counter()
        b = _batch(data, idx, info.device)
        with D.autocast("bfloat16", info):
            loss = plain(input_ids=b["input_ids"], labels=b["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(info.device)
    plain_s = time.perf_counter() - t1
    tok_s = tokens / dpo_s
    name = torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "cpu"
    peak = peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    mfu = 6 * params * tok_s / (peak * 1e12) if peak else None
    return {"ok": tok_s > 0, "device": name, "params_m": params / 1e6, "tokens_per_s": tok_s,
            "pairs_per_s": n * steps / dpo_s, "plain_tokens_per_s": tokens / plain_s,
            "plain_over_ours": dpo_s / plain_s, "mfu": mfu, "peak_tflops": peak}


def check_trl(size: str, device: torch.device, steps: int, workdir: Path) -> dict:
    """TRL DPOTrainer, bf16, same model config and batch shape; pairs/s over `steps` steps after warm-up."""
    try:
        import trl
        from datasets import Dataset
        from transformers import PreTrainedTokenizerFast, TrainerCallback
        from trl import DPOConfig, DPOTrainer
    except ImportError as exc:
        return {"ok": None, "skipped": f"trl not importable ({exc}); install it to get the ratio"}
    from tokenizers import Tokenizer, models

    *_, vocab, plen, alen, n = SIZES[size]
    # a word-level tokenizer over "t<id>" words: text round-trips to exactly the random ids
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(
        {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3, **{f"t{i}": i for i in range(4, vocab)}}, unk_token="<unk>")),
        pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")
    from tokenizers import pre_tokenizers

    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    data = make_pairs(size, n * (steps + 2), seed=2)
    text = lambda ids: " ".join(f"t{i}" for i in ids)  # noqa: E731
    ds = Dataset.from_dict({"prompt": [text(p) for p in data.prompt], "chosen": [text(c) for c in data.chosen],
                            "rejected": [text(r) for r in data.rejected]})
    times: list[float] = []

    class Tick(TrainerCallback):
        def on_step_end(self, *a, **k):
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    args = DPOConfig(output_dir=str(workdir / "trl"), per_device_train_batch_size=n, max_length=plen + 2 * alen,
                     learning_rate=1e-6, num_train_epochs=1, logging_steps=10_000, save_strategy="no", report_to=[],
                     use_cpu=device.type != "cuda", bf16=device.type == "cuda", gradient_checkpointing=False,
                     precompute_ref_log_probs=True, disable_tqdm=True, seed=0)
    try:
        trainer = DPOTrainer(model=build_model(size, device), args=args, train_dataset=ds, processing_class=tok,
                             callbacks=[Tick()])
        trainer.train()
    except Exception as exc:  # noqa: BLE001 - TRL's API moves between versions; report, do not fail the check
        return {"ok": None, "skipped": f"TRL {trl.__version__} failed: {type(exc).__name__}: {exc}"[:300]}
    if len(times) < 3:
        return {"ok": None, "skipped": "TRL ran fewer than 3 steps"}
    return {"ok": True, "version": trl.__version__, "pairs_per_s": n * (len(times) - 2) / (times[-1] - times[1])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run on CPU (smoke mode; no speed figures worth reading)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model instead of the ~125M Llama")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 20; 3 with --tiny)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak of the device, for MFU")
    ap.add_argument("--skip-trl", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON summary here too")
    args = ap.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu --tiny for the smoke mode", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.cpu else "cuda", 0)
    size = "tiny" if args.tiny else "125m"
    steps = args.steps or (3 if args.tiny else 20)
    info = D.DistInfo(device=device)
    import tempfile

    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    results["bf16_trains"] = check_bf16(size, info, steps=10)
    print(f"bf16 trains: {results['bf16_trains']}", flush=True)
    results["speed"] = check_speed(size, info, steps, args.peak_tflops)
    print(f"speed: {results['speed']}", flush=True)
    if args.skip_trl:
        results["trl"] = {"ok": None, "skipped": "--skip-trl"}
    else:
        with tempfile.TemporaryDirectory() as work:
            results["trl"] = check_trl(size, device, steps, Path(work))
        if results["trl"].get("pairs_per_s"):
            results["trl"]["ours_over_trl"] = results["speed"]["pairs_per_s"] / results["trl"]["pairs_per_s"]
    print(f"trl: {results['trl']}", flush=True)
    results["fsdp_one_device"] = check_fsdp(size, device, steps=4)  # last: it joins a process group
    print(f"fsdp on one device: {results['fsdp_one_device']}", flush=True)
    ok = all(results[k]["ok"] for k in ("bf16_trains", "fsdp_one_device", "speed"))
    summary = {"ok": ok, "size": size, "seconds": time.perf_counter() - t0, "torch": torch.__version__, **results}
    text = json.dumps(summary, indent=1, default=float)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
