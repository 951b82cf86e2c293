"""The gate out of core: the same checks, in the same order, over a Parquet file of any size.

Memory is bounded by the batch size and DuckDB's memory limit, not by the number of rows:
1. Batches: normalise and degenerate are applied; near_identical and decontam are *decided* per row (their
   reasons stored, applied later at their place in the order); survivors go to a stage file, and narrow keys
   (hashes, scores, lengths, MinHash band keys) to a keys file.
2. DuckDB, spilling to disk: contradictions, dedup, the deferred row-local reasons, margins and near-dup
   candidates (LSH buckets) are decided in gate order as SQL over the keys; near-dup candidates are verified
   by exact Jaccard, joining the shingle sets of candidate rows only.
3. Length balancing needs only |length difference| bins: the per-row arithmetic runs on two small arrays.
4. Batches again: drops become rejects, weights are attached, kept rows are written.
Rows whose decision was made in step 1 or 2 never hold their text in memory beyond one batch.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from data_quality.checks import decontam, degenerate, length_bias, near_dup, near_identical, normalise
from data_quality.checks.base import params_json
from data_quality.checks.text import sorted_unique
from storage.schema import PAIR_SCHEMA, REJECTS_SCHEMA, conform, rejects_table


def _keys(t: pa.Table, gid0: int, ni: np.ndarray, dc: np.ndarray, cfg: Any,
          nd_keys: tuple[np.ndarray, np.ndarray] | None) -> tuple[pa.Table, pa.Table]:
    n = t.num_rows
    margin, prob = (np.asarray(a) for a in _margins(t))
    lc, lr = length_bias.lengths(t, cfg.length_bias.unit)
    cols = {
        "gid": np.arange(gid0, gid0 + n, dtype=np.int64), "pair_id": t.column("pair_id"),
        "prompt_id": t.column("prompt_id"),
        "hc": pl.Series(t.column("chosen")).hash(11).to_numpy(), "hr": pl.Series(t.column("rejected")).hash(11).to_numpy(),
        "src": t.column("source"), "margin": margin, "prob": prob, "lc": lc, "lr": lr,
        "w": t.column("weight"), "ni": pa.array(ni, pa.string()), "dc": pa.array(dc, pa.string()),
    }
    nd_cfg = cfg.near_dup
    if nd_keys is not None:
        keys, ok = nd_keys
    elif nd_cfg.enabled and n:
        keys, ok = near_dup.chunk_band_keys(near_dup.pair_text(t, nd_cfg.fields), nd_cfg)
    else:
        keys, ok = np.zeros((n, 0), np.uint64), np.zeros(n, bool)
    cols["nd_ok"] = ok
    bands = pa.table({"gid": np.repeat(cols["gid"][ok], keys.shape[1]),
                      "band": np.tile(np.arange(keys.shape[1], dtype=np.int16), int(ok.sum())),
                      "key": keys[ok].ravel()})
    return pa.table(cols), bands


def _batches(path: str | Path, batch_size: int, columns: list[str] | None = None) -> Any:
    # pre_buffer would keep every row group's I/O buffers alive while iterating: memory grows with the file.
    return pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=batch_size, columns=columns)


def _margins(t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    from data_quality.checks.margins import margin_arrays

    return margin_arrays(t)


def _deferred(t: pa.Table, cfg: Any, eval_prompts: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Row-local decisions applied later in gate order; decontam's tokenising pass also yields near-dup keys."""
    n = t.num_rows
    ni = np.full(n, None, object)
    dc = np.full(n, None, object)
    st: dict = {}
    if cfg.near_identical.enabled and n:
        d = near_identical.decide(t, cfg.near_identical)
        ni[d.drop] = d.reason[d.drop]
        st["similarity_hist"] = d.stats["similarity_hist"]
    if cfg.decontam.enabled and eval_prompts and n:
        d = decontam.decide(t, cfg.decontam, eval_prompts, cfg.near_dup if cfg.near_dup.enabled else None)
        dc[d.drop] = d.reason[d.drop]
        st["near_dup_keys"] = d.extra.get("near_dup_keys")
    return ni, dc, st


def _add_hist(acc: dict | None, h: dict | None) -> dict | None:
    if not h or not h.get("counts"):
        return acc
    if acc is None:
        return {"edges": h["edges"], "counts": list(h["counts"])}
    acc["counts"] = [a + b for a, b in zip(acc["counts"], h["counts"], strict=True)]
    return acc


