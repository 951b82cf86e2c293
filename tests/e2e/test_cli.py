"""The `dpo` command on the real data in ../shared/data, as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipelines.cli import main

SHARED_DATA = Path(os.environ.get("DPO_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))

ANNOTATIONS = "alpaca_eval/annotations"


def dpo(ws: Path, *args: str, capsys=None) -> tuple[int, str]:
    rc = main(["--workspace", str(ws), *args])
    text = capsys.readouterr().out if capsys is not None else ""
    return rc, text


def _sql(ws: Path, query: str) -> list[dict]:
    from storage.workspace import Workspace

    return Workspace(ws).sql(query).to_pylist()


def test_ingest_hh_then_sql_counts_add_up(tmp_path, shared_data, capsys):
    ws = tmp_path / "ws"
    rc, _ = dpo(ws, "ingest", str(shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz"), "--dataset", "hh",
                capsys=capsys)
    assert rc == 0
    rc, text = dpo(ws, "sql", "select count(*) as n from hh", "--format", "json", capsys=capsys)
    assert rc == 0
    kept = json.loads(text.strip())["n"]
    snap = _sql(ws, "select input_rows, kept, rejected, quarantined from snapshots where snapshot_id = 'hh@1'")[0]
    assert snap["input_rows"] == 2312 == snap["kept"] + snap["rejected"] + snap["quarantined"]
    assert kept == snap["kept"]
    q = _sql(ws, "select count(*) n from quarantine where snapshot_id = 'hh@1'")[0]["n"]
    assert q == snap["quarantined"]


@pytest.mark.parametrize("name", sorted(p.name for p in (SHARED_DATA / ANNOTATIONS).glob("*.json.gz")) or ["missing"])
def test_every_alpaca_annotation_file_is_accounted_for(tmp_path, shared_data, name, capsys):
    import gzip

    path = shared_data / ANNOTATIONS / name
    raw = json.loads(gzip.open(path, "rt", encoding="utf-8").read())
    ws = tmp_path / "ws"
    assert dpo(ws, "ingest", str(path), "--dataset", "ae", capsys=capsys)[0] == 0
    snap = _sql(ws, "select input_rows, kept, rejected, quarantined from snapshots")[0]
    assert snap["input_rows"] == len(raw) == snap["kept"] + snap["rejected"] + snap["quarantined"]
    # orientation: for rows with a clean integer preference the chosen text is the preferred output
    rows = {r["source_row"]: r for r in _sql(ws, "select source_row, chosen, rejected, preference_prob from ae")}
    checked = ties = 0
    for i, r in enumerate(raw):
        pref = r.get("preference")
        try:
            p = float(pref)
        except (TypeError, ValueError):
            continue
        ties += p in (0.0, 1.5)
        if i not in rows or p not in (1.0, 2.0):
            continue
        want_chosen = r["output_1"] if p == 1.0 else r["output_2"]
        assert rows[i]["chosen"] == want_chosen, (name, i)  # published as the source wrote it
        checked += 1
    # A label tie (AlpacaEval's 0 or 1.5) is a well-formed row without a preference: a reject, never kept.
    assert snap["rejected"] == ties, (name, ties)
    # `weighted_*` files hold soft labels; a judge's self-comparison file (generator_1 == generator_2, e.g.
    # gpt4_1106_preview__alpaca_eval_cot_gpt4_turbo_fn) is all ties: nothing to orient there.
    assert checked > 0 or "weighted" in name or ties == len(raw)


def test_catalog_opens_in_plain_duckdb_with_same_views(tmp_path, shared_data, capsys):
    ws = tmp_path / "ws"
    dpo(ws, "ingest", str(shared_data / ANNOTATIONS / "gpt4__alpaca_eval_gpt4.json.gz"), "--dataset", "ae",
        capsys=capsys)
    assert dpo(ws, "clean", "ae", capsys=capsys)[0] == 0
    con = duckdb.connect(str(ws / "catalog.duckdb"), read_only=True)
    try:
        views = {r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()}
        assert {"ae", "ae@1", "ae_clean", "ae_clean@1", "snapshots", "rejects", "quarantine", "rounds"} <= views
        n_clean = con.execute("select count(*) from ae_clean").fetchone()[0]
        lineage = con.execute("select parents from snapshots where dataset = 'ae_clean'").fetchone()[0]
    finally:
        con.close()
    assert n_clean == _sql(ws, "select kept from snapshots where dataset = 'ae_clean'")[0]["kept"]
    assert lineage == ["ae@1"]


def test_sql_refuses_writes_with_a_clear_message(tmp_path, small_pairs, capsys):
    from storage.workspace import Workspace

    Workspace(tmp_path / "ws").publish("d", small_pairs)
    rc = main(["--workspace", str(tmp_path / "ws"), "sql", "delete from runs"])
    err = capsys.readouterr().err
    assert rc == 2 and "read-only" in err


def test_show_and_export(tmp_path, small_pairs, capsys):
    from storage.workspace import Workspace

    Workspace(tmp_path / "ws").publish("d", small_pairs)
    rc, text = dpo(tmp_path / "ws", "show", "d@1", capsys=capsys)
    assert rc == 0 and "lineage: d@1" in text and "pair_id" in text
    out = tmp_path / "export" / "d.jsonl"
    assert dpo(tmp_path / "ws", "export", "d@1", "--to", str(out), "--format", "trl-conversational",
               capsys=capsys)[0] == 0
    first = json.loads(out.read_text().splitlines()[0])
    assert first["chosen"] == [{"role": "assistant", "content": "good answer 0"}]


def test_unknown_snapshot_is_a_clear_error(tmp_path, capsys):
    rc = main(["--workspace", str(tmp_path / "ws"), "show", "nope@3"])
    assert rc == 2 and "no snapshot 'nope@3'" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, shared_data):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "--workspace", str(tmp_path / "ws"), "demo",
                           "--quick"], env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "demo finished" in proc.stderr
    rounds = _sql(tmp_path / "ws", "select round, step, status from rounds where experiment = 'demo-quick'")
    assert {(r["round"], r["step"]) for r in rounds if r["status"] == "done"} >= {(1, "train"), (2, "evaluate")}
    runs = _sql(tmp_path / "ws", "select run_id, status from runs order by run_id")
    assert {"demo-sft-quick", "demo-dpo-quick"} <= {r["run_id"] for r in runs if r["status"] == "finished"}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # ~140 s on a quiet core; CI runs it beside another worker on 2 cores
def test_full_demo_rounds_raise_the_reward_at_growing_positive_kl(tmp_path, shared_data):
    """The README's first command: its rounds must visibly move (issue: the old demo's rounds trained 4 steps)."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "--workspace", str(tmp_path / "ws"), "demo"],
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    evals = [json.loads(p.read_text())
             for p in sorted((tmp_path / "ws" / "rounds" / "demo").glob("round-*/evaluation.json"))]
    assert [e["round"] for e in evals] == [0, 1, 2, 3]
    first, last = evals[0]["score"]["current"], evals[-1]["score"]["current"]
    se = (first["stderr"] ** 2 + last["stderr"] ** 2) ** 0.5  # fresh seeds per round: independent errors
    assert last["mean"] - first["mean"] > 2 * se, (first, last)
    kls = [e["kl"]["kl"] for e in evals[1:]]
    assert all(e["kl"]["kl"] > 3 * e["kl"]["stderr"] for e in evals[1:]), kls
    assert kls == sorted(kls), kls
