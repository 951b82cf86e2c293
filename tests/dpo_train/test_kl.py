"""The KL estimators on a toy model whose KL is known in closed form, and on the tiny HF model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dpo_train.generation import GenerationConfig, generate
from dpo_train.generation.hf import generate_batch
from dpo_train.kl import kl_to_reference, path_statistics, summarise

EOS = 1


class Unigram(torch.nn.Module):
    """Next-token logits that ignore the context: every answer token is an i.i.d. draw until EOS or the cap."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, input_ids, attention_mask=None, **_):
        b, t = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(b, t, -1).clone(), past_key_values=None)


def closed_form_kl(p: torch.Tensor, q: torch.Tensor, cap: int) -> float:
    """Sequence KL of two capped unigram samplers: the chain rule gives KL(p||q) per position reached, and
    position t is reached when none of the t-1 tokens before it was EOS."""
    step = float((p * (p.log() - q.log())).sum())
    return step * sum((1 - float(p[EOS])) ** t for t in range(cap))


def test_estimators_match_closed_form_kl_of_a_unigram_model():
    a, b = [0.0, -0.5, 1.0, 0.3, -1.0], [0.5, 0.0, -0.5, 0.3, 0.2]
    pi, ref = Unigram(a), Unigram(b)
    cap, n = 8, 3000
    cfg = GenerationConfig(model="toy", max_new_tokens=cap, temperature=1.0, top_p=1.0)
    tok = SimpleNamespace(pad_token_id=0)
    prompts = [[2, 3]] * n
    outs = generate_batch(pi, tok, prompts, list(range(n)), cfg, "cpu", {EOS})
    ids = [o[0] for o in outs]
    assert any(o[2] == "length" for o in outs) and any(o[2] == "eos" for o in outs)
    stats = path_statistics(pi, ref, prompts, ids, batch_size=512)
    rec = summarise(stats, [o[1] for o in outs])
    truth = closed_form_kl(torch.softmax(torch.tensor(a), -1), torch.softmax(torch.tensor(b), -1), cap)
    assert abs(rec["kl"] - truth) < 3 * rec["stderr"]
    assert abs(rec["kl_mc"] - truth) < 3 * rec["kl_mc_stderr"]
    assert rec["stderr"] < rec["kl_mc_stderr"] / 2  # the exact per-position estimator is the low-variance one
    assert rec["sampler_logp_max_abs_diff"] < 1e-4  # the sampler's log-probs are log pi of the sampled ids


def test_appending_an_unsampled_eos_biases_the_estimate():
    """What the text path did: EOS after an answer cut by length. The exact-id estimate stays on the truth."""
    a, b = [0.0, -2.0, 1.0, 0.3, -1.0], [0.5, 0.5, -0.5, 0.3, 0.2]
    pi, ref = Unigram(a), Unigram(b)
    cfg = GenerationConfig(model="toy", max_new_tokens=4)
    n = 2000
    outs = generate_batch(pi, SimpleNamespace(pad_token_id=0), [[2]] * n, list(range(n)), cfg, "cpu", {EOS})
    ids = [o[0] for o in outs]
    with_eos = [t if t[-1:] == [EOS] else t + [EOS] for t in ids]
    truth = closed_form_kl(torch.softmax(torch.tensor(a), -1), torch.softmax(torch.tensor(b), -1), 4)
    exact = summarise(path_statistics(pi, ref, [[2]] * n, ids, batch_size=500))
    biased = summarise(path_statistics(pi, ref, [[2]] * n, with_eos, batch_size=500))
    assert abs(exact["kl_mc"] - truth) < 3 * exact["kl_mc_stderr"]
    assert abs(biased["kl_mc"] - truth) > 5 * biased["kl_mc_stderr"]


def test_kl_on_tiny_models_is_zero_to_itself_and_nonnegative(tiny_model_dir, tiny_ref_dir, chat_prompts):
    g = generate(chat_prompts, GenerationConfig(model=str(tiny_model_dir), n=3, max_new_tokens=12, seed=5))
    same = kl_to_reference(str(tiny_model_dir), str(tiny_model_dir), g)
    assert same["kl"] == 0.0 and same["kl_mc"] == 0.0 and same["n"] == 15
    diff = kl_to_reference(str(tiny_model_dir), str(tiny_ref_dir), g)
    assert diff["kl"] > 0 and diff["stderr"] > 0
    assert diff["sampler_logp_max_abs_diff"] < 1e-3  # a fresh forward on the stored ids gives the sampler's log-probs
    assert math.isclose(diff["mean_tokens"], float(np.mean(g.column("num_tokens").to_pylist())))


def test_kl_refuses_generations_without_token_ids(tiny_model_dir, chat_prompts):
    g = generate(chat_prompts[:1], GenerationConfig(model=str(tiny_model_dir), n=1, max_new_tokens=3))
    with pytest.raises(ValueError, match="token_ids"):
        kl_to_reference(str(tiny_model_dir), str(tiny_model_dir), g.drop(["token_ids"]))


def test_training_metrics_name_the_offpolicy_logratio_and_probe_the_onpolicy_kl(workspace, tiny_model_dir):
    from train_pairs import pair_table

    from dpo_train.metrics import KLProbe
    from dpo_train.trainer import TrainConfig, train

    workspace.publish("toy", pair_table(8))
    seen: list[dict] = []
    cfg = TrainConfig(snapshot="toy@1", model=str(tiny_model_dir), lr=5e-3, per_device_batch_size=4, max_length=96,
                      max_prompt_length=48, max_steps=4, epochs=2, save_steps=0, report=False)
    probe = KLProbe(str(tiny_model_dir), every=2, prompts=4, samples=2, max_new_tokens=8)
    train(cfg, workspace, on_step=lambda step, m: seen.append(dict(m)), kl_probe=probe)
    assert all("logratio/offpolicy" in m and "kl_estimate" not in m for m in seen)
    probed = [m for m in seen if "kl/onpolicy" in m]
    assert len(probed) == 2  # after updates 2 and 4
    assert all(m["kl/onpolicy"] >= 0 and m["kl/onpolicy_stderr"] >= 0 for m in probed)
    assert probed[-1]["kl/onpolicy"] > 0  # the policy moved away from its reference