def run_gate_streaming(in_path: str | Path, out_path: str | Path, cfg: Any = None, *,
                       eval_prompts: Sequence[str] | None = None, rejects_path: str | Path | None = None,
                       batch_rows: int = 50_000, tmp_dir: str | Path | None = None,
                       memory_limit: str = "300MB", threads: int | None = None) -> dict[str, Any]:
    """Gate `in_path` (Parquet, PAIR_SCHEMA) into `out_path` (+ `rejects_path`); returns the stats dict."""
    from data_quality.gate import GateConfig

    cfg = cfg or GateConfig()
    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        tmpd = Path(tmp)
        stage, keys_path, bands_path = tmpd / "stage.parquet", tmpd / "keys.parquet", tmpd / "bands.parquet"
        rej_w = pq.ParquetWriter(rejects_path or tmpd / "rejects.parquet", REJECTS_SCHEMA)
        stage_w = keys_w = bands_w = None
        n_in = gid = 0
        dropped: dict[str, dict[str, int]] = {}
        sim_hist = None
        for batch in _batches(in_path, batch_size=batch_rows):
            t = conform(pa.Table.from_batches([batch]))
            n_in += t.num_rows
            pa.default_memory_pool().release_unused()
            for name, on, fn in (("normalise", cfg.normalise.enabled, lambda x: normalise.run(x, cfg.normalise)),
                                 ("degenerate", cfg.degenerate.enabled,
                                  lambda x: degenerate.run(x, cfg.degenerate))):
                if on:
                    res = fn(t)
                    t = res.kept
                    if res.rejects.num_rows:
                        rej_w.write_table(res.rejects)
                    for r, c in res.stats.get("dropped", {}).items():
                        dropped.setdefault(name, {})[r] = dropped.get(name, {}).get(r, 0) + c
            ni, dc, st = _deferred(t, cfg, eval_prompts)
            sim_hist = _add_hist(sim_hist, st.get("similarity_hist"))
            k, bk = _keys(t, gid, ni, dc, cfg, st.get("near_dup_keys"))
            stage_w = stage_w or pq.ParquetWriter(stage, PAIR_SCHEMA)
            keys_w = keys_w or pq.ParquetWriter(keys_path, k.schema)
            bands_w = bands_w or pq.ParquetWriter(bands_path, bk.schema)
            stage_w.write_table(conform(t), row_group_size=batch_rows)
            keys_w.write_table(k)
            bands_w.write_table(bk)
            gid += t.num_rows
        for w in (stage_w, keys_w, bands_w):
            if w is not None:
                w.close()
        # A database file, not :memory:, so DuckDB can evict its tables and keep to memory_limit.
        con = duckdb.connect(str(tmpd / "gate.duckdb"),
                             config={"memory_limit": memory_limit, "temp_directory": str(tmpd / "duck"),
                                     "preserve_insertion_order": False, **({"threads": threads} if threads else {})})
        stats = _decide(con, keys_path, bands_path, stage, cfg) if gid else {}
        weights, lb_stats = _length_bias(con, gid, cfg) if gid else (np.zeros(0), {})
        n_kept = _write(stage, out_path, rej_w, con, weights, cfg, batch_rows, gid)
        rej_w.close()
        con.close()
    checks = {**stats, "length_bias": lb_stats}
    if sim_hist:
        checks.setdefault("near_identical", {})["similarity_hist"] = sim_hist
    for name, d in dropped.items():
        checks.setdefault(name, {})["dropped"] = d
    drops_by = {f"{c}:{r}": v for c, st in checks.items() for r, v in st.get("dropped", {}).items()}
    return {"input_rows": n_in, "kept": n_kept, "rejected": n_in - n_kept, "drops_by_reason": drops_by,
            "checks": checks, "config": cfg.to_dict(), "streaming": True}


_CONTRA = """CREATE VIEW contra AS WITH a AS (SELECT gid, prompt_id, least(hc, hr) lo, greatest(hc, hr) hi, hc < hr fwd FROM alive),
  g AS (SELECT prompt_id, lo, hi, sum(fwd::INT) nf, count(*) - sum(fwd::INT) nb,
        min(CASE WHEN fwd THEN gid END) ff, min(CASE WHEN NOT fwd THEN gid END) fb
        FROM a GROUP BY ALL HAVING nf > 0 AND nb > 0)
  SELECT a.gid, a.fwd, g.nf, g.nb, g.ff, g.fb FROM a JOIN g USING (prompt_id, lo, hi)"""
