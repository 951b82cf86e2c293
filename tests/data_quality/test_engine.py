"""The gate engine: every executor (in memory, out of core, sharded) gives the same kept rows and rejects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_quality import engine, executors, out_of_core
from data_quality import spill as spill_mod
from data_quality.checks.columns import take_rows
from data_quality.gate import GateConfig, run_gate, steps
from storage.workspace import content_hash


def _reject_keys(t: pa.Table) -> list[tuple]:
    cols = [t.column(c).to_pylist() for c in ("pair_id", "rule", "reason", "duplicate_of", "source", "source_row")]
    return sorted(zip(*cols, strict=True), key=repr)


def _step(name: str, scope: str, rewrites: bool = False) -> engine.Step:
    return engine.Step(name, lambda t: t, scope, rewrites)  # type: ignore[arg-type,return-value]


def test_plan_groups_steps_and_reshards_after_normalise() -> None:
    names = [("normalise", "row", True), ("degenerate", "row"), ("contradictions", "prompt"), ("dedup", "prompt"),
             ("near_identical", "row"), ("margins", "prompt"), ("decontam", "row"), ("near_dup", "global"),
             ("length_bias", "global"), ("future_check", "global"), ("dedup2", "prompt")]
    phases = engine.plan([_step(*n) for n in names])
    assert [(p.sharded, p.names) for p in phases] == [
        (True, ["normalise", "degenerate"]),
        (True, ["contradictions", "dedup", "near_identical", "margins", "decontam"]),
        (False, ["near_dup", "length_bias", "future_check"]),
        (True, ["dedup2"]),
    ]


def test_gate_declares_a_scope_for_every_step() -> None:
    got = {s.name: s.scope for s in steps(GateConfig(), ["an eval prompt"])}
    assert got["near_dup"] == "global" and got["dedup"] == "prompt" and got["normalise"] == "row"


def test_shard_ids_are_stable_and_in_range() -> None:
    ids = pa.array(["ff000000aa", "0000000f11", "00000010"])
    assert engine.shard_ids(ids, 16).tolist() == [0, 15, 0]
    assert engine.shard_ids(ids, 1000).tolist() == [80, 15, 16]


def test_engine_config_is_checked() -> None:
    with pytest.raises(ValueError, match="executor"):
        GateConfig.from_dict({"engine": {"executor": "gpu"}})
    assert GateConfig.from_dict({"engine": {"memory_budget_mb": 512}}).engine.memory_budget_mb == 512
    with pytest.raises(ValueError, match="n_workers"):
        GateConfig.from_dict({"engine": {"executor": "cluster", "n_workers": 0}})
    remote = GateConfig.from_dict({"engine": {"executor": "cluster", "address": "tcp://scheduler:8786"}}).engine
    assert (remote.executor, remote.address) == ("cluster", "tcp://scheduler:8786")
    assert executors.choose_executor(pa.table({"a": [1]}), engine.EngineConfig()) == "memory"  # auto never picks it


@pytest.fixture(scope="module")
def real_pairs() -> pa.Table:
    from data_quality.ingest import ingest_files
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.exists():
        pytest.skip("shared data not found")
    ann = SHARED_DATA / "alpaca_eval" / "annotations"
    return ingest_files([SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz",
                         ann / "alpaca-7b_concise__weighted_alpaca_eval_gpt4_turbo.json.gz",
                         ann / "alpaca-7b_verbose__weighted_alpaca_eval_gpt4_turbo.json.gz",
                         ann / "alpaca-7b__alpaca_eval_gpt4.json.gz"]).pairs


def test_every_executor_gives_the_in_memory_result(real_pairs: pa.Table, tmp_path: Path) -> None:
    pq.write_table(real_pairs, tmp_path / "pairs.parquet", row_group_size=1000)
    gate = {"contradictions": {"policy": "keep_majority"}, "margins": {"max_pairs_per_prompt": 2}}
    mem = run_gate(real_pairs, GateConfig.from_dict({**gate, "engine": {"executor": "memory"}}))
    assert mem.stats["executor"] == "memory" and mem.rejects.num_rows > 0  # the comparison is about something
    ooc_cfg = GateConfig.from_dict({**gate, "engine": {"executor": "out_of_core", "partitions": 5,
                                                       "spill_dir": str(tmp_path)}})
    ooc = run_gate(tmp_path / "pairs.parquet", ooc_cfg)
    auto = run_gate(tmp_path / "pairs.parquet", GateConfig.from_dict({**gate, "engine": {"memory_budget_mb": 8}}))
    cfg = GateConfig.from_dict(gate)
    sharded = engine.run_sharded(real_pairs, steps(cfg), cfg.to_dict(), 4)
    assert auto.stats["executor"] == "out_of_core" and ooc.stats["checks"]["dedup"]["shards"] == 5
    for other in (ooc, auto, sharded):
        assert other.kept.equals(mem.kept)
        assert content_hash(other.kept) == content_hash(mem.kept)
        assert _reject_keys(other.rejects) == _reject_keys(mem.rejects)
        # ... and the same table, row for row: a user diffing two runs' rejects sees no difference
        assert other.rejects.equals(mem.rejects)
        assert other.stats["drops_by_reason"] == mem.stats["drops_by_reason"]
    assert list(tmp_path.glob("dpo-gate-*")) == []  # spill files are gone


def test_global_checks_give_the_in_memory_statistics(real_pairs: pa.Table, tmp_path: Path) -> None:
    # The out-of-core engine applies repeated_answer's and near_dup's decisions batch by batch (out_of_core._whole_step);
    # the statistics it records must be those the check's own `apply` records on the whole table.
    mem = run_gate(real_pairs, GateConfig.from_dict({"engine": {"executor": "memory"}}))
    ooc = run_gate(real_pairs, GateConfig.from_dict({"engine": {"executor": "out_of_core", "partitions": 3,
                                                                "spill_dir": str(tmp_path)}}))
    assert ooc.kept.equals(mem.kept) and _reject_keys(ooc.rejects) == _reject_keys(mem.rejects)
    for name in ("repeated_answer", "near_dup", "length_bias"):
        drop = {"seconds", "cpu_seconds"}
        assert {k: v for k, v in ooc.stats["checks"][name].items() if k not in drop} == \
            {k: v for k, v in mem.stats["checks"][name].items() if k not in drop}, name
    assert mem.stats["checks"]["near_dup"]["dropped"] and mem.stats["checks"]["repeated_answer"]["rows_in"]


def test_take_rows_equals_arrow_take_without_concatenating() -> None:
    rng = np.random.default_rng(0)
    col = pa.chunked_array([pa.array([f"t{i}-{j}" for j in range(n)], pa.string()) for i, n in enumerate([5, 0, 7, 3, 11])])
    for rows in (rng.integers(0, len(col), 40), np.arange(len(col)), np.array([25, 0, 25, 6]), np.array([], int)):
        assert take_rows(col, rows).to_pylist() == col.take(pa.array(rows, pa.int64())).to_pylist()
    assert take_rows(col.chunk(0), np.array([4, 1])).to_pylist() == ["t0-4", "t0-1"]
    with pytest.raises(IndexError):
        take_rows(col, np.array([len(col)]))
    big = pa.chunked_array([pa.array(["x" * 1000] * 2000) for _ in range(20)])  # 40 MB in 20 chunks
    pool = pa.default_memory_pool()
    pool.release_unused()
    before = pa.total_allocated_bytes()
    got = take_rows(big, np.array([5, 39_999, 20_000]))
    assert got.to_pylist() == ["x" * 1000] * 3 and pa.total_allocated_bytes() - before < 1 << 20


def _rss_mb(kind: str = "RssFile") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{kind}:"):
            return int(line.split()[1]) / 1024
    pytest.skip(f"no {kind} in /proc/self/status")


def test_read_pages_of_a_mapped_stage_go_back_to_the_page_cache(tmp_path: Path) -> None:
    spill = spill_mod.Spill(tmp_path)
    t = pa.table({"text": pa.array(["y" * 4000] * 20_000)})  # 80 MB
    stage = spill_mod.Spill.open(spill.write("stage", t.to_batches(max_chunksize=2_000), t.schema))
    base = _rss_mb()
    assert pc.sum(pc.utf8_length(stage.column("text"))).as_py() == 80_000_000  # reads every page
    touched = _rss_mb()
    spill_mod.PAGES.release()
    after = _rss_mb()
    assert touched - base > 60 and touched - after > 60, (base, touched, after)
    assert stage.equals(t)  # and the rows read back unchanged


def test_near_dup_hashing_a_mapped_stage_hands_its_pages_back_as_it_goes(tmp_path: Path, monkeypatch) -> None:
    """Seen at 2M rows: near_dup's pass hashing every text of a mapped stage read 0.8 GB of file pages between two
    ticks of the page returner, the run's peak RSS. The pages now go back after every chunk."""
    from data_quality.checks import near_dup, near_dup_sets

    spill = spill_mod.Spill(tmp_path)
    t = pa.table({"chosen": pa.array([f"{i} " + "z" * 4000 for i in range(30_000)])})  # 120 MB
    stage = spill_mod.Spill.open(spill.write("stage", t.to_batches(max_chunksize=3_000), t.schema))
    spill_mod.PAGES.release()
    base, seen = _rss_mb(), []
    real = near_dup_sets.text_hashes

    def hashing(s):
        seen.append(_rss_mb() - base)
        return real(s)

    monkeypatch.setattr(near_dup_sets, "text_hashes", hashing)
    h = near_dup.TableTexts(stage).hashes("chosen", chunk=2_000)
    assert len(seen) == 15 and max(seen) < 30, seen  # one chunk is 8 MB; the whole column 120 MB
    assert np.array_equal(h, near_dup.text_hashes(pl.Series(t.column("chosen"))))


