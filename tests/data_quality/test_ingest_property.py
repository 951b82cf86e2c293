"""Property tests: random rows and random corruption never raise past ingest and never lose a row."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_quality.ingest import IngestOptions, ingest_files
from data_quality.ingest.formats import REGISTRY
from storage.schema import validate_pair_table

SETTINGS = settings(max_examples=int(os.environ.get("INGEST_HYPOTHESIS_EXAMPLES", "40")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    st.text(max_size=5), c, max_size=3), max_leaves=8)
texts = st.text(max_size=30) | st.sampled_from(["", " ", "a\x00b", "ok answer", "\n\nAssistant:"])
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "x"]),
                                           "content": texts}), max_size=3)
dialogue = st.builds(lambda h, a: f"\n\nHuman: {h}\n\nAssistant: {a}", texts, texts)
labels = st.none() | st.text(max_size=5) | st.sampled_from(["\udc80", "m\x00"]) | st.integers()
completions = st.lists(st.fixed_dictionaries({"response": texts, "score": json_scalars | st.integers(0, 3),
                                              "model": labels}), max_size=4)

# Field -> values that are sometimes right for some format and often wrong: every reader sees junk.
FIELDS = {
    "prompt": texts | messages | json_values,
    "chosen": texts | messages | dialogue | json_values,
    "rejected": texts | messages | dialogue | json_values,
    "instruction": texts,
    "output_1": texts,
    "output_2": texts,
    "generator_1": labels,
    "annotator": labels,
    "preference": st.sampled_from([1, 2, 1.5, 0, None, "1.3", "2", "x", 7]) | json_scalars,
    "completions": completions | json_values,
    # The newer readers' fields (ShareGPT, LLaMA-Factory, PKU, SHP, Nectar, HelpSteer, Arena).
    "conversations": st.lists(st.fixed_dictionaries({"from": st.sampled_from(["human", "gpt", "x"]),
                                                     "value": texts}), max_size=3) | json_values,
    "chosen_messages": messages | json_values,
    "rejected_messages": messages | json_values,
    "response_0": texts,
    "response_1": texts,
    "better_response_id": st.sampled_from([0, 1, 2, "1", None, True]),
    "human_ref_A": texts,
    "human_ref_B": texts,
    "labels": st.sampled_from([0, 1, "1", None, 3]),
    "history": texts,
    "answers": st.lists(st.fixed_dictionaries({"answer": texts, "rank": json_scalars | st.integers(1, 3)}),
                        max_size=3) | json_values,
    "context": messages | json_values,
    "response1": texts,
    "overall_preference": st.sampled_from([-3, 0, 2, "1", None, 9]),
    "conversation_a": messages | json_values,
    "conversation_b": messages | json_values,
    "winner": st.sampled_from(["model_a", "model_b", "tie", "tie (bothbad)", None, "x"]),
}
rows = st.lists(st.dictionaries(st.sampled_from(sorted(FIELDS)), st.just(None), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys})) | json_values, max_size=12)


def _write(path: Path, data: list, container: str) -> Path:
    if container == "json":
        raw = json.dumps(data).encode()
    else:
        raw = b"".join(json.dumps(r).encode() + b"\n" for r in data)
    if container == "jsonl.gz":
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def _check(res) -> None:
    assert res.input_rows == res.pairs.num_rows + res.rejects.num_rows + res.quarantine.num_rows
    validate_pair_table(res.pairs)


@SETTINGS
@given(data=rows, fmt=st.sampled_from(list(REGISTRY)), container=st.sampled_from(["jsonl", "json", "jsonl.gz"]),
       pairing=st.sampled_from(["best_vs_worst", "best_vs_random", "all_above_margin"]))
def test_random_rows_every_row_accounted(data, fmt, container, pairing):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / f"d.{container}", data, container)
        res = ingest_files([path], format=fmt, options=IngestOptions(pairing=pairing), require_pairs=False)
        _check(res)
        if pairing != "all_above_margin" or not REGISTRY[fmt].expands:
            assert res.input_rows == len(data)


@SETTINGS
@given(data=rows, container=st.sampled_from(["jsonl", "json", "jsonl.gz"]), fmt=st.sampled_from(list(REGISTRY)),
       edits=st.lists(st.tuples(st.floats(0, 1), st.binary(max_size=3)), min_size=1, max_size=4),
       cut=st.none() | st.floats(0.1, 1))
def test_random_corruption_never_escapes(data, container, fmt, edits, cut):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / f"d.{container}", data, container)
        blob = bytearray(path.read_bytes())
        for where, junk in edits:  # overwrite bytes at random places, gzip headers and trailers included
            at = int(where * len(blob))
            blob[at:at + len(junk)] = junk
        if cut is not None:
            blob = blob[: int(cut * len(blob))]
        path.write_bytes(bytes(blob))
        _check(ingest_files([path], format=fmt, require_pairs=False))


@SETTINGS
@given(data=st.lists(st.fixed_dictionaries({"prompt": texts, "chosen": texts, "rejected": texts}), max_size=8))
def test_auto_detect_on_standard_rows(data):
    with tempfile.TemporaryDirectory() as tmp:
        res = ingest_files([_write(Path(tmp) / "d.jsonl", data, "jsonl")], require_pairs=False)
        _check(res)
        assert res.input_rows == len(data)
        # A valid-looking standard row is kept unless a field is empty/whitespace or holds NUL.
        def fine(r: dict) -> bool:
            return all(r[k].strip() and "\x00" not in r[k] for k in ("prompt", "chosen", "rejected"))
        assert res.pairs.num_rows == sum(fine(r) for r in data)
