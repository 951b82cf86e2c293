"""Pair rules: turn scored generations (n answers per prompt) into preference pairs.

Every candidate pair a rule considers ends either in `pairs` or in `dropped` with a reason (tie, margin below
the minimum, over the per-prompt cap), so a round can publish the dropped ones as rejects and the row counts
add up. Generated pairs then go through the same quality gate as offline data.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa
import xxhash

from storage.schema import REJECTS_SCHEMA, build_pair_table, rejects_table
from storage.strict import from_dict_strict

REQUIRED = ("prompt_id", "prompt", "sample_index", "response", "score")
CANDIDATE_COLS = ["prompt_id", "c_row", "r_row", "c_score", "r_score", "c_idx", "r_idx"]
# What to do with an answer cut at max_new_tokens (stop_reason "length"). Its token ids never get an EOS.
#   keep: pair it like any other answer (trained on as sampled, without EOS)
#   drop: leave it out before pairing, so no pair contains a truncated answer
#   loss: it loses to every answer that stopped (its score becomes the round's lowest score minus 1), so it
#         can only be a rejected answer, and two truncated answers tie and never pair
TRUNCATED_POLICIES = ("keep", "drop", "loss")


@dataclass(frozen=True)
class PairingConfig:
    rule: str = "best_vs_worst"  # key of RULES
    min_margin: float = 0.0  # chosen_score - rejected_score must be >= this (and > 0: ties never pair)
    max_pairs_per_prompt: int | None = None  # keep the largest-margin pairs of a prompt
    seed: int = 0  # best_vs_random_lower's draw
    truncated: str = "keep"  # TRUNCATED_POLICIES

    def __post_init__(self) -> None:
        if self.truncated not in TRUNCATED_POLICIES:
            raise ValueError(f"truncated must be one of {TRUNCATED_POLICIES}, got {self.truncated!r}")
        if self.rule not in RULES:
            raise ValueError(f"unknown pair rule {self.rule!r}; known: {sorted(RULES)}")
        if self.min_margin < 0:
            raise ValueError(f"min_margin must be >= 0, got {self.min_margin}")
        if self.max_pairs_per_prompt is not None and self.max_pairs_per_prompt < 1:
            raise ValueError(f"max_pairs_per_prompt must be >= 1 or None, got {self.max_pairs_per_prompt}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairingConfig:
        return from_dict_strict(cls, d)


@dataclass
class PairingResult:
    pairs: pa.Table  # PAIR_SCHEMA
    dropped: pa.Table  # REJECTS_SCHEMA, rule "pairing:<rule>", reason tie | below_min_margin | over_cap
    stats: dict[str, Any]


def _ranked(g: pl.DataFrame) -> pl.DataFrame:
    return g.sort(["prompt_id", "score", "sample_index"], descending=[False, True, False])


def _best_vs_worst(g: pl.DataFrame, cfg: PairingConfig) -> pl.DataFrame:
    agg = _ranked(g).group_by("prompt_id", maintain_order=True).agg(
        pl.col("row").first().alias("c_row"), pl.col("row").last().alias("r_row"),
        pl.col("score").first().alias("c_score"), pl.col("score").last().alias("r_score"),
        pl.col("sample_index").first().alias("c_idx"), pl.col("sample_index").last().alias("r_idx"),
        pl.len().alias("k"))
    return agg.filter(pl.col("k") >= 2).select(CANDIDATE_COLS)


def _best_vs_random_lower(g: pl.DataFrame, cfg: PairingConfig) -> pl.DataFrame:
    ranked = _ranked(g).with_columns(pl.int_range(pl.len()).over("prompt_id").alias("rank"))
    best = ranked.filter(pl.col("rank") == 0).select(
        "prompt_id", pl.col("row").alias("c_row"), pl.col("score").alias("c_score"),
        pl.col("sample_index").alias("c_idx"))
    others = ranked.filter(pl.col("rank") > 0).join(best, on="prompt_id")
    # A draw fixed by the seed and the answer's identity, so re-running a round picks the same partner.
    draw = [xxhash.xxh3_64_intdigest(f"{cfg.seed}\x1f{p}\x1f{i}".encode())
            for p, i in zip(others["prompt_id"].to_list(), others["sample_index"].to_list(), strict=True)]
    others = others.with_columns(
        pl.Series("draw", draw, dtype=pl.UInt64),
        ((pl.col("c_score") - pl.col("score")) >= cfg.min_margin).and_(pl.col("score") < pl.col("c_score"))
        .alias("eligible"))
    first_eligible = (others.filter(pl.col("eligible")).sort(["prompt_id", "draw"])
                      .group_by("prompt_id", maintain_order=True).first())
    # A prompt with no eligible partner offers its worst answer, which `_classify` then drops with the reason.
    fallback = (others.join(first_eligible.select("prompt_id"), on="prompt_id", how="anti")
                .sort(["prompt_id", "rank"], descending=[False, True]).group_by("prompt_id", maintain_order=True)
                .first())
    return pl.concat([first_eligible, fallback]).select(
        "prompt_id", "c_row", pl.col("row").alias("r_row"), "c_score", pl.col("score").alias("r_score"), "c_idx",
        pl.col("sample_index").alias("r_idx"))


def _all_above_margin(g: pl.DataFrame, cfg: PairingConfig) -> pl.DataFrame:
    a = g.select("prompt_id", pl.col("row").alias("c_row"), pl.col("score").alias("c_score"),
                 pl.col("sample_index").alias("c_idx"))
    b = g.select("prompt_id", pl.col("row").alias("r_row"), pl.col("score").alias("r_score"),
                 pl.col("sample_index").alias("r_idx"))
    # Each unordered pair once, oriented higher score first (ties by sample_index, and reported as ties).
    return a.join(b, on="prompt_id").filter(
        (pl.col("c_score") > pl.col("r_score"))
        | ((pl.col("c_score") == pl.col("r_score")) & (pl.col("c_idx") < pl.col("r_idx")))
    ).select(CANDIDATE_COLS)


RULES: dict[str, Callable[[pl.DataFrame, PairingConfig], pl.DataFrame]] = {
    "best_vs_worst": _best_vs_worst,
    "best_vs_random_lower": _best_vs_random_lower,
    "all_above_margin": _all_above_margin,
}


def _classify(cands: pl.DataFrame, cfg: PairingConfig) -> pl.DataFrame:
    margin = pl.col("c_score") - pl.col("r_score")
    reason = (pl.when(margin <= 0).then(pl.lit("tie"))
              .when(margin < cfg.min_margin).then(pl.lit("below_min_margin"))
              .otherwise(pl.lit(None, dtype=pl.String)))
    out = cands.with_columns(margin.alias("margin"), reason.alias("reason"))
    if cfg.max_pairs_per_prompt is not None:
        ok = pl.col("reason").is_null()
        taken = ok.cast(pl.Int64).cum_sum().over("prompt_id")
        out = (out.sort(["prompt_id", "margin", "c_idx", "r_idx"], descending=[False, True, False, False])
               .with_columns(pl.when(ok & (taken > cfg.max_pairs_per_prompt)).then(pl.lit("over_cap"))
                             .otherwise(pl.col("reason")).alias("reason"))
               .sort("source_row"))
    return out


def build_pairs(scored: pa.Table, cfg: PairingConfig | dict[str, Any], *, round: int,
                judge: str | None = None) -> PairingResult:
    """Pairs from scored generations (columns prompt_id, prompt, sample_index, response, score; optional
    model and judge, as produced by generate() and judges.score()). `round` sets round and source."""
    if isinstance(cfg, dict):
        cfg = PairingConfig.from_dict(cfg)
    missing = [c for c in REQUIRED if c not in scored.column_names]
    if missing:
        raise ValueError(f"scored generations are missing columns {missing}")
    g = pl.from_arrow(scored.select(["prompt_id", "sample_index", "score"]))
    assert isinstance(g, pl.DataFrame)
    g = g.with_columns(pl.col("score").cast(pl.Float64), pl.Series("truncated", truncated_mask(scored))
                       ).with_row_index("row").with_columns(pl.col("row").cast(pl.Int64))
    usable = g.filter(pl.col("score").is_not_null() & pl.col("score").is_not_nan())
    scored_ok = usable.height
    if cfg.truncated == "drop":
        usable = usable.filter(~pl.col("truncated"))
    elif cfg.truncated == "loss" and usable.height:
        floor = float(usable["score"].min()) - 1.0  # type: ignore[arg-type]
        usable = usable.with_columns(pl.when(pl.col("truncated")).then(pl.lit(floor)).otherwise(pl.col("score"))
                                     .alias("score"))
    cands = RULES[cfg.rule](usable, cfg)
    # One deterministic numbering shared by kept and dropped candidates: (source, source_row) is unique.
    order = g.group_by("prompt_id", maintain_order=True).agg(pl.col("row").min().alias("first_row"))
    cands = (cands.join(order, on="prompt_id").sort(["first_row", "c_idx", "r_idx"])
             .with_row_index("source_row").with_columns(pl.col("source_row").cast(pl.Int64)))
    cands = _classify(cands, cfg)
    kept, dropped = cands.filter(pl.col("reason").is_null()), cands.filter(pl.col("reason").is_not_null())
    rule_name = f"pairing:{cfg.rule}"
    params = json.dumps({"min_margin": cfg.min_margin, "max_pairs_per_prompt": cfg.max_pairs_per_prompt,
                         "seed": cfg.seed, "truncated": cfg.truncated}, sort_keys=True)
    pairs = _to_pairs(scored, kept, round, judge)
    dropped_t = (rejects_table(_to_pairs(scored, dropped, round, judge), rule_name,
                               dropped["reason"].to_list(), params)
                 if dropped.height else REJECTS_SCHEMA.empty_table())
    reasons = dropped.group_by("reason").len().sort("reason")
    stats = {
        "rule": cfg.rule, "params": json.loads(params), "round": round,
        "prompts": g["prompt_id"].n_unique(), "responses": g.height,
        "responses_missing_score": g.height - scored_ok,
        "responses_truncated": int(g["truncated"].sum()),
        "responses_truncated_dropped": scored_ok - usable.height,
        "pairs_truncated_chosen": _count_truncated(g, kept, "c_row"),
        "pairs_truncated_rejected": _count_truncated(g, kept, "r_row"),
        "candidates": cands.height, "pairs": kept.height, "dropped": dropped.height,
        "dropped_by_reason": dict(zip(reasons["reason"].to_list(), reasons["len"].to_list(), strict=True)),
        "prompts_with_pairs": kept["prompt_id"].n_unique(),
        "mean_margin": float(kept["margin"].mean()) if kept.height else None,  # type: ignore[arg-type]
    }
    return PairingResult(pairs, dropped_t, stats)


def truncated_mask(scored: pa.Table) -> list[bool]:
    """Answers cut at max_new_tokens: stop_reason "length" (or finish_reason "length" for older tables)."""
    for col in ("stop_reason", "finish_reason"):
        if col in scored.column_names:
            return [r == "length" for r in scored.column(col).to_pylist()]
    return [False] * scored.num_rows


def _count_truncated(g: pl.DataFrame, kept: pl.DataFrame, side: str) -> int:
    return int(g["truncated"].gather(kept[side]).sum()) if kept.height else 0


def _to_pairs(scored: pa.Table, cands: pl.DataFrame, round: int, judge: str | None) -> pa.Table:
    c_rows = pa.array(cands["c_row"].to_list(), pa.int64())
    r_rows = pa.array(cands["r_row"].to_list(), pa.int64())
    n = cands.height

    def col(name: str, rows: pa.Array) -> pa.Array | list[None]:
        return scored.column(name).take(rows) if name in scored.column_names else [None] * n

    judge_col = [judge] * n if judge is not None else col("judge", c_rows)
    return build_pair_table({
        "prompt": scored.column("prompt").take(c_rows),
        "chosen": scored.column("response").take(c_rows),
        "rejected": scored.column("response").take(r_rows),
        "chosen_score": cands["c_score"].to_list(),
        "rejected_score": cands["r_score"].to_list(),
        "chosen_model": col("model", c_rows),
        "rejected_model": col("model", r_rows),
        "judge": judge_col,
        "source": [f"round-{round}"] * n,
        "source_row": cands["source_row"].to_list(),
        "round": [round] * n,
        # The sampled ids travel with the pair: training uses them as sampled (dpo_train.sampled_pairs).
        "prompt_token_ids": col("prompt_token_ids", c_rows),
        "chosen_token_ids": col("token_ids", c_rows),
        "rejected_token_ids": col("token_ids", r_rows),
        "chosen_stop": col("stop_reason", c_rows),
        "rejected_stop": col("stop_reason", r_rows),
    })
