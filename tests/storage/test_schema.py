import pyarrow as pa
import pytest

from storage.schema import (
    PAIR_SCHEMA,
    REJECTS_SCHEMA,
    build_pair_table,
    conform,
    hash_text,
    quarantine_table,
    rejects_table,
    render_messages,
    validate_pair_table,
)


def test_ids_are_stable_and_content_addressed(small_pairs):
    again = build_pair_table({
        "prompt": small_pairs["prompt"].to_pylist(),
        "chosen": small_pairs["chosen"].to_pylist(),
        "rejected": small_pairs["rejected"].to_pylist(),
        "source": ["elsewhere"] * 10,
        "source_row": list(range(100, 110)),
    })
    assert again["pair_id"].to_pylist() == small_pairs["pair_id"].to_pylist()
    assert len(set(small_pairs["pair_id"].to_pylist())) == 10
    # the prompt id depends on the prompt alone
    assert small_pairs["prompt_id"][0].as_py() == hash_text("question 0")
    # swapping chosen and rejected is a different pair
    swapped = build_pair_table({"prompt": [[{"role": "user", "content": "q"}]] * 2, "chosen": ["a", "b"],
                                "rejected": ["b", "a"], "source": ["s"] * 2, "source_row": [0, 1]})
    assert swapped["pair_id"][0] != swapped["pair_id"][1]
    assert swapped["prompt_id"][0] == swapped["prompt_id"][1]


def test_schema_defaults_and_version(small_pairs):
    assert small_pairs.schema.equals(PAIR_SCHEMA)
    assert small_pairs["weight"].to_pylist() == [1.0] * 10
    assert small_pairs["round"].to_pylist() == [0] * 10
    assert PAIR_SCHEMA.metadata[b"dpo.schema_version"] == b"1"


def test_render_messages_multi_turn():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "how?"}]
    assert render_messages(msgs) == "User: hi\n\nAssistant: hello\n\nUser: how?"
    assert render_messages([{"role": "user", "content": "only"}]) == "only"


def test_unknown_and_missing_columns_fail_loudly():
    with pytest.raises(ValueError, match="unknown pair-table columns"):
        build_pair_table({"prompt": [], "chosen": [], "rejected": [], "source": [], "source_row": [], "oops": []})
    with pytest.raises(ValueError, match="missing required"):
        build_pair_table({"chosen": [], "rejected": []})


def test_conform_names_the_column():
    bad = pa.table({"pair_id": ["x"], "prompt_id": ["y"], "prompt": [[]], "prompt_text": [""],
                    "chosen": ["a"], "rejected": [None], "source": ["s"], "source_row": [0]})
    with pytest.raises(ValueError, match="'rejected'"):
        conform(bad)


def test_validate_flags_empty_answer(small_pairs):
    t = small_pairs.set_column(small_pairs.schema.get_field_index("chosen"), "chosen",
                               pa.array(["x"] * 9 + [""]))
    with pytest.raises(ValueError, match="row 9: field 'chosen' is empty"):
        validate_pair_table(t)


def test_rejects_and_quarantine_tables(small_pairs):
    r = rejects_table(small_pairs.slice(0, 2), "dedup", "exact duplicate", '{"k": 1}', ["a", "b"])
    assert r.schema.equals(REJECTS_SCHEMA)
    assert r["duplicate_of"].to_pylist() == ["a", "b"]
    q = quarantine_table([{"source": "f.jsonl", "source_row": 3, "error": "bad json", "stage": "ingest"}])
    assert q.num_rows == 1 and q["field"][0].as_py() is None


def test_columnar_ids_equal_the_per_row_reference(shared_data):
    """with_ids renders and hashes on columns; it must give exactly what render_messages + hash_text give row by
    row, on real multi-turn HH prompts, AlpacaEval rows and the odd shapes (empty prompt, system, unknown role,
    a NUL byte, non-ASCII), sliced at an offset."""
    from data_quality.ingest import ingest_files
    from storage.schema import pair_ids, prompt_ids, with_ids

    real = ingest_files([shared_data / "hh-rlhf" / "harmless-base-test.jsonl.gz",
                         shared_data / "alpaca_eval" / "annotations"
                         / "alpaca-7b_concise__weighted_alpaca_eval_gpt4_turbo.json.gz"]).pairs
    odd = build_pair_table({
        "prompt": [[], [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                   [{"role": "tool", "content": "x"}], [{"role": "assistant", "content": "a"}],
                   [{"role": "user", "content": "é\x00中"}]],
        "chosen": ["a", "b", "c", "é\x00", "z"], "rejected": ["r", "s", "t", "u", "v"],
        "source": ["t"] * 5, "source_row": list(range(5))})
    table = pa.concat_tables([real.select(["prompt", "chosen", "rejected"]),
                              odd.select(["prompt", "chosen", "rejected"]).cast(real.select(
                                  ["prompt", "chosen", "rejected"]).schema)])
    assert table.num_rows > 3_000
    assert any(len(m) > 2 for m in real.column("prompt").to_pylist())  # HH: multi-turn
    for part in (table, table.slice(7, table.num_rows - 9)):
        text = [render_messages(m) for m in part.column("prompt").to_pylist()]
        got = with_ids(part)
        assert got.column("prompt_text").to_pylist() == text
        assert got.column("prompt_id").to_pylist() == prompt_ids(text)
        assert got.column("pair_id").to_pylist() == pair_ids(text, part.column("chosen").to_pylist(),
                                                             part.column("rejected").to_pylist())
