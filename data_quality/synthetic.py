"""Synthetic preference pairs with planted defects and their ground truth, for tests and the benchmark.

Texts are random pseudo-words, so unrelated rows share (almost) no shingles and every duplicate, near-copy
or contradiction in the output is one that was planted. Rows are built as flat token-id arrays and joined to
strings by Polars, so 2M rows stay fast. Defects (fractions of n):
- near_copy: rejected is chosen with one word replaced (near_identical should drop it)
- exact_dup: a copy of a clean row, whitespace-perturbed and often from another source (dedup)
- near_dup: copies of a clean row with 1..`max_subs` words replaced across the pair text (near_dup); the true
  Jaccard of every pair inside a group is computed with the reference shingler
- empty: an empty or whitespace-only answer (degenerate)
- contradiction: a clean row's answers swapped (contradictions; the original row is labelled too)
- low_margin: scores with a margin <= 0 (margins)
- contaminated: the prompt is one of the returned eval prompts (decontam)
Clean rows have the chosen answer longer with probability `chosen_longer` (a planted length bias).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from data_quality.checks.text import jaccard, shingle_set
from storage.schema import MESSAGE_TYPE, build_pair_table

DEFECTS = ("near_copy", "exact_dup", "near_dup", "empty", "contradiction", "low_margin", "contaminated")
DEFAULT_RATES = {"near_copy": 0.03, "exact_dup": 0.03, "near_dup": 0.04, "empty": 0.01, "contradiction": 0.01,
                 "low_margin": 0.02, "contaminated": 0.005}


@dataclass
class SyntheticData:
    table: pa.Table  # PAIR_SCHEMA
    defect: np.ndarray  # str per row: "clean" or one of DEFECTS ("contradiction" on both rows of a pair)
    base_row: np.ndarray  # int per row: the clean row it was made from, -1 if none
    near_dup_pairs: np.ndarray  # (m, 3) float: row i, row j, true Jaccard, for every pair inside a group
    eval_prompts: list[str] = field(default_factory=list)


def _vocab(rng: np.random.Generator, size: int) -> pl.Series:
    syll = np.array(["ka", "lo", "mi", "ren", "tu", "sa", "vor", "el", "qi", "dan", "po", "shi", "nu", "ex", "ba"])
    parts = rng.integers(0, syll.size, size=(size * 2, 4))
    n_parts = rng.integers(2, 5, size=size * 2)
    words = ["".join(syll[p[:k]]) for p, k in zip(parts, n_parts, strict=True)]
    return pl.Series(list(dict.fromkeys(words))[:size])


def _gather(flat: np.ndarray, lens: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Token segments of rows `idx` (flat ids, lengths)."""
    starts = np.cumsum(lens) - lens
    sel_len = lens[idx]
    pos = np.repeat(starts[idx] - (np.cumsum(sel_len) - sel_len), sel_len) + np.arange(sel_len.sum())
    return flat[pos], sel_len


def _substitute(flat: np.ndarray, lens: np.ndarray, rows: np.ndarray, subs: np.ndarray, vocab: int,
                rng: np.random.Generator) -> None:
    """Replace `subs[i]` random tokens of each row in `rows` (in place)."""
    starts = np.cumsum(lens) - lens
    r = np.repeat(rows, subs)
    ok = lens[r] > 0
    r = r[ok]
    pos = starts[r] + (rng.random(r.size) * lens[r]).astype(np.int64)
    flat[pos] = rng.integers(0, vocab, size=r.size)


def _strings(vocab: pl.Series, flat: np.ndarray, lens: np.ndarray) -> pl.Series:
    words = vocab.gather(flat).to_arrow()
    offsets = pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    return pl.Series(pa.ListArray.from_arrays(offsets, words)).list.join(" ")


