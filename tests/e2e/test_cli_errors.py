"""One CLI convention: every verb answers bad arguments and bad inputs with exit code 2 and one clear line,
never a traceback (`--debug` shows it); global options go before or after the verb; `--version` works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import main

BAD_ARGS = [
    ["nope"],
    ["sql"],
    ["sql", "SELECT 1", "--format", "xml"],
    ["export", "d@1"],
    ["train", "--max-steps", "x"],
    ["ingest", "--dataset"],
    ["snapshots", "--format", "yaml"],
    ["rounds", "extra-arg"],
    ["show"],
    ["--workspace"],
]


@pytest.fixture(scope="module")
def env_root(tmp_path_factory):
    """A workspace with one snapshot and a folder of bad inputs, shared: no case may change them."""
    from storage.schema import build_pair_table
    from storage.workspace import Workspace

    tmp_path = tmp_path_factory.mktemp("cli_errors")
    Workspace(tmp_path / "ws").publish("d", build_pair_table({
        "prompt": [[{"role": "user", "content": f"question {i}"}] for i in range(10)],
        "chosen": [f"good answer {i}" for i in range(10)], "rejected": [f"bad answer {i}" for i in range(10)],
        "source": ["unit"] * 10, "source_row": list(range(10))}))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (bad / "not_objects.json").write_text("[1, 2, 3]")
    (bad / "not_toml.toml").write_text("[gate\nthis is = not toml")
    (bad / "empty_dir").mkdir()
    (bad / "existing.txt").write_text("mine\n")
    (bad / "a_file").write_text("not a workspace\n")
    return tmp_path


@pytest.fixture
def env(env_root, monkeypatch):
    """cwd is the shared folder; no Prefect server configured; the Hugging Face hub offline."""
    tmp_path = env_root
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


BAD_INPUTS = [
    ["ingest", "bad/missing.jsonl", "--dataset", "x"],
    ["ingest", "bad/deep.json", "--dataset", "x"],  # RecursionError in the JSON reader
    ["ingest", "bad/not_objects.json", "--dataset", "x"],  # was AssertionError: ingest lost rows
    ["ingest", "bad/empty_dir", "--dataset", "x"],  # a folder with nothing to read
    ["ingest", "bad/existing.txt", "--dataset", "bad name!"],
    ["show", "nope@3"],
    ["show", "d@x"],
    ["show", "d@99"],
    ["clean", "nope"],
    ["clean", "x[/]"],  # rich markup in an argument: printed, not parsed
    ["show", "[bold]d:thumbs_up:"],
    ["clean", "d@1", "--config", "bad/not_toml.toml"],
    ["clean", "d@1", "--config", "bad/missing.toml"],
    ["sql", "SELEC 1"],
    ["sql", "DELETE FROM runs"],
    ["sql", "SELECT * FROM no_such_view"],
    ["export", "nope", "--to", "out.jsonl"],
    ["export", "d@1", "--to", "bad/existing.txt"],
    ["export", "d@1", "--to", "out.csv"],
    ["export", "d@1", "--to", "ws", "--format", "hf-dataset", "--overwrite"],
    ["train", "--snapshot", "d@1", "--model", "/no/such/model"],
    ["train", "--snapshot", "d@1", "--model", "someorg/some-model"],  # a hub id, offline
    ["train", "--snapshot", "d@1", "--model", "bad/existing.txt"],
    ["train", "--config", "bad/missing.toml"],
    ["iterate", "--config", "bad/missing.toml"],
    ["iterate", "--config", "bad/not_toml.toml"],
    ["refresh", "--config", "bad/missing.toml"],
    ["refresh", "--config", "bad/not_toml.toml"],
    ["serve", "--config", "bad/missing.toml"],
    ["serve", "--config", str(Path(__file__).resolve().parents[2] / "examples" / "refresh.toml")],  # no server
    ["snapshots", "-w", "bad/a_file"],
]


def _run(capfd, argv: list[str]) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    cap = capfd.readouterr()
    return rc, cap.out + cap.err


@pytest.mark.parametrize("argv", BAD_ARGS, ids=" ".join)
def test_bad_arguments_exit_2_without_traceback(env, capfd, argv):
    rc, text = _run(capfd, ["-w", "ws", *argv])
    assert rc == 2, text
    assert "Traceback" not in text and "usage:" in text


@pytest.mark.parametrize("argv", BAD_INPUTS, ids=" ".join)
def test_bad_inputs_exit_2_with_one_clear_line(env, capfd, argv):
    rc, text = _run(capfd, ["-w", "ws", *argv])
    assert rc == 2, text
    assert "Traceback" not in text and "error:" in text, text
    assert "internal error" not in text and "this is a bug" not in text, text


def test_errors_name_the_file_or_snapshot(env, capfd):
    assert "bad/missing.jsonl" in _run(capfd, ["-w", "ws", "ingest", "bad/missing.jsonl", "-d", "x"])[1]
    assert "nope@3" in _run(capfd, ["-w", "ws", "show", "nope@3"])[1]
    assert "/no/such/model" in _run(capfd, ["-w", "ws", "train", "-s", "d@1", "--model", "/no/such/model"])[1]
    text = _run(capfd, ["-w", "ws", "train", "-s", "d@1", "--model", "someorg/some-model"])[1]
    assert "someorg/some-model" in text and "cannot be reached" in text


def test_debug_shows_the_traceback(env, capfd):
    with pytest.raises(KeyError, match="nope@3"):
        main(["show", "nope@3", "-w", "ws", "--debug"])
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "--debug", "-w", "ws", "show", "nope@3"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
                          timeout=120, cwd=env)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_global_options_anywhere_and_version(env, capfd):
    for argv in (["-w", "ws", "sql", "SELECT count(*) AS n FROM d", "--format", "json"],
                 ["sql", "SELECT count(*) AS n FROM d", "--format", "json", "-w", "ws"],
                 ["sql", "-w", "ws", "--format", "json", "SELECT count(*) AS n FROM d"]):
        rc, text = _run(capfd, argv)
        assert rc == 0 and json.loads(text) == {"n": 10}, (argv, text)
    rc, text = _run(capfd, ["--version"])
    assert rc == 0 and text.startswith("dpo ")


def test_serve_with_an_unreachable_server_is_one_line(env):
    """The Prefect client's connection error, in a fresh process so the server URL setting is read anew."""
    cfg = Path(__file__).resolve().parents[2] / "examples" / "refresh.toml"
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "-w", "ws", "serve", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=180, cwd=env,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                               "PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout and "cannot reach the Prefect server" in proc.stderr


