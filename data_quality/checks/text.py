"""Vectorised word shingles shared by near-duplicate detection and decontamination.

Texts are lower-cased and split into `\\w+` tokens by Polars (Rust), tokens are hashed once, and a k-word
shingle is a mix of k consecutive token hashes computed with numpy shifts over the flat token array, so no
Python code runs per token or per row. A text with fewer than k tokens gives one shingle of all its tokens.
`shingle_set` is the slow pure-Python reference used for ground truth and tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import polars as pl
import pyarrow as pa

_TOKEN = r"\w+"
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_STEP = np.uint64(0x9E3779B97F4A7C15)


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2.x's hash-based unique is ~100x slower on large uint64 arrays, and Polars'
    single-threaded sort takes a third of np.sort's CPU on 64-bit keys (random or sorted in runs)."""
    if x.size == 0:
        return x
    y = pl.Series(x).sort().to_numpy() if x.dtype.kind in "iu" else np.sort(x)
    return y[np.concatenate([[True], y[1:] != y[:-1]])]


def stable_argsort(x: np.ndarray) -> np.ndarray:
    """np.argsort(x, kind="stable"), by Polars for integer keys (half numpy's CPU on 64-bit keys).

    Series.arg_sort sorts (index, value) pairs with a stable sort. Not `arg_sort_by(maintain_order=True)`: that
    expression waits on Polars' thread pool even with one thread, and a child forked from a process that used
    Polars has no pool (bench_near_dup's forked memory measurement hung forever)."""
    if x.dtype.kind not in "iu" or x.size < 1_000:
        return np.argsort(x, kind="stable")
    return pl.Series(x).arg_sort().to_numpy().astype(np.int64)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads structured 64-bit inputs over all bits (wrapping arithmetic on purpose)."""
    # In place on one fresh array and one scratch array: a chain of new arrays would touch fresh pages
    # (page faults) six more times over the whole input.
    out = x >> np.uint64(30)
    out ^= x
    tmp = np.empty_like(out)
    for mul, shift in ((_M1, 27), (_M2, 31)):
        out *= mul
        np.right_shift(out, np.uint64(shift), out=tmp)
        out ^= tmp
    return out


def tokens(texts: pa.Array | pa.ChunkedArray | pl.Series | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(token hashes uint64, per-text token counts int64)."""
    s = pl.Series(texts, dtype=pl.String) if not isinstance(texts, pl.Series) else texts
    # The tokens of `word_tokens` (Rust regex `\w+`): every non-word run becomes one space (the second pass
    # joins spaces the first one left side by side), the ends are stripped, then a literal split, much faster
    # than extract_all. Only a text without any token splits into an empty string, dropped below.
    clean = (s.fill_null("").str.to_lowercase().str.replace_all(r"[^\w ]+| {2,}", " ")
             .str.replace_all(r" {2,}", " ").str.strip_chars(" "))
    lists = clean.str.split(" ")
    counts = lists.list.len().to_numpy().astype(np.int64)
    h = lists.explode().hash(0x5EED).to_numpy()
    empty = (clean.str.len_bytes() == 0).to_numpy()
    if empty.any():
        keep = np.ones(h.size, bool)
        keep[(np.cumsum(counts) - counts)[empty]] = False
        h, counts = h[keep], np.where(empty, 0, counts)
    return h, counts


