"""A round on an HH prompt pool, policy without a chat template: it samples, judges and evaluates the "Human:"
prompt text that `dpo train` and `dpo export` use for those rows, not the default "User:" one."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from dpo_train.tiny import make_tiny_model
from pipelines.iterate_config import parse_iterate_config
from pipelines.rounds import iterate
from storage.workspace import Workspace
from tests.conftest import without_chat_template

CORPUS = ["Human: Is it possible to download a car? Assistant: I am not sure what you mean.",
          "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>-+=*/\\&%$#@^_|~`"] * 4


def _plain_tiny(root, seed: int) -> str:
    tiny = make_tiny_model(root / f"tiny{seed}", seed=seed, corpus=CORPUS, vocab_size=384, n_layers=1, hidden=32,
                           heads=2, max_positions=256)
    return str(without_chat_template(tiny, root / f"plain{seed}"))


def test_round_samples_judges_and_evaluates_hh_prompts_as_trained(tmp_path, short_hh):
    from transformers import AutoTokenizer

    from dpo_train.generation.hf import load_causal_lm
    from dpo_train.kl import path_statistics
    from dpo_train.templates import encode_prompt, encode_response
    from pipelines import steps
    from storage.templates import snapshot_turn_labels

    ws = Workspace(tmp_path / "ws")
    info = steps.ingest(ws, [str(short_hh)], "hh")
    labels = snapshot_turn_labels(ws, info)
    assert list(labels.values()) == [{"user": "Human", "assistant": "Assistant"}]  # one source: the HH file
    human = next(iter(labels.values()))
    policy, other = _plain_tiny(tmp_path, 0), _plain_tiny(tmp_path, 1)
    cfg = parse_iterate_config({
        "experiment": "hh-plain", "policy": policy, "workspace": str(ws.root), "rounds": 1,
        "prompts": {"snapshot": "hh", "per_round": 3, "eval_prompts": 2},
        "generation": {"n": 3, "max_new_tokens": 6},
        # a model-backed judge: it must score the prompt as the policy saw it
        "judge": {"type": "implicit", "policy": policy, "reference": other, "beta": 1.0},
        "train": {"max_steps": 1, "per_device_batch_size": 2, "max_length": 256, "max_prompt_length": 200},
        "eval": {"samples": 1}})
    iterate(cfg, ws)

    tok = AutoTokenizer.from_pretrained(policy)
    rounds = {(r["round"], r["step"]): r["details"] for r in ws.get_rounds("hh-plain")}
    sampled = pq.read_table(rounds[(1, "generate")]["artefact"])
    for path in (rounds[(1, "generate")]["artefact"], rounds[(0, "evaluate")]["generations"],
                 rounds[(1, "evaluate")]["generations"]):
        for row in pq.read_table(path).to_pylist():
            want = encode_prompt(tok, row["prompt"], human)
            assert tok.decode(want).startswith("Human: ") and row["prompt_token_ids"] == want
            assert labels[row["source"]] == human  # the generations record the prompt's source
    # the judge scored the answers given that same prompt (re-encoded answer + EOS, as the implicit judge does)
    scored = pq.read_table(rounds[(1, "judge")]["artefact"])
    pi, ref = load_causal_lm(policy)[0], load_causal_lm(other)[0]
    stats = path_statistics(pi, ref, sampled.column("prompt_token_ids").to_pylist(),
                            [encode_response(tok, r) for r in sampled.column("response").to_pylist()],
                            pad_id=int(tok.pad_token_id))
    np.testing.assert_allclose(scored.column("score").to_numpy(), stats.logp_policy - stats.logp_reference,
                               atol=1e-3)
