"""Work the gate shares or vectorises must give exactly what the plain definition gives: keys carried from
normalise to later checks, MinHash densification, decontam's prefilter for long n-grams, shingles of several
lengths from one pass, and the shingle sets decontam hands near_dup."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from data_quality.checks import decontam, near_dup_sets, normalise
from data_quality.checks.near_dup_lsh import _EMPTY32, densify
from data_quality.checks.text import _STEP, mix64, shingle_levels
from data_quality.engine import run_in_memory
from data_quality.gate import GateConfig, steps
from data_quality.scale import edited_copy
from storage.schema import build_pair_table

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gate_real_rows.json"
DIRTY = ["a  b ", "caf\u0065\u0301\r\n", "x\n\n\n\ny", "\u200bzero", "tab\there", "  indented\n  code", "plain"]


def _table() -> pa.Table:
    rows = json.loads(FIXTURE.read_text())
    chosen = [r["chosen"] for r in rows] + DIRTY
    rejected = [r["rejected"] for r in rows] + DIRTY[::-1]
    prompts = [[{"role": "user", "content": str(r["prompt"])}] for r in rows] + [[{"role": "user", "content": "q"}]] * 7
    n = len(chosen)
    return build_pair_table({"prompt": prompts, "chosen": chosen, "rejected": rejected, "source": ["s"] * n,
                             "source_row": list(range(n))})


def test_carried_keys_equal_keys_built_from_the_text() -> None:
    """After normalise, `answer_key` reads the carried key columns (null where the key is the text); the keys
    equal `key_text` of the text on real rows and on rows with every kind of foldable whitespace."""
    table = _table()
    out = normalise.run(table, normalise.DEFAULT).kept
    assert set(normalise.KEY_COLUMNS.values()) <= set(out.column_names)
    for side, name in normalise.KEY_COLUMNS.items():
        carried = out.column(name)
        assert 0 < carried.null_count < out.num_rows  # only the rows whose key differs hold one
        # ... and only their bytes: a masked copy of the whole key column would carry every text to every check.
        held = sum(len(k.encode()) for k in carried.to_pylist() if k is not None)
        assert sum(c.buffers()[2].size for c in carried.chunks) == held
        assert normalise.answer_key(out, side).to_pylist() == normalise.key_text(out.column(side)).to_pylist()
        assert normalise.answer_key(out.slice(3, 9), side).to_pylist() == \
            normalise.key_text(out.column(side).slice(3, 9)).to_pylist()
    # Other settings: checks keep building default keys themselves, so nothing is carried.
    other = normalise.run(table, normalise.NormaliseConfig(unicode_form=None)).kept
    assert not set(normalise.KEY_COLUMNS.values()) & set(other.column_names)


def test_keys_fold_only_texts_a_fold_can_change() -> None:
    """key_text folds only the texts `_may_change` picks (non-ASCII, a rewrite pattern, white space at an end)
    and puts them back in place: the keys equal folding every text, on real rows and on every kind of foldable
    text, under every setting, with nulls and slices; a clean column comes back without a copy."""
    rows = json.loads(FIXTURE.read_text())
    odd = [" lead", "trail\u3000", "\u00a0nbsp", "e\u0301", "\ufb01ne", "\u2028sep", "", "   ", "ok", None,
           "x\u200dy", "\t\tcode", "a\r\nb", "a \nb", "Caf\u00e9  au  lait"]
    texts = [r[f] for r in rows for f in ("chosen", "rejected")] + DIRTY + odd
    arr = pa.chunked_array([pa.array(texts[:40], pa.string()), pa.array(texts[40:], pa.string())])
    for cfg in (normalise.DEFAULT, normalise.NormaliseConfig(unicode_form="NFKC"),
                normalise.NormaliseConfig(unicode_form=None), normalise.NormaliseConfig(collapse_whitespace=False),
                normalise.NormaliseConfig(unicode_form=None, collapse_whitespace=False)):
        for part in (arr, arr.slice(7, 50)):
            whole = part.cast(pa.large_string()).combine_chunks()
            assert normalise.key_text(part, cfg).to_pylist() == normalise._fold(whole, cfg).to_pylist(), cfg
    clean = pa.array(["plain text", "two words"], pa.large_string())
    assert normalise.key_text(clean).buffers()[2].address == clean.buffers()[2].address


def test_end_check_and_strip_agree_on_every_code_point() -> None:
    """A text with white space at an end is picked by the regex `\\s` and stripped by strip_chars: both must
    mean the same characters, or a key would keep a space its text's fold removes."""
    import polars as pl

    chars = pl.Series([chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF])
    stripped = (chars.str.strip_chars().str.len_bytes() == 0).to_numpy()
    assert np.array_equal(stripped, chars.str.contains(r"^\s").to_numpy()) and stripped.sum() >= 25


