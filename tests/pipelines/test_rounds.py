"""Iterative DPO rounds on the tiny local model: two linked rounds, config errors, resume after a failure/kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.config import ConfigError
from pipelines.iterate_config import parse_iterate_config
from pipelines.rounds import RoundFailure, iterate
from storage.workspace import Workspace

ALPACA = "alpaca_eval/annotations/alpaca-7b__alpaca_eval_gpt4.json.gz"


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory) -> str:
    from dpo_train.tiny import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "policy", seed=0))


@pytest.fixture
def prompt_ws(tmp_path, shared_data) -> Workspace:
    from pipelines import steps

    ws = Workspace(tmp_path / "ws")
    steps.ingest(ws, [str(shared_data / ALPACA)], "alpaca")
    return ws


def _cfg(policy: str, ws: Workspace, **over):
    raw = {"experiment": "exp", "policy": policy, "workspace": str(ws.root),
           "prompts": {"snapshot": "alpaca", "per_round": 6, "eval_prompts": 3},
           "generation": {"n": 3, "max_new_tokens": 24},
           "judge": {"type": "python", "function": "dpo_train.judges.functions:answer_length"},
           "train": {"max_steps": 2, "per_device_batch_size": 4, "lr": 1e-4}, "eval": {"samples": 2}}
    raw.update(over)
    return parse_iterate_config(raw)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="bogus"):
        parse_iterate_config({"policy": "p", "prompts": {"snapshot": "a"}, "bogus": 1})
    with pytest.raises(ConfigError, match="set by the round flow"):
        parse_iterate_config({"policy": "p", "prompts": {"snapshot": "a"}, "train": {"model": "x"}})
    with pytest.raises(ConfigError, match="GenerationConfig"):
        parse_iterate_config({"policy": "p", "prompts": {"snapshot": "a"}, "generation": {"nn": 3}})
    with pytest.raises(ConfigError, match="bradley_terry"):
        parse_iterate_config({"policy": "p", "prompts": {"snapshot": "a"}, "judge": {"type": "bradley_terry"}})


@pytest.mark.slow
def test_two_linked_rounds(tiny_policy, prompt_ws):
    cfg = _cfg(tiny_policy, prompt_ws)
    history = iterate(cfg, prompt_ws)
    assert [h["round"] for h in history] == [0, 1, 2]
    assert "kl" in history[1] and "win_rate" in history[2]
    rows = prompt_ws.get_rounds("exp")
    steps = {(r["round"], r["step"]): r for r in rows}
    for k in (1, 2):
        for step in ("prompts", "generate", "judge", "pairs", "gate", "train", "evaluate"):
            assert steps[(k, step)]["status"] == "done", (k, step)
    # lineage: round 2 trains from round 1's checkpoint, against the fixed initial reference
    r1, r2 = steps[(1, "train")]["details"], steps[(2, "train")]["details"]
    assert r1["policy_in"] == tiny_policy and r2["policy_in"] == r1["checkpoint"]
    assert r1["reference"] == r2["reference"] == tiny_policy
    clean = prompt_ws.resolve(steps[(2, "gate")]["artefact"])
    assert clean.parents == [steps[(2, "pairs")]["artefact"]]
    assert prompt_ws.resolve(steps[(2, "pairs")]["artefact"]).parents == ["alpaca@1"]
    # each round trains on its own, fresh prompts
    import pyarrow.parquet as pq

    p1 = set(pq.read_table(steps[(1, "prompts")]["artefact"])["prompt_id"].to_pylist())
    p2 = set(pq.read_table(steps[(2, "prompts")]["artefact"])["prompt_id"].to_pylist())
    assert not p1 & p2
    gens = pq.read_table(steps[(1, "generate")]["artefact"])
    assert gens.num_rows == 6 * 3  # every prompt got exactly n answers
    assert (prompt_ws.root / "rounds" / "exp" / "report.html").exists()
    assert prompt_ws.sql("select count(*) n from rounds where experiment = 'exp'").to_pylist()[0]["n"] == 16
    # a second invocation finds everything done and changes nothing
    before = {(r["round"], r["step"]): r["updated_at"] for r in prompt_ws.get_rounds("exp")}
    iterate(cfg, prompt_ws)
    assert before == {(r["round"], r["step"]): r["updated_at"] for r in prompt_ws.get_rounds("exp")}
    # resuming with other settings would mix two configurations in one experiment: refused
    changed = _cfg(tiny_policy, prompt_ws, pairs={"rule": "best_vs_worst", "min_margin": 0.5})
    with pytest.raises(RoundFailure, match="different configuration"):
        iterate(changed, prompt_ws)


@pytest.mark.slow
def test_failed_round_resumes_from_the_failed_step(tiny_policy, prompt_ws):
    cfg = _cfg(tiny_policy, prompt_ws)
    calls: list[str] = []
    failures = [OSError("disk went away")]

    def flaky(name, fn):
        calls.append(name)
        if name == "round-1-train" and failures:
            raise failures.pop()
        return fn()

    with pytest.raises(RoundFailure, match="round 1 step 'train'"):
        iterate(cfg, prompt_ws, rounds=1, execute=flaky)
    assert {r["step"]: r["status"] for r in prompt_ws.get_rounds("exp") if r["round"] == 1}["train"] == "failed"
    calls.clear()
    iterate(cfg, prompt_ws, rounds=1, execute=flaky)
    assert calls == ["round-1-train", "round-1-evaluate"]  # earlier steps were not redone


KILLED_RUN = textwrap.dedent("""
    import sys
    from pipelines.iterate_config import parse_iterate_config
    from pipelines.rounds import iterate
    from storage.workspace import Workspace
    import json
    cfg = parse_iterate_config(json.loads(sys.argv[1]))
    iterate(cfg, Workspace(cfg.workspace), rounds=1)
