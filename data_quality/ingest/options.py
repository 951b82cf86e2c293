"""Ingest settings: every default lives here, so a snapshot's recorded parameters say everything."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from storage.strict import from_dict_strict

PAIRING_RULES = ("best_vs_worst", "best_vs_random", "all_above_margin")
PKU_LABELS = ("better", "safer")


@dataclass(frozen=True)
class IngestOptions:
    # A text field above this many UTF-8 bytes is quarantined: 1 MiB is ~250k tokens, far past any context
    # window, so such a field is a broken export, not a preference.
    max_field_bytes: int = 1 << 20
    # A JSON Lines row over this many bytes is quarantined as soon as it passes the limit, before it is read
    # whole (a row is a few text fields plus metadata; a larger one is a broken export or a decompression bomb).
    max_line_bytes: int = 16 << 20
    # The `raw` column of quarantine keeps at most this many characters of the offending row (marked as cut).
    max_raw_chars: int = 64 << 10
    # Multi-completion rows: how completions become pairs, and the score margin a pair needs.
    pairing: str = "best_vs_worst"
    min_margin: float = 0.0
    seed: int = 0
    # Which completion field holds the score; None tries "score", "overall_score", "rating" in that order
    # (UltraFeedback: None is fine-grained_score; "overall_score" or an aspect such as "helpfulness" also work).
    score_key: str | None = None
    # How many parsed rows format auto-detection looks at.
    detect_rows: int = 64
    # PKU-SafeRLHF: which of its two labels decides chosen: "better" (helpfulness) or "safer".
    pku_label: str = "better"
    # Column mapping {target: source path} for layouts no reader knows (format "mapped"); see ingest/mapping.py.
    columns: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.pairing not in PAIRING_RULES:
            raise ValueError(f"unknown pairing rule {self.pairing!r}; choose one of {list(PAIRING_RULES)}")
        if min(self.max_field_bytes, self.max_line_bytes, self.max_raw_chars, self.detect_rows) <= 0:
            raise ValueError("max_field_bytes, max_line_bytes, max_raw_chars and detect_rows must be positive")
        if self.min_margin < 0:
            raise ValueError("min_margin must be >= 0")
        if self.pku_label not in PKU_LABELS:
            raise ValueError(f"unknown pku_label {self.pku_label!r}; choose one of {list(PKU_LABELS)}")
        if self.columns is not None:
            # Imported here: mapping imports the readers, which import this module.
            from data_quality.ingest.mapping import parse_columns

            object.__setattr__(self, "columns", parse_columns(self.columns))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> IngestOptions:
        return from_dict_strict(cls, d, "ingest option")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
