"""A small Bradley-Terry reward model the platform trains itself on a snapshot's pairs.

r(x, y) = w . phi(x, y), with phi hashed response unigrams/bigrams, words the answer shares with the prompt,
and a few length features; trained with P(chosen > rejected) = sigmoid(r_c - r_r). Cheap enough to train on
CPU in seconds, and useful as the "lightweight reward model that filters DPO data". Token hashing uses
xxhash (stable across library versions), so a saved model scores the same everywhere.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import pyarrow as pa
import xxhash

from dpo_train.judges.base import Judge, check_rows, fingerprint_files
from storage.schema import render_messages

DENSE = ("log_chars", "log_words", "prompt_coverage", "ends_sentence")


@dataclass(frozen=True)
class Featurizer:
    dim: int = 4096  # hashed buckets; the dense features follow them
    bigrams: bool = True
    version: int = 1

    @property
    def size(self) -> int:
        return self.dim + len(DENSE)

    def features(self, prompt_text: list[str], response: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sparse rows as (offsets, column ids, values) for torch's embedding_bag."""
        n = len(response)
        words = pl.DataFrame({"row": np.arange(n, dtype=np.int64), "p": prompt_text, "r": response}).with_columns(
            pl.col("p").str.to_lowercase().str.extract_all(r"[a-z0-9']+").alias("pw"),
            pl.col("r").str.to_lowercase().str.extract_all(r"[a-z0-9']+").alias("rw"),
        )
        rw = words.select("row", pl.col("rw").alias("w")).explode("w").drop_nulls()
        pw = words.select("row", pl.col("pw").alias("w")).explode("w").drop_nulls().unique()
        parts = [rw.select("row", ("u:" + pl.col("w")).alias("f"))]
        if self.bigrams:
            parts.append(rw.with_columns(pl.col("w").shift(-1).over("row").alias("nxt")).drop_nulls()
                         .select("row", ("b:" + pl.col("w") + " " + pl.col("nxt")).alias("f")))
        overlap = rw.unique().join(pw, on=["row", "w"], how="semi")
        parts.append(overlap.select("row", ("o:" + pl.col("w")).alias("f")))
        feats = pl.concat(parts).group_by("row", "f").len()
        vocab = feats.select(pl.col("f").unique())
        # Hash each distinct feature once (python), then join back: the per-row work stays columnar.
        codes = vocab.with_columns(pl.Series("col", [xxhash.xxh3_64_intdigest(f.encode()) % self.dim
                                                      for f in vocab["f"].to_list()], dtype=pl.Int64))
        sparse = (feats.join(codes, on="f").group_by("row", "col").agg(pl.col("len").sum())
                  .with_columns(pl.col("len").cast(pl.Float64).log1p().alias("val")))
        dense = self._dense(words, rw, pw, overlap)
        allf = pl.concat([sparse.select("row", "col", "val"), dense]).sort("row", "col")
        counts = allf.group_by("row").len().sort("row")
        per_row = np.zeros(n, dtype=np.int64)
        per_row[counts["row"].to_numpy()] = counts["len"].to_numpy()
        offsets = np.concatenate([[0], np.cumsum(per_row)[:-1]]).astype(np.int64)
        return offsets, allf["col"].to_numpy().astype(np.int64), allf["val"].to_numpy().astype(np.float32)

    def _dense(self, words: pl.DataFrame, rw: pl.DataFrame, pw: pl.DataFrame, overlap: pl.DataFrame) -> pl.DataFrame:
        n_p = pw.group_by("row").len().rename({"len": "np"})
        n_o = overlap.group_by("row").len().rename({"len": "no"})
        base = (words.select("row", "r").join(n_p, on="row", how="left").join(n_o, on="row", how="left")
                .fill_null(0))
        vals = base.select(
            "row",
            (pl.col("r").str.len_chars().cast(pl.Float64).log1p() / 5).alias("log_chars"),
            (pl.col("r").str.split(" ").list.len().cast(pl.Float64).log1p() / 4).alias("log_words"),
            (pl.col("no") / pl.max_horizontal(pl.col("np"), 1)).cast(pl.Float64).alias("prompt_coverage"),
            pl.col("r").str.strip_chars().str.contains(r"[.!?]$").cast(pl.Float64).alias("ends_sentence"),
        )
        return vals.unpivot(index="row", on=list(DENSE), variable_name="name", value_name="val").with_columns(
            (pl.col("name").replace_strict({k: self.dim + i for i, k in enumerate(DENSE)}, return_dtype=pl.Int64))
            .alias("col")).select("row", "col", "val")