_SQL = {
    "contradictions:drop_both": "INSERT INTO drops SELECT gid, 'contradictions', 'contradiction', NULL FROM contra",
    "contradictions:keep_majority": "INSERT INTO drops SELECT c.gid, 'contradictions', "
        "CASE WHEN nf = nb THEN 'contradiction_tie' ELSE 'contradiction_minority' END, "
        "CASE WHEN nf = nb THEN NULL ELSE k.pair_id END FROM contra c "
        "LEFT JOIN keys k ON k.gid = CASE WHEN c.fwd THEN c.fb ELSE c.ff END "
        "WHERE nf = nb OR (c.fwd AND nf < nb) OR (NOT c.fwd AND nb < nf)",
    "dedup": "INSERT INTO drops SELECT gid, 'dedup', 'exact_duplicate', pair_id FROM (SELECT gid, pair_id, "
             "row_number() OVER (PARTITION BY pair_id ORDER BY gid) r FROM alive) WHERE r > 1",
    "near_identical": "INSERT INTO drops SELECT gid, 'near_identical', ni, NULL FROM alive WHERE ni IS NOT NULL",
    "margins": "INSERT INTO drops SELECT gid, 'margins', r, NULL FROM (SELECT gid, CASE "
               "WHEN $1::DOUBLE IS NOT NULL AND isfinite(margin) AND NOT margin > $1 THEN 'low_score_margin' "
               "WHEN $2::DOUBLE IS NOT NULL AND isfinite(prob) AND prob < $2 THEN 'low_preference_prob' "
               "END r FROM alive) WHERE r IS NOT NULL",
    "margins:cap": "INSERT INTO drops SELECT gid, 'margins', 'prompt_cap', NULL FROM (SELECT gid, row_number() OVER "
                   "(PARTITION BY prompt_id ORDER BY CASE WHEN isfinite(margin) THEN margin WHEN isfinite(prob) "
                   "THEN prob - 0.5 ELSE 0 END DESC, gid) r FROM alive) WHERE r > $1",
    "decontam": "INSERT INTO drops SELECT gid, 'decontam', dc, NULL FROM alive WHERE dc IS NOT NULL",
    "band": "SELECT b.gid, b.key FROM bandkeys b JOIN alive USING (gid) WHERE b.band = $1",
    # Exact Jaccard of candidate pairs from their shingle sets (only candidate rows have any).
    "verify": """WITH sz AS (SELECT gid, count(*) n FROM sh WHERE gid IN (SELECT a FROM cp UNION SELECT b FROM cp)
                  GROUP BY gid),
        i AS (SELECT c.a, c.b, count(*) inter FROM cp c JOIN sh s1 ON s1.gid = c.a
              JOIN sh s2 ON s2.gid = c.b AND s2.h = s1.h GROUP BY ALL)
        SELECT c.a, c.b FROM cp c JOIN sz sa ON sa.gid = c.a JOIN sz sb ON sb.gid = c.b LEFT JOIN i USING (a, b)
        WHERE coalesce(i.inter, 0) >= $1 * (sa.n + sb.n - coalesce(i.inter, 0))""",
}


def _decide(con: duckdb.DuckDBPyConnection, keys_path: Path, bands_path: Path, stage: Path, cfg: Any) -> dict:
    con.read_parquet(str(keys_path)).create("keys")
    con.read_parquet(str(bands_path)).create("bandkeys")
    con.execute("CREATE TABLE drops (gid BIGINT, rule VARCHAR, reason VARCHAR, dup_of VARCHAR)")
    # A view, so every step sees the rows that earlier steps left.
    con.execute("CREATE VIEW alive AS SELECT * FROM keys k WHERE NOT EXISTS (SELECT 1 FROM drops d WHERE d.gid = k.gid)")
    if cfg.contradictions.enabled:
        con.execute(_CONTRA)
        con.execute(_SQL[f"contradictions:{cfg.contradictions.policy}"])
    if cfg.dedup.enabled:
        con.execute(_SQL["dedup"])
    con.execute(_SQL["near_identical"])
    m = cfg.margins
    if m.enabled:
        con.execute(_SQL["margins"], [m.min_score_margin, m.min_preference_prob])
        if m.max_pairs_per_prompt is not None:
            con.execute(_SQL["margins:cap"], [int(m.max_pairs_per_prompt)])
    con.execute(_SQL["decontam"])
    stats: dict[str, Any] = {}
    if cfg.near_dup.enabled:
        stats["near_dup"] = _near_dup(con, stage, cfg.near_dup)
    for rule, reason, c in con.execute("SELECT rule, reason, count(*) FROM drops GROUP BY ALL").fetchall():
        stats.setdefault(rule, {}).setdefault("dropped", {})[reason] = int(c)
    # The rest only reads `drops` and a few key columns: give the buffer pool back to the process.
    for name in ("sh", "bandkeys"):
        con.execute(f"DROP TABLE IF EXISTS {name}")  # noqa: S608 - fixed names
    con.execute("SET memory_limit = '128MB'")
    return stats


