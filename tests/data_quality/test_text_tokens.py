"""The vectorised shingles and the pure-Python reference stand for the same sets, on the characters where
Python's and Rust's `\\w` disagree. A real AlpacaEval answer ("square meters (m²)") was judged a near-duplicate at
J 0.803 by the check and 0.786 by a reference that tokenised with Python's `\\w`."""

import pytest

from data_quality.checks.text import jaccard, shingle_set, text_shingles

TEXTS = [
    "the most common units of area are square meters (m²), square centimeters (cm²)",
    "Chapter Ⅻ: the Ⓐ circled letter and x³ + y³",
    "emoji 😀 between words 😀 and_underscores stay one token",
    "",
    "two words",
]


@pytest.mark.parametrize("text", TEXTS)
def test_vectorised_shingles_are_the_reference_sets(text):
    h, row = text_shingles([text], 3)
    assert len(set(h.tolist())) == len(shingle_set(text, 3))


def test_jaccard_of_hashes_equals_the_reference():
    a, b = TEXTS[0], TEXTS[0].replace("(cm²)", "(cm)")
    h, row = text_shingles([a, b], 3)
    sa, sb = set(h[row == 0].tolist()), set(h[row == 1].tolist())
    assert len(sa & sb) / len(sa | sb) == pytest.approx(jaccard(shingle_set(a, 3), shingle_set(b, 3)))