@dataclass
class BradleyTerryModel:
    weight: np.ndarray
    featurizer: Featurizer = field(default_factory=Featurizer)
    meta: dict[str, Any] = field(default_factory=dict)

    def reward(self, prompt_text: list[str], response: list[str]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        off, cols, vals = self.featurizer.features(prompt_text, response)
        w = torch.from_numpy(self.weight.astype(np.float32))[:, None]
        out = F.embedding_bag(torch.from_numpy(cols), w, torch.from_numpy(off),
                              per_sample_weights=torch.from_numpy(vals), mode="sum")
        return out[:, 0].double().numpy()

    def save(self, path: str | Path) -> Path:
        import torch
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"weight": torch.from_numpy(self.weight.astype(np.float32))}, str(path),
                  metadata={"featurizer": json.dumps(asdict(self.featurizer)), "meta": json.dumps(self.meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> BradleyTerryModel:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            md = fh.metadata() or {}
            weight = fh.get_tensor("weight").numpy().astype(np.float64)
        feat = Featurizer(**json.loads(md.get("featurizer", "{}")))
        if weight.shape != (feat.size,):
            raise ValueError(f"{path}: weight of shape {weight.shape} does not match featurizer size {feat.size}")
        return cls(weight, feat, json.loads(md.get("meta", "{}")))


def train_bradley_terry(pairs: pa.Table, *, dim: int = 4096, bigrams: bool = True, l2: float = 1e-3,
                        steps: int = 300, lr: float = 0.1, val_fraction: float = 0.1, seed: int = 0,
                        snapshot_id: str | None = None) -> BradleyTerryModel:
    """Fit w on a pair table (prompt_text, chosen, rejected, weight); held-out pairs picked by pair_id hash."""
    import torch
    import torch.nn.functional as F

    if pairs.num_rows < 2:
        raise ValueError(f"need at least 2 pairs to train a Bradley-Terry model, got {pairs.num_rows}")
    feat = Featurizer(dim=dim, bigrams=bigrams)
    ptext = (pairs.column("prompt_text").to_pylist() if "prompt_text" in pairs.column_names
             else [render_messages(m) for m in pairs.column("prompt").to_pylist()])
    n = pairs.num_rows
    off, cols, vals = feat.features(ptext * 2, pairs.column("chosen").to_pylist() + pairs.column("rejected").to_pylist())
    weights = (np.asarray(pairs.column("weight").to_pylist(), dtype=np.float32) if "weight" in pairs.column_names
               else np.ones(n, dtype=np.float32))
    ids = pairs.column("pair_id").to_pylist() if "pair_id" in pairs.column_names else [str(i) for i in range(n)]
    is_val = np.array([xxhash.xxh3_64_intdigest(f"{seed}:{i}".encode()) / 2**64 < val_fraction for i in ids])
    if is_val.all() or n < 10:
        is_val[:] = False  # too few pairs to hold any out
    # The margin is linear in w: (x_chosen - x_rejected) . w. One sparse difference matrix makes each step a
    # sparse mat-vec; embedding_bag's backward with per-sample weights is ~100x slower on CPU.
    counts = np.diff(off, append=len(cols))
    rows = np.repeat(np.arange(2 * n), counts)
    sign = np.where(rows < n, 1.0, -1.0).astype(np.float32)
    diff = torch.sparse_coo_tensor(np.stack([rows % n, cols]), torch.from_numpy(vals * sign),
                                   (n, feat.size), check_invariants=False).coalesce()
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(feat.size, 1, generator=gen) * 1e-3).requires_grad_(True)
    train_t = torch.from_numpy(~is_val)
    wt = torch.from_numpy(weights)
    opt = torch.optim.Adam([w], lr=lr)

    def margins() -> Any:
        return torch.sparse.mm(diff, w)[:, 0]

    for _ in range(steps):
        opt.zero_grad()
        m = margins()
        loss = (-(F.logsigmoid(m) * wt)[train_t].sum() / wt[train_t].sum()) + l2 * (w * w).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        m = margins().numpy()
    acc = lambda mask: float((m[mask] > 0).mean()) if mask.any() else math.nan  # noqa: E731
    meta = {"train_pairs": int((~is_val).sum()), "val_pairs": int(is_val.sum()), "train_accuracy": acc(~is_val),
            "val_accuracy": acc(is_val), "final_loss": float(loss.detach()), "l2": l2, "steps": steps, "lr": lr,
            "seed": seed, "snapshot_id": snapshot_id}
    return BradleyTerryModel(w.detach()[:, 0].double().numpy(), feat, meta)


@dataclass
class BradleyTerryJudge(Judge):
    path: str
    kind: ClassVar[str] = "bradley_terry"
    _model: BradleyTerryModel | None = field(default=None, init=False, repr=False)

    @property
    def model(self) -> BradleyTerryModel:
        if self._model is None:
            self._model = BradleyTerryModel.load(self.path)
        return self._model

    @property
    def version(self) -> str:
        return fingerprint_files([Path(self.path)])

    def score(self, table: pa.Table) -> np.ndarray:
        check_rows(table)
        ptext = [render_messages(m) for m in table.column("prompt").to_pylist()]
        return self.model.reward(ptext, table.column("response").to_pylist())