def test_partitions_merge_back_in_input_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(out_of_core, "_BATCH", 4)
    parts = [pa.table({"v": [p * 100 + i for i in range(len(ps))], engine.POS: ps})
             for p, ps in enumerate([[0, 3, 4, 9, 10, 11], [1, 2, 12], [], [5, 6, 7, 8, 13]])]
    batches = list(out_of_core._merge_by_position(parts))
    got = pa.Table.from_batches(batches)
    assert got.column(engine.POS).to_pylist() == list(range(14)) and max(b.num_rows for b in batches) <= 4
    assert got.column("v").to_pylist()[:4] == [0, 100, 101, 1]


def test_an_array_store_under_parking_lives_in_a_mapped_spill_file_not_the_heap(tmp_path: Path) -> None:
    chunks = [np.arange(k * 5_000_000, (k + 1) * 5_000_000, dtype=np.uint32) for k in range(4)]  # 80 MB
    plain = spill_mod.ArrayStore(np.uint32)
    for c in chunks:
        plain.append(c)
    in_heap = plain.finish()
    assert in_heap.flags.owndata
    base = _rss_mb("RssAnon")
    with spill_mod.parking(tmp_path):
        store = spill_mod.ArrayStore(np.uint32)
        for c in chunks:
            store.append(c)
        parked = store.finish()
    assert not parked.flags.owndata and not parked.flags.writeable  # a read-only view of the mapping
    assert _rss_mb("RssAnon") - base < 20  # nothing of the 80 MB in the heap
    assert np.array_equal(parked, in_heap) and np.array_equal(parked[[7, 19_999_999]], [7, 19_999_999])
    assert list(tmp_path.iterdir()) == []  # the spill file is unlinked: its space goes back with the mapping


def test_near_dup_out_of_core_keeps_its_shingle_store_in_the_spill(real_pairs: pa.Table, tmp_path: Path) -> None:
    from data_quality.checks import near_dup

    cfg = near_dup.NearDupConfig()
    src = near_dup.TableTexts(real_pairs)
    heap = near_dup.Field(src, "chosen", cfg)
    with spill_mod.parking(tmp_path):
        parked = near_dup.Field(src, "chosen", cfg)
        rep_parked, _ = near_dup.find_duplicates(src, cfg)
    assert heap.values.flags.owndata and not parked.values.flags.owndata
    assert np.array_equal(heap.values, parked.values)
    rep, _ = near_dup.find_duplicates(src, cfg)
    assert np.array_equal(rep, rep_parked) and (rep >= 0).any()