def _densify_reference(raw: np.ndarray) -> np.ndarray:
    """The definition, one bin at a time: an empty bin takes the next non-empty bin to its right (circularly)
    plus its distance << 32; a row without any non-empty bin stays empty."""
    n, k = raw.shape
    out = raw.astype(np.uint64)
    for i in range(n):
        for j in range(k):
            if raw[i, j] != _EMPTY32:
                continue
            for dist in range(1, k):
                v = raw[i, (j + dist) % k]
                if v != _EMPTY32:
                    out[i, j] = np.uint64(v) + (np.uint64(dist) << np.uint64(32))
                    break
    return out


def test_densify_equals_its_definition() -> None:
    rng = np.random.default_rng(7)
    for _ in range(60):
        n, k = int(rng.integers(1, 12)), int(rng.integers(1, 40))
        raw = rng.integers(0, 2**32 - 1, (n, k), dtype=np.uint64).astype(np.uint32)
        raw[rng.random((n, k)) < rng.random()] = _EMPTY32
        raw[0] = _EMPTY32
        got = densify(raw)
        assert got.dtype == np.uint64 and np.array_equal(got, _densify_reference(raw))
    # Past a few thousand rows densify works block by block: the blocks must join up row for row.
    raw = rng.integers(0, 2**32 - 1, (9_001, 5), dtype=np.uint64).astype(np.uint32)
    raw[rng.random(raw.shape) < 0.6] = _EMPTY32
    assert np.array_equal(densify(raw), _densify_reference(raw))


@pytest.mark.parametrize("long_ngram", [12, 13])
def test_long_ngram_prefilter_keeps_every_hit(long_ngram: int) -> None:
    """Long shared runs are found through a bitmap of their low hash bits, then confirmed exactly: the item named
    is the one a lookup of every shingle names."""
    item = "please list the ten largest cities in the north of england ordered by their population in 2021"
    words = item.split()
    rows = [f"intro {' '.join(words[:13])} outro", f"{' '.join(words[:12])} then something else entirely",
            "unrelated text about cooking pasta with garlic and olive oil for dinner tonight please"]
    t = build_pair_table({"prompt": [[{"role": "user", "content": r}] for r in rows], "chosen": ["a"] * 3,
                          "rejected": ["b"] * 3, "source": ["s"] * 3, "source_row": [0, 1, 2]})
    cfg = decontam.DecontamConfig(min_fraction=1.0, long_ngram=long_ngram)
    d = decontam.decide(t, cfg, [item, "another eval question about rivers"])
    expect = [True, long_ngram <= 12, False]
    assert d.drop.tolist() == expect
    assert [x for x in d.duplicate_of if x] == ["eval:0"] * sum(expect)


def _shingles_reference(tok: np.ndarray, counts: np.ndarray, k: int) -> list[tuple[int, int]]:
    """(row, hash) of every k-shingle, text by text: the recurrence h = (h * STEP + j) ^ token[j] over k
    tokens, mixed; a text shorter than k gives one shingle of all its tokens."""
    out, at = [], 0
    with np.errstate(over="ignore"):
        for row, c in enumerate(counts.tolist()):
            t = tok[at:at + c]
            starts = range(c - k + 1) if c >= k else ([0] if c else [])
            for i in starts:
                h = t[i]
                for j in range(1, min(k, c)):
                    h = (h * _STEP + np.uint64(j)) ^ t[i + j]
                out.append((row, int(mix64(np.array([h]))[0])))
            at += c
    return sorted(out)


def test_shingle_levels_equal_one_length_at_a_time() -> None:
    rng = np.random.default_rng(3)
    for _ in range(40):
        counts = rng.integers(0, 18, int(rng.integers(1, 12))).astype(np.int64)
        tok = rng.integers(0, 2**63, int(counts.sum()), dtype=np.uint64)
        ks = sorted({int(k) for k in rng.integers(1, 15, 3)})
        for k, (h, row) in shingle_levels(tok, counts, ks).items():
            assert sorted(zip(row.tolist(), h.tolist(), strict=True)) == _shingles_reference(tok, counts, k)


def test_decontam_hands_near_dup_its_shingles(monkeypatch) -> None:
    """In memory, near_dup takes the answers' shingle sets decontam made: the same decisions, and near_dup
    tokenises no answer again (only the prompts of candidate rows, a field it does not band)."""
    base = _table()
    table = pa.concat_tables([base, edited_copy(base, 1).select(base.column_names).cast(base.schema)])
    rows = json.loads(FIXTURE.read_text())
    eval_prompts = [str(r["prompt"]) for r in rows[::5]]  # real prompts: some rows are contaminated
    calls: list[int] = []
    real_tokens = near_dup_sets.tokens

    def counting(texts):
        calls.append(len(texts))
        return real_tokens(texts)

    monkeypatch.setattr(near_dup_sets, "tokens", counting)
    out = {}
    for share in (False, True):
        calls.clear()
        res = run_in_memory(table, steps(GateConfig(), eval_prompts, share_shingles=share), {})
        out[share] = (res.kept.column("pair_id").to_pylist(), res.rejects.to_pylist(), list(calls))
    assert out[True][:2] == out[False][:2]
    assert res.stats["checks"]["decontam"]["dropped"] and res.stats["checks"]["near_dup"]["dropped"]
    assert len(out[False][2]) >= 2  # chosen and rejected tokenised by near_dup
    assert len(out[True][2]) <= 1 and sum(out[True][2]) < table.num_rows  # at most the candidates' prompts