def test_a_catalog_held_by_another_client_is_one_line(tmp_path, small_pairs, capfd, monkeypatch):
    from storage.workspace import Workspace

    ws = tmp_path / "ws"
    Workspace(ws).publish("d", small_pairs)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('ready', flush=True); time.sleep(120)", str(ws / "catalog.duckdb")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        monkeypatch.setenv("DPO_CATALOG_WAIT_S", "1")
        rc, text = _run(capfd, ["-w", str(ws), "snapshots"])
    finally:
        holder.kill()
        holder.wait()
    assert rc == 2 and "held by" in text and "Traceback" not in text, text


def test_a_model_with_fewer_positions_than_max_length_is_one_line(env, capfd):
    """Was torch's `IndexError: index out of range in self` from the position embedding, deep in a forward."""
    from dpo_train.tiny import make_tiny_model

    model = make_tiny_model(env / "tiny64", corpus=["question good answer bad answer"] * 8, vocab_size=128,
                            n_layers=1, hidden=16, heads=2, max_positions=64)
    rc, text = _run(capfd, ["-w", "ws", "train", "--snapshot", "d@1", "--model", str(model), "--max-steps", "1",
                            "--output-dir", str(env / "run64")])
    assert rc == 2 and "Traceback" not in text and "positions" in text, text
