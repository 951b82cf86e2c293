"""Long steps show progress: `dpo train` draws the reference pass (it sat at "0/4" for 18 minutes on full HH)."""

from __future__ import annotations

import pytest

from pipelines.cli import main


@pytest.mark.slow
def test_train_shows_the_reference_pass(tmp_path, small_pairs, capfd):
    from dpo_train.tiny import make_tiny_model
    from storage.workspace import Workspace

    model = make_tiny_model(tmp_path / "tiny", corpus=["question good answer bad answer"] * 8, vocab_size=128,
                            n_layers=1, hidden=16, heads=2, max_positions=512)
    Workspace(tmp_path / "ws").publish("d", small_pairs)
    rc = main(["train", "--snapshot", "d@1", "--model", str(model), "--max-steps", "1", "-w", str(tmp_path / "ws"),
               "--output-dir", str(tmp_path / "run")])
    err = capfd.readouterr().err
    assert rc == 0, err
    assert "reference log-probs" in err and "10/10" in err  # every pair of the reference pass, counted


def test_progress_reaches_the_listener_only_while_listening():
    from dpo_train import progress

    seen: list[tuple[str, int, int]] = []
    progress.report("x", 1, 2)
    with progress.reporting(lambda *a: seen.append(a)):
        progress.report("reference log-probs", 4, 10)
    progress.report("x", 2, 2)
    assert seen == [("reference log-probs", 4, 10)]