def _gather(stage: Path, rows: np.ndarray, column: str) -> pl.Series:
    """Values of `column` at sorted global row ids `rows`, read batch by batch from the staged Parquet."""
    parts, base = [], 0
    for batch in _batches(stage, batch_size=50_000, columns=[column]):
        lo, hi = np.searchsorted(rows, [base, base + batch.num_rows])
        if hi > lo:
            parts.append(pl.Series(batch.column(0).take(pa.array(rows[lo:hi] - base))))
        base += batch.num_rows
    return pl.concat(parts) if parts else pl.Series(column, [], pl.String)


def _near_dup(con: duckdb.DuckDBPyConnection, stage: Path, cfg: near_dup.NearDupConfig) -> dict:
    # LSH buckets one band at a time (memory ~ rows of one band), with the in-memory check's bucketing.
    bands, _ = near_dup.choose_bands(cfg.threshold, cfg.num_perm, cfg.target_recall)
    codes = []
    for b in range(bands):
        got = con.execute(_SQL["band"], [b]).fetchnumpy()
        gids = got["gid"].astype(np.int64)
        pairs = near_dup.candidates(got["key"].astype(np.uint64)[:, None], np.ones(gids.size, bool), cfg.max_bucket)
        ga, gb = gids[pairs[:, 0]], gids[pairs[:, 1]]
        codes.append(sorted_unique((np.minimum(ga, gb).astype(np.uint64) << np.uint64(32))
                                   | np.maximum(ga, gb).astype(np.uint64)))
    code = sorted_unique(np.concatenate(codes)) if codes else np.zeros(0, np.uint64)
    cand = np.stack([(code >> np.uint64(32)).astype(np.int64), (code & np.uint64(0xFFFFFFFF)).astype(np.int64)], 1)
    rows = sorted_unique(cand.ravel())
    n_cand = len(cand)
    e = np.zeros((0, 2), np.int64)
    if rows.size:
        sh_path = stage.with_name("shingles.parquet")
        writer = pq.ParquetWriter(sh_path, pa.schema([("gid", pa.int64()), ("h", pa.uint64())]))
        base = 0
        for batch in _batches(stage, batch_size=50_000, columns=list(cfg.fields)):
            lo, hi = np.searchsorted(rows, [base, base + batch.num_rows])
            if hi > lo:
                local = rows[lo:hi] - base
                texts = near_dup.pair_text(pa.Table.from_batches([batch]).take(pa.array(local)), cfg.fields)
                key = near_dup.shingle_sets40(texts, cfg.ngram)
                gid = local[(key >> np.uint64(40)).astype(np.int64)] + base
                writer.write_table(pa.table({"gid": gid, "h": key & np.uint64((1 << 40) - 1)}))
            base += batch.num_rows
        writer.close()
        con.read_parquet(str(sh_path)).create("sh")
        found = []
        for lo in range(0, len(cand), 20_000):  # small batches of pairs keep the join's hash tables small
            con.register("cp", pa.table({"a": cand[lo:lo + 20_000, 0], "b": cand[lo:lo + 20_000, 1]}))
            edges = con.execute(_SQL["verify"], [cfg.threshold]).fetchnumpy()
            found.append(np.stack([edges["a"], edges["b"]], axis=1).astype(np.int64))
            con.unregister("cp")
        e = np.concatenate(found)
        e = near_dup.answers_agree(e, lambda rows, f: _gather(stage, rows, f), cfg)
    nodes = sorted_unique(e.ravel())  # components over the rows that have an edge, not over every row
    labels = near_dup.components(np.searchsorted(nodes, e), nodes.size)
    rep = nodes[labels]  # the smallest gid of a component: the first row in input order
    dup = rep != nodes
    con.register("nd_drops", pa.table({"gid": nodes[dup], "rep": rep[dup]}))
    con.execute("""INSERT INTO drops SELECT d.gid, 'near_dup', 'near_duplicate', k.pair_id FROM nd_drops d
                   JOIN keys k ON k.gid = d.rep""")
    sizes = np.bincount(labels)
    sizes = sizes[sizes > 1]
    sv, sc = np.unique(sizes, return_counts=True)
    return {"candidates": int(n_cand), "verified_pairs": int(len(e)), "clusters": int(sizes.size),
            "cluster_sizes": {str(int(a)): int(b) for a, b in zip(sv, sc, strict=True)}}