""")


@pytest.mark.slow
def test_kill_9_mid_round_then_resume(tiny_policy, prompt_ws):
    import json

    cfg = _cfg(tiny_policy, prompt_ws)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, json.dumps(cfg.model_dump())], env=env)
    marker = prompt_ws.root / "rounds" / "exp" / "round-001" / "scored.parquet"
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the round never reached the judge step"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {r["step"]: r["updated_at"] for r in prompt_ws.get_rounds("exp")
                   if r["round"] == 1 and r["status"] == "done"}
    assert "generate" in done_before and "train" not in done_before
    iterate(cfg, Workspace(prompt_ws.root), rounds=1)
    after = {r["step"]: r for r in prompt_ws.get_rounds("exp") if r["round"] == 1}
    assert all(after[s]["status"] == "done" for s in ("pairs", "gate", "train", "evaluate"))
    for step, ts in done_before.items():  # finished steps were kept, not redone
        assert after[step]["updated_at"] == ts
    assert Path(after["train"]["details"]["checkpoint"]).exists()


@pytest.mark.slow
def test_round_trains_what_was_sampled_for_the_configured_steps(tiny_policy, prompt_ws):
    import pyarrow.parquet as pq

    # 6 prompts -> at most 6 best-vs-worst pairs -> 2 steps per epoch at batch 4; the round must still train 5
    cfg = _cfg(tiny_policy, prompt_ws, train={"max_steps": 5, "per_device_batch_size": 4, "lr": 1e-4})
    history = iterate(cfg, prompt_ws, rounds=1)
    steps = {(r["round"], r["step"]): r["details"] for r in prompt_ws.get_rounds("exp")}
    # a round trains the steps it is configured for, even when its snapshot is smaller than one epoch of them
    assert steps[(1, "train")]["steps"] == 5
    clean = prompt_ws.read(steps[(1, "gate")]["artefact"])
    assert clean.num_rows > 0
    # on-policy pairs are not length-reweighted unless asked
    assert set(clean.column("weight").to_pylist()) == {1.0}
    # the pairs carry the sampled ids, the trainer used them, and the gate did not rewrite the sampled text
    gens = pq.read_table(steps[(1, "generate")]["artefact"]).to_pylist()
    by_text = {tuple(g["token_ids"]): g for g in gens}
    for row in clean.to_pylist():
        g = by_text[tuple(row["chosen_token_ids"])]
        assert row["chosen"] == g["response"] and row["chosen_stop"] == g["stop_reason"]
        assert row["prompt_token_ids"] == g["prompt_token_ids"]
    assert steps[(1, "train")]["sampled_rows"] == clean.num_rows
    # evaluation samples with fresh seeds each round; every estimate has its standard error
    e0 = pq.read_table(steps[(0, "evaluate")]["generations"]).column("seed").to_pylist()
    e1 = pq.read_table(steps[(1, "evaluate")]["generations"]).column("seed").to_pylist()
    assert not set(e0) & set(e1)
    rec = history[1]
    assert history[0]["kl"]["kl"] == 0.0 and rec["kl"]["stderr"] is not None and rec["kl"]["kl"] >= 0
    assert rec["score"]["current"]["stderr"] is not None and rec["win_rate_vs_reference"]["stderr"] is not None


def test_example_config_judge_separates_real_answers(shared_data):
    """The config users copy must judge with a reward that varies between answers (not a flat line)."""
    import gzip
    import json

    import numpy as np

    from dpo_train.judges import make_judge
    from pipelines.iterate_config import load_iterate_config

    cfg = load_iterate_config(Path(__file__).parents[2] / "examples" / "iterate.toml")
    assert cfg.round_gate()["length_bias"]["mode"] == "stats" and cfg.pairs.get("truncated") == "keep"
    rows = json.loads(gzip.open(shared_data / ALPACA, "rt", encoding="utf-8").read())[:200]
    import pyarrow as pa

    t = pa.table({"prompt_id": [str(i) for i in range(len(rows))],
                  "prompt": [[{"role": "user", "content": r["instruction"]}] for r in rows],
                  "sample_index": [0] * len(rows), "response": [r["output_1"] for r in rows]})
    scores = make_judge(cfg.judge).score(t)
    assert np.std(scores) > 0.5 and len(set(scores.tolist())) > 5