def make_synthetic(n: int, *, seed: int = 0, rates: dict[str, float] | None = None, chosen_longer: float = 0.7,
                   vocab_size: int = 20_000, answer_words: tuple[int, int] = (20, 80),
                   prompt_words: tuple[int, int] = (8, 25), max_subs: int = 10, group_max: int = 3,
                   truth: bool = True, sources: int = 3, source_offset: int = 0) -> SyntheticData:
    rates = {**DEFAULT_RATES, **(rates or {})}
    unknown = set(rates) - set(DEFECTS)
    if unknown:
        raise ValueError(f"unknown defect(s): {sorted(unknown)}")
    rng = np.random.default_rng(seed)
    vocab = _vocab(rng, vocab_size)
    V = vocab.len()
    counts = {d: int(round(rates[d] * n)) for d in DEFECTS}
    n_base = n - sum(counts[d] for d in ("exact_dup", "near_dup", "contradiction"))
    # Clean base rows, with the planted length bias.
    p_len = rng.integers(prompt_words[0], prompt_words[1] + 1, n_base)
    a = rng.integers(answer_words[0], answer_words[1] + 1, n_base)
    b = rng.integers(answer_words[0], answer_words[1] + 1, n_base)
    longer = rng.random(n_base) < chosen_longer
    c_len, r_len = np.where(longer, np.maximum(a, b), np.minimum(a, b)), np.where(longer, np.minimum(a, b),
                                                                                   np.maximum(a, b))
    fields = {"p": (rng.integers(0, V, p_len.sum()), p_len), "c": (rng.integers(0, V, c_len.sum()), c_len),
              "r": (rng.integers(0, V, r_len.sum()), r_len)}
    defect = np.full(n_base, "clean", dtype=object)
    # Defects that alter a base row in place, on disjoint rows.
    order = rng.permutation(n_base)
    take = {}
    at = 0
    for d in ("near_copy", "empty", "low_margin", "contaminated"):
        take[d] = np.sort(order[at:at + counts[d]])
        at += counts[d]
        defect[take[d]] = d
    pool = order[at:]  # clean rows that copies may be made from
    # Copies: exact duplicates, near-duplicate groups and swapped (contradicting) rows.
    n_groups = counts["near_dup"]  # an upper bound: groups of 1..group_max-1 copies, trimmed to the count
    group_base = rng.choice(pool, size=min(n_groups, pool.size), replace=False) if n_groups else np.zeros(0, int)
    copies_per = rng.integers(1, group_max, size=group_base.size) if group_base.size else np.zeros(0, int)
    near_src = np.repeat(group_base, copies_per)[: counts["near_dup"]]
    rest = np.setdiff1d(pool, group_base)
    dup_src = rng.choice(rest, size=counts["exact_dup"], replace=True)
    con_src = rng.choice(np.setdiff1d(rest, dup_src), size=counts["contradiction"], replace=False)
    defect[con_src] = "contradiction"
    src_idx = np.concatenate([np.arange(n_base), dup_src, near_src, con_src])
    kind = np.concatenate([defect, np.full(dup_src.size, "exact_dup", object), np.full(near_src.size, "near_dup", object),
                           np.full(con_src.size, "contradiction", object)])
    base_row = np.concatenate([np.full(n_base, -1), dup_src, near_src, con_src])
    toks = {k: _gather(*fields[k], src_idx) for k in fields}
    swapped = np.flatnonzero(kind == "contradiction")[np.isin(np.flatnonzero(kind == "contradiction"),
                                                              np.arange(n_base, src_idx.size))]
    near_rows = np.flatnonzero(kind == "near_dup")
    subs = rng.integers(1, max_subs + 1, near_rows.size)
    total = toks["p"][1][near_rows] + toks["c"][1][near_rows] + toks["r"][1][near_rows]
    share = {k: np.floor(subs * toks[k][1][near_rows] / total).astype(np.int64) for k in ("p", "r")}
    share["c"] = np.maximum(1, subs - share["p"] - share["r"])  # at least one change: a copy must differ
    for k in ("p", "c", "r"):  # substitutions spread over the fields in proportion to their length
        _substitute(toks[k][0], toks[k][1], near_rows, share[k], V, rng)
    text = {k: _strings(vocab, *toks[k]) for k in toks}
    chosen, rejected, prompt = text["c"].to_numpy().astype(object), text["r"].to_numpy().astype(object), \
        text["p"].to_numpy().astype(object)
    chosen[swapped], rejected[swapped] = rejected[swapped].copy(), chosen[swapped].copy()
    # near_copy: rejected becomes chosen with one or two words replaced.
    nc = take["near_copy"]
    c_flat, c_lens = _gather(*fields["c"], nc)
    _substitute(c_flat, c_lens, np.arange(nc.size), np.ones(nc.size, np.int64), V, rng)
    rejected[nc] = _strings(vocab, c_flat, c_lens).to_numpy()
    em = take["empty"]
    which = rng.random(em.size) < 0.5
    chosen[em[which]] = np.where(rng.random(which.sum()) < 0.5, "", "  \n ")
    rejected[em[~which]] = np.where(rng.random((~which).sum()) < 0.5, "", " \t")
    dup_rows = np.flatnonzero(kind == "exact_dup")
    chosen[dup_rows] = [s.replace(" ", "  ", 1) + " " for s in chosen[dup_rows]]  # normalisation must undo it
    eval_prompts = [str(p) for p in prompt[take["contaminated"]]]
    # Scores: a clear margin, except planted low-margin rows (margin <= 0).
    cs = rng.normal(1.0, 0.5, kind.size)
    rs = cs - np.abs(rng.normal(1.0, 0.3, kind.size)) - 0.05
    lm = take["low_margin"]
    rs[lm] = cs[lm] + rng.uniform(0.0, 0.5, lm.size)
    rs[swapped], cs[swapped] = cs[swapped].copy(), rs[swapped].copy()
    src = rng.integers(0, sources, kind.size) + source_offset
    perm = rng.permutation(kind.size)  # copies land anywhere, not only after their originals
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    msgs = pa.StructArray.from_arrays([pa.array(["user"] * kind.size), pa.array(prompt[perm].tolist())],
                                      fields=list(MESSAGE_TYPE))
    table = build_pair_table({
        "prompt": pa.ListArray.from_arrays(pa.array(np.arange(kind.size + 1, dtype=np.int32)), msgs),
        "chosen": chosen[perm].tolist(), "rejected": rejected[perm].tolist(),
        "chosen_score": cs[perm], "rejected_score": rs[perm],
        "source": [f"synth-{s}" for s in src[perm]], "source_row": np.arange(kind.size),
    })
    base_new = np.where(base_row[perm] >= 0, inv[np.maximum(base_row[perm], 0)], -1)
    pairs = _near_dup_truth(table, kind[perm], base_new) if truth else np.zeros((0, 3))
    return SyntheticData(table, kind[perm], base_new, pairs, eval_prompts)


def _near_dup_truth(table: pa.Table, kind: np.ndarray, base: np.ndarray, ngram: int = 3) -> np.ndarray:
    """True Jaccard (reference shingler on the pair text) of every pair inside each near-dup group."""
    rows = np.flatnonzero(kind == "near_dup")
    if rows.size == 0:
        return np.zeros((0, 3))
    p, c, r = (table.column(f).to_pylist() for f in ("prompt_text", "chosen", "rejected"))
    sets: dict[int, set] = {}

    def get(i: int) -> set:
        if i not in sets:
            sets[i] = shingle_set(f"{p[i]}\n{c[i]}\n{r[i]}", ngram)
        return sets[i]
    groups: dict[int, list[int]] = {}
    for i in rows.tolist():
        groups.setdefault(int(base[i]), [int(base[i])]).append(i)
    out = []
    for members in groups.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = sorted((members[x], members[y]))
                out.append((i, j, jaccard(get(i), get(j))))
    return np.array(out, dtype=np.float64)