def _length_bias(con: duckdb.DuckDBPyConnection, n: int, cfg: Any) -> tuple[np.ndarray, dict]:
    """Weights (NaN on dropped rows, for a gid-indexed lookup) and the length statistics of the kept rows."""
    lb = cfg.length_bias
    got = con.execute("""SELECT gid, lc - lr AS d, w FROM keys k
                         WHERE NOT EXISTS (SELECT 1 FROM drops x WHERE x.gid = k.gid) ORDER BY gid""").fetchnumpy()
    gid, diff, base = got["gid"].astype(np.int64), got["d"].astype(np.int64), got["w"].astype(np.float64)
    weights = np.full(n, np.nan)
    stats: dict[str, Any] = {"frac_chosen_longer": length_bias.weighted_frac_longer(diff, np.ones(diff.size))}
    if not lb.enabled or lb.mode == "stats" or diff.size == 0:
        weights[gid] = base
        return weights, stats
    w, keep, bins = length_bias.balance(diff, base, lb, np.random.default_rng(lb.seed))
    weights[gid] = w
    if lb.mode == "subsample":
        con.register("lb_drops", pa.table({"gid": gid[~keep]}))
        con.execute("INSERT INTO drops SELECT gid, 'length_bias', 'length_balance_subsample', NULL FROM lb_drops")
        weights[gid[~keep]] = np.nan
    stats.update(bins=bins, weighted_frac_chosen_longer=length_bias.weighted_frac_longer(diff, w * keep),
                 diff_hist=length_bias.diff_histogram(diff, w * keep, lb.hist_bins),
                 diff_hist_before=length_bias.diff_histogram(diff, base, lb.hist_bins))
    if lb.mode == "subsample":
        stats["dropped"] = {"length_balance_subsample": int((~keep).sum())}
    return weights, stats


def _write(stage: Path, out_path: str | Path, rej_w: pq.ParquetWriter, con: duckdb.DuckDBPyConnection,
           weights: np.ndarray, cfg: Any, batch_rows: int, n: int) -> int:
    params = {f.name: params_json(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    out_w = pq.ParquetWriter(out_path, PAIR_SCHEMA)
    kept_total = base = 0
    if n:
        for batch in _batches(stage, batch_size=batch_rows):
            pa.default_memory_pool().release_unused()
            t = pa.Table.from_batches([batch])
            hi = base + t.num_rows
            d = con.sql("SELECT gid, rule, reason, dup_of FROM drops WHERE gid >= $1 AND gid < $2 ORDER BY gid",
                        params=[base, hi]).to_arrow_table()
            drop_gid = d.column("gid").to_numpy() - base if d.num_rows else np.zeros(0, np.int64)
            keep = np.ones(t.num_rows, bool)
            keep[drop_gid] = False
            for rule in set(d.column("rule").to_pylist()):
                sel = np.flatnonzero(np.asarray(d.column("rule").to_pylist(), dtype=object) == rule)
                sub = d.take(pa.array(sel))
                rej_w.write_table(rejects_table(t.take(pa.array(drop_gid[sel])), rule, sub.column("reason").to_pylist(),
                                                params.get(rule), sub.column("dup_of").to_pylist()))
            kept = t.take(pa.array(np.flatnonzero(keep)))
            w = weights[base:hi][keep]
            kept = kept.set_column(kept.schema.get_field_index("weight"), "weight", pa.array(w, pa.float64()))
            out_w.write_table(conform(kept))
            kept_total += kept.num_rows
            base = hi
    out_w.close()
    return kept_total