def test_shingle_cache_gives_nothing_unless_it_holds_every_text() -> None:
    sh = np.arange(6, dtype=np.uint64)
    row = np.array([0, 0, 1, 1, 1, 2])
    for wanted, expect in (([30, 10], [3, 2]), ([10, 99], None)):
        cache = near_dup_sets.ShingleCache(3, ["chosen"])
        cache.add("chosen", np.array([10, 30, 20], np.uint64), sh, row)
        cache.add("prompt_text", np.array([1], np.uint64), sh[:1], row[:1])  # not a field it keeps
        got = cache.take("chosen", np.array(wanted, np.uint64))
        assert (got[1].tolist() if got is not None else None) == expect
        assert cache.take("chosen", np.array(wanted, np.uint64)) is None  # taken once
        assert cache.take("prompt_text", np.array([1], np.uint64)) is None


def test_repeated_answer_groups_equal_windows_over_every_row() -> None:
    """group_stats builds groups for repeated answers only; every row's figures must equal the plain windows
    over all rows, in row order, whatever order the row ids come in (the cluster executor passes shuffled ids)."""
    import polars as pl

    from data_quality.checks.repeated_answer import group_stats

    rng = np.random.default_rng(5)
    n = 5_000
    df = pl.DataFrame({"h": rng.integers(0, 1_500, n).astype(np.uint64), "chars": rng.integers(0, 99, n).astype(np.uint32),
                       "pid": [f"p{i}" for i in rng.integers(0, 300, n)], "row": rng.permutation(n) * 3})
    expect = df.with_columns(n_prompts=pl.col("pid").n_unique().over("h"), first=pl.col("row").min().over("h"),
                             second=pl.col("row").bottom_k(2).max().over("h"))
    got = group_stats(df)
    assert got.equals(expect) and got.schema == expect.schema
    assert (got.get_column("n_prompts") == 1).sum() > 100 and (got.get_column("n_prompts") > 2).sum() > 100


def test_stable_argsort_is_numpys_stable_argsort() -> None:
    """Bucket members and distinct texts are numbered in row order through it: ties must keep input order."""
    from data_quality.checks.text import stable_argsort

    rng = np.random.default_rng(11)
    for dtype, n, card in ((np.uint64, 50_000, 300), (np.int64, 20_000, 2**40), (np.uint32, 999, 5),
                           (np.float64, 3_000, 7)):
        x = rng.integers(0, card, n).astype(dtype)
        assert np.array_equal(stable_argsort(x), np.argsort(x, kind="stable"))


_FORKED_SORT = """
import os, sys
import numpy as np
from data_quality.checks.text import stable_argsort
x = np.random.default_rng(3).integers(0, 500, 100_000).astype(np.uint64)
stable_argsort(x)  # the parent starts Polars' thread pool first, as a loaded benchmark has by then
pid = os.fork()
if pid == 0:
    os._exit(0 if np.array_equal(stable_argsort(x), np.argsort(x, kind="stable")) else 3)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_stable_argsort_works_in_a_forked_child() -> None:
    """bench_near_dup measures each side's memory in a child forked from the loaded process, Polars on one thread.
    A forked child has no Polars thread pool, and an expression that waits on it (`arg_sort_by`) hung there
    forever. The sort must finish there, and equal numpy's."""
    import subprocess
    import sys

    env = {**os.environ, "POLARS_MAX_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    try:
        done = subprocess.run([sys.executable, "-c", _FORKED_SORT], env=env, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("stable_argsort hung in a forked child")
    assert done.returncode == 0


def test_cached_shingles_become_the_sets_near_dup_builds_itself() -> None:
    """decontam caches raw shingles (texts shorter than 3 words included, repeats kept); near_dup's exact sets
    made from them for some rows equal the sets it builds from the text, and signatures need no sets."""
    from data_quality.checks import near_dup
    from data_quality.checks.text import shingles, tokens

    table = _table()
    texts = pa.array(["ok", "no no no no", "", "a b"] + table.column("chosen").to_pylist())
    t = pa.table({"chosen": texts})
    cfg = near_dup.NearDupConfig()
    src = near_dup.TableTexts(t)
    direct = near_dup.Field(src, "chosen", cfg)
    cache = near_dup.ShingleCache(cfg.ngram, ["chosen"])
    first = direct.first
    sh, row = shingles(*tokens(texts.take(pa.array(first))), cfg.ngram)
    cache.add("chosen", direct.text_hash, sh, row)
    raw = near_dup.Field(src, "chosen", cfg, cache=cache)
    assert not raw.exact and direct.exact
    rows = np.arange(0, t.num_rows, 3)
    exact = raw.exact_for(rows)
    for text in np.unique(direct.inv[rows]):
        a, b = direct.offsets[text], exact.offsets[text]
        assert np.array_equal(direct.values[a:a + direct.sizes[text]], exact.values[b:b + exact.sizes[text]])
    with pytest.raises(ValueError, match="exact"):
        near_dup.field_overlap(raw, np.array([[0, 1]]))