def shingles(tok: np.ndarray, counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(shingle hashes uint64, row index int64) of k-token shingles; rows without tokens give none."""
    return shingle_levels(tok, counts, (k,))[k]


def shingle_levels(tok: np.ndarray, counts: np.ndarray, ks: Sequence[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """`shingles` for several k from one pass (see `iter_shingle_levels`)."""
    return dict(iter_shingle_levels(tok, counts, ks))


def iter_shingle_levels(tok: np.ndarray, counts: np.ndarray, ks: Sequence[int]
                        ) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """(k, `shingles(tok, counts, k)`) for each k in `ks`, shortest first, from one pass: the running state after
    k-1 steps *is* the k-shingle before mixing, so 3-, 8- and 13-shingles of the same tokens take 12 steps over
    the token array, not 2 + 7 + 12. A level is made when it is reached: a caller that is done with it before
    asking for the next holds one level at a time."""
    n = tok.size
    if n == 0:
        for k in sorted(set(ks)):
            yield k, (np.zeros(0, np.uint64), np.zeros(0, np.int64))
        return
    ends = np.cumsum(counts)
    left = np.repeat(ends, counts) - np.arange(n, dtype=np.int64)  # tokens from each token to its text's end
    wanted = set(ks)
    # Shifted slices over the flat array: shingles that straddle two rows are computed, then masked out.
    h = tok.copy()
    for j in range(0, max(wanted)):
        if 0 < j < n:
            # multiply before xor-ing the next token: (a ^ b) * S would not tell "a b" from "b a"; in place,
            # so the 12 steps make no new arrays
            head = h[: n - j]
            head *= _STEP
            head += np.uint64(j)
            head ^= tok[j:]
        if j + 1 in wanted:
            yield j + 1, _finish(h, tok, counts, ends, left, j + 1)


def _finish(h: np.ndarray, tok: np.ndarray, counts: np.ndarray, ends: np.ndarray, left: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k-shingles from the running state after k-1 steps: whole ones mixed, texts shorter than k added."""
    n_rows, n = counts.size, tok.size
    out_h = [mix64(h[left >= k])]
    out_r = [np.repeat(np.arange(n_rows, dtype=np.int64), np.maximum(counts - k + 1, 0))]
    short = np.flatnonzero((counts > 0) & (counts < k))
    if short.size:  # texts shorter than k: one shingle of all their tokens, same mixing
        start, c = ends[short] - counts[short], counts[short]
        hs = tok[start].copy()
        for j in range(1, k - 1):
            take = j < c
            hs = np.where(take, (hs * _STEP + np.uint64(j)) ^ tok[np.minimum(start + j, n - 1)], hs)
        out_h.append(mix64(hs))
        out_r.append(short.astype(np.int64))
    if len(out_h) == 1:  # no short texts: the arrays as they are (a concatenate would copy them)
        return out_h[0], out_r[0]
    return np.concatenate(out_h), np.concatenate(out_r)


def concat_tokens(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-row concatenation of token streams (in field order): the tokens of the fields joined as one text."""
    counts = np.sum([c for _, c in parts], axis=0).astype(np.int64)
    out = np.empty(int(counts.sum()), dtype=np.uint64)
    offset = np.cumsum(counts) - counts
    for tok, c in parts:
        out[np.repeat(offset - (np.cumsum(c) - c), c) + np.arange(tok.size)] = tok
        offset = offset + c
    return out, counts


def text_shingles(texts: pa.Array | pa.ChunkedArray | pl.Series | list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    tok, counts = tokens(texts)
    return shingles(tok, counts, k)


def word_tokens(text: str) -> list[str]:
    """The tokens of one text as `tokens` defines them: lower-cased runs of the regex engine's Unicode `\\w`.

    Polars' (Rust) `\\w` is not Python's (`m²` is one Python token but `m` for Rust), so the reference takes its
    token boundaries from the same engine; what it checks independently is the shingling and the set algebra."""
    return pl.Series([text], dtype=pl.String).str.to_lowercase().str.extract_all(_TOKEN).item().to_list()


def shingle_set(text: str, k: int) -> set[tuple[str, ...]]:
    """Reference shingles of one text (pure Python sets): the sets the vectorised hashes stand for."""
    toks = word_tokens(text)
    if not toks:
        return set()
    if len(toks) < k:
        return {tuple(toks)}
    return {tuple(toks[i:i + k]) for i in range(len(toks) - k + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0
