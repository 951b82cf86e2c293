"""Real-data audit of the quality gate: every drop's stated reason, re-checked independently.

    .venv/bin/python benchmarks/audit_gate.py                 # all of ../shared/data (or $DPO_SHARED_DATA)
    .venv/bin/python benchmarks/audit_gate.py --examples 3    # also print failing drops, side by side
    .venv/bin/python benchmarks/audit_gate.py --planted 20000 # also planted-defect recall and clean false drops

Runs the gate with its defaults on every AlpacaEval annotation file and HH-RLHF together, then a
decontamination pass of HH against AlpacaEval's instructions (the eval set a user would protect). For each
rule:reason it prints how many rows were dropped and how many of those drops hold when the reason is checked
again by plain Python written apart from the checks (rapidfuzz on the raw text, shingle sets and Jaccard,
unicodedata, zlib): a false drop is a number here, not an anecdote. It also prints the weights a trainer
would get (cap, effective sample size, held-out balance).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time
import unicodedata
import zlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from rapidfuzz import fuzz

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("DPO_SHARED_DATA", ROOT.parent / "shared" / "data"))

from data_quality.checks.text import jaccard, shingle_set  # noqa: E402
from data_quality.gate import GateConfig, run_gate  # noqa: E402
from data_quality.ingest import ingest_files  # noqa: E402

_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\ufeff"))
_NUMBER = re.compile(r"[-+]?\d+(?:[.,]\d+)*")


# -- independent references (plain Python, written apart from the checks) --------------------------------------
def seen(text: str) -> str:
    """What a reader sees: NFC, no invisible characters, whitespace runs as one space."""
    return " ".join(unicodedata.normalize("NFC", text).translate(_INVISIBLE).split())


def numbers(text: str) -> list[str]:
    return _NUMBER.findall(text.replace("\u2212", "-"))


def prompt_of(r: dict) -> str:
    return seen(r["prompt_text"])


def tagged_shingles(r: dict, fields: tuple[str, ...], k: int) -> set:
    return {(f, s) for f in fields for s in shingle_set(r[f], k)}


def compress_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return len(zlib.compress(raw, 6)) / max(len(raw), 1)


def script_share(text: str, script: str) -> tuple[int, float]:
    letters = [c for c in text if c.isalpha()]
    inside = sum(unicodedata.name(c, "").startswith(script.upper()) for c in letters)
    return len(letters), inside / len(letters) if letters else 1.0


# -- one verifier per rule:reason; each returns (holds, note) ------------------------------------------------
Verifier = Callable[[dict, dict | None, dict], tuple[bool, str]]


def v_empty(side: str) -> Verifier:
    return lambda r, o, c: (seen(r[side]) == "", f"{len(seen(r[side]))} visible chars")


def v_identical(r: dict, o: dict | None, c: dict) -> tuple[bool, str]:
    return seen(r["chosen"]) == seen(r["rejected"]), ""


def v_echo(r: dict, o: dict | None, c: dict) -> tuple[bool, str]:
    return seen(r["chosen"]).lower() == prompt_of(r).lower(), ""


def v_too_long(side: str) -> Verifier:
    return lambda r, o, c: (len(r[side].strip()) > c["degenerate"]["max_chars"], f"{len(r[side])} chars")


def v_loop(side: str) -> Verifier:
    # A loop compresses far better than prose (prose ~0.35-0.5 with zlib), or is mostly blank.
    def f(r: dict, o: dict | None, c: dict) -> tuple[bool, str]:
        t = r[side]
        blank = sum(ch.isspace() for ch in t) / max(len(t), 1)
        ratio = compress_ratio(t)
        return ratio <= 0.2 or blank >= c["repetition"]["max_blank_fraction"], f"zlib {ratio:.2f}, blank {blank:.2f}"
    return f


def v_runaway(side: str) -> Verifier:
    other = "rejected" if side == "chosen" else "chosen"
    return lambda r, o, c: (len(r[side]) >= c["repetition"]["runaway_chars"]
                            and len(r[side]) >= c["repetition"]["runaway_ratio"] * len(r[other]),
                            f"{len(r[side])} vs {len(r[other])} chars")


def v_script(r: dict, o: dict | None, c: dict) -> tuple[bool, str]:
    n, share = script_share(r["chosen"], c["script"]["expected"])
    return share < c["script"]["min_fraction"], f"{share:.2f} of {n} letters"


def v_same_pair(r: dict, o: dict | None, c: dict) -> tuple[bool, str]:
    if o is None:
        return False, "named row not found"
    same = all(seen(r[k]) == seen(o[k]) for k in ("prompt_text", "chosen", "rejected"))
    raw = all(r[k] == o[k] for k in ("prompt_text", "chosen", "rejected"))
    return same, "byte-identical" if raw else "equal as a reader sees it"


def v_contradiction(r: dict, o: dict | None, c: dict) -> tuple[bool, str]:
    key = (prompt_of(r), seen(r["rejected"]), seen(r["chosen"]))
    return key in c["_reversed"], ""


def v_near_identical(r: dict, o: dict | None, c: dict) -> tuple[bool, str]:
    a, b = seen(r["chosen"]), seen(r["rejected"])
    sim = fuzz.ratio(a, b) / 100.0
    return sim >= c["near_identical"]["max_similarity"] and numbers(a) == numbers(b), f"similarity {sim:.3f}"


def v_low_prob(r: dict, o: dict | None, c: dict) -> tuple[bool, str]:
    p = r["preference_prob"]
    return p is not None and p < c["margins"]["min_preference_prob"], f"p={p}"


def v_low_margin(r: dict, o: dict | None, c: dict) -> tuple[bool, str]:
    m = (r["chosen_score"] or 0) - (r["rejected_score"] or 0)
    return m <= c["margins"]["min_score_margin"], f"margin {m:.3g}"


def v_near_dup(r: dict, o: dict | None, c: dict) -> tuple[bool, str]:
    if o is None:
        return False, "named row not found"
    nd = c["near_dup"]
    k, fields = nd["ngram"], tuple(nd["fields"])
    whole = jaccard(tagged_shingles(r, fields, k), tagged_shingles(o, fields, k))
    per = [jaccard(shingle_set(r[f], k), shingle_set(o[f], k)) for f in ("chosen", "rejected") if f in fields]
    ok = whole >= nd["threshold"] and all(j >= nd.get("min_answer_jaccard", 0.0) for j in per)
    return ok, f"J={whole:.3f}, answers {', '.join(f'{j:.2f}' for j in per)}"


def v_repeated(r: dict, o: dict | None, c: dict) -> tuple[bool, str]:
    n = len(c["_prompts_by_chosen"].get(seen(r["chosen"]), ()))
    named_ok = o is not None and seen(o["chosen"]) == seen(r["chosen"])
    return n >= c["repeated_answer"]["min_prompts"] and named_ok, f"{n} prompts"


def v_contaminated(side: str) -> Verifier:
    def f(r: dict, o: dict | None, c: dict) -> tuple[bool, str]:
        dc, evals = c["decontam"], c["_eval_prompts"]
        i = int((r["duplicate_of"] or "eval:-1").split(":")[1])
        if not 0 <= i < len(evals):
            return False, "no eval item named"
        text = r[side]
        ev = shingle_set(evals[i], dc["ngram"])
        frac = len(ev & shingle_set(text, dc["ngram"])) / max(len(ev), 1)
        long = dc["long_ngram"] and bool(shingle_set(evals[i], dc["long_ngram"]) & shingle_set(text, dc["long_ngram"])
                                         ) and len(re.findall(r"\w+", evals[i])) >= dc["long_ngram"]
        return frac >= dc["min_fraction"] or bool(long), f"{frac:.2f} of eval item {i}'s n-grams, long={bool(long)}"
    return f


VERIFY: dict[str, Verifier] = {
    "degenerate:empty_chosen": v_empty("chosen"), "degenerate:empty_rejected": v_empty("rejected"),
    "degenerate:identical_answers": v_identical, "degenerate:chosen_repeats_prompt": v_echo,
    "degenerate:chosen_too_long": v_too_long("chosen"), "degenerate:rejected_too_long": v_too_long("rejected"),
    "repetition:chosen_repetition_loop": v_loop("chosen"), "repetition:rejected_repetition_loop": v_loop("rejected"),
    "repetition:chosen_runaway_length": v_runaway("chosen"),
    "repetition:rejected_runaway_length": v_runaway("rejected"),
    "script:chosen_wrong_script": v_script,
    "contradictions:contradiction": v_contradiction, "contradictions:contradiction_tie": v_contradiction,
    "contradictions:contradiction_minority": v_contradiction,
    "dedup:exact_duplicate": v_same_pair, "near_identical:near_identical_answers": v_near_identical,
    "margins:low_preference_prob": v_low_prob, "margins:low_score_margin": v_low_margin,
    "near_dup:near_duplicate": v_near_dup, "repeated_answer:chosen_repeated_across_prompts": v_repeated,
    "decontam:contaminated_prompt": v_contaminated("prompt_text"),
    "decontam:contaminated_chosen": v_contaminated("chosen"),
    "decontam:contaminated_rejected": v_contaminated("rejected"),
}


def audit(pairs: pa.Table, cfg: GateConfig, eval_prompts: list[str] | None, examples: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = run_gate(pairs, cfg, eval_prompts)
    seconds = time.perf_counter() - t0
    cols = ["pair_id", "prompt_text", "chosen", "rejected", "preference_prob", "chosen_score", "rejected_score",
            "source", "source_row"]
    rows = res.kept.select(cols).to_pylist() + res.rejects.select([*cols, "rule", "reason", "duplicate_of"]).to_pylist()
    by_id = {r["pair_id"]: r for r in rows}
    c: dict[str, Any] = res.stats["config"]
    c["_eval_prompts"] = eval_prompts or []
    c["_reversed"] = {(prompt_of(r), seen(r["chosen"]), seen(r["rejected"])) for r in rows}
    prompts: dict[str, set] = defaultdict(set)
    for r in rows:
        prompts[seen(r["chosen"])].add(prompt_of(r))
    c["_prompts_by_chosen"] = prompts
    table: dict[str, dict[str, Any]] = {}
    for r in rows[res.kept.num_rows:]:
        key = f"{r['rule']}:{r['reason']}"
        e = table.setdefault(key, {"drops": 0, "holds": 0, "unchecked": 0, "false": []})
        e["drops"] += 1
        check = VERIFY.get(key)
        if check is None:
            e["unchecked"] += 1
            continue
        ok, note = check(r, by_id.get(r["duplicate_of"]) if r["duplicate_of"] else None, c)
        if ok:
            e["holds"] += 1
        else:
            e["false"].append((r, note))
    return {"result": res, "table": table, "seconds": seconds, "examples": examples}


def _short(text: str | None, n: int = 90) -> str:
    return repr((text or "")[:n])


def print_audit(title: str, a: dict[str, Any]) -> int:
    res = a["result"]
    st = res.stats
    print(f"\n## {title}: {st['input_rows']} rows in, {st['kept']} kept, {st['rejected']} dropped "
          f"({a['seconds']:.1f} s)")
    print(f"{'rule:reason':50s} {'drops':>7s} {'holds':>7s} {'FALSE':>7s} {'unchecked':>9s}")
    bad = 0
    for key, e in sorted(a["table"].items()):
        print(f"{key:50s} {e['drops']:7d} {e['holds']:7d} {len(e['false']):7d} {e['unchecked']:9d}")
        bad += len(e["false"])
        for r, note in e["false"][: a["examples"]]:
            print(f"    false: {r['source'].rsplit('/', 1)[-1]}#{r['source_row']} ({note}) "
                  f"chosen={_short(r['chosen'])} rejected={_short(r['rejected'])}")
    lb = st["checks"].get("length_bias", {})
    if lb:
        ho = lb.get("heldout") or {}
        print(f"weights: max {lb.get('weight_max', 0):.2f} (cap {lb.get('max_weight')}), effective sample size "
              f"{lb.get('effective_sample_size', 0):.0f} of {st['kept']} ({(lb.get('ess_fraction') or 0):.1%}), "
              f"no-bonus rows {lb.get('no_bonus_rows')}; chosen longer {lb.get('frac_chosen_longer', 0):.3f} -> "
              f"held-out weighted {ho.get('heldout_weighted_frac_chosen_longer', float('nan')):.3f} "
              f"± {ho.get('heldout_se', float('nan')):.3f}")
        for w in lb.get("warnings", []):
            print(f"    warning: {w}")
    print(f"false drops: {bad}")
    return bad


def planted(n: int) -> int:
    """Planted-defect recall (a planted row dropped by any rule) and false drops of clean rows, on synthetic data.

    Clean rows that are the original of a planted copy or sit in a planted near-duplicate group are left out
    of the false-drop count: keep-first may legitimately drop either row of such a group.
    """
    import numpy as np

    from data_quality.synthetic import make_synthetic

    data = make_synthetic(n, seed=0)
    res = run_gate(data.table, GateConfig(), data.eval_prompts)
    src = np.asarray(data.table.column("source_row"))
    dropped = set(res.rejects.column("source_row").to_pylist())
    print(f"\n## planted defects, {n} synthetic rows")
    worst = 1.0
    for defect in sorted(set(data.defect.tolist()) - {"clean", "near_dup"}):
        rows = src[data.defect == defect]
        if defect == "exact_dup":  # found if the copy or its original goes
            base = src[data.base_row[data.defect == defect]]
            rec = float(np.mean([a in dropped or b in dropped for a, b in zip(rows, base, strict=True)]))
        else:
            rec = float(np.mean([r in dropped for r in rows]))
        worst = min(worst, rec)
        print(f"{defect:20s} {rows.size:7d} planted  recall {rec:.4f}")
    groups = set(data.near_dup_pairs[:, :2].astype(int).ravel().tolist())
    bases = set(data.base_row[data.defect == "exact_dup"].tolist())
    clean = [int(src[i]) for i in np.flatnonzero(data.defect == "clean") if i not in groups and i not in bases]
    false = sum(r in dropped for r in clean)
    print(f"clean rows {len(clean)}, dropped {false} ({false / max(len(clean), 1):.4%}); worst recall {worst:.4f}")
    return false


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA), help="the shared data folder (alpaca_eval/, hh-rlhf/)")
    ap.add_argument("--examples", type=int, default=3, help="failing drops printed per rule")
    ap.add_argument("--planted", type=int, default=0, help="also run N synthetic rows with planted defects")
    args = ap.parse_args()
    if args.planted:
        planted(args.planted)
    data = Path(args.data)
    annotations = sorted(glob.glob(str(data / "alpaca_eval" / "annotations" / "*.json.gz")))
    hh = str(data / "hh-rlhf" / "harmless-base-test.jsonl.gz")
    ing = ingest_files([*annotations, hh])
    print(f"ingest: {len(annotations)} AlpacaEval annotation files + HH-RLHF: {ing.input_rows} rows, "
          f"{ing.pairs.num_rows} pairs, {ing.rejects.num_rows} ingest rejects, {ing.quarantine.num_rows} quarantined")
    bad = print_audit("gate, defaults, all real data", audit(ing.pairs, GateConfig(), None, args.examples))
    # Decontamination, as a user would run it: HH training pairs against the AlpacaEval instructions.
    src = ing.pairs.column("source").to_pylist()
    is_hh = pa.array([s.endswith("harmless-base-test.jsonl.gz") for s in src])
    evals = sorted(set(ing.pairs.filter(pa.compute.invert(is_hh)).column("prompt_text").to_pylist()))
    only = GateConfig.from_dict({k: {"enabled": False} for k, v in GateConfig().to_dict().items()
                                 if "enabled" in v and k not in ("normalise", "decontam")})
    bad += print_audit(f"decontam: HH vs {len(evals)} AlpacaEval instructions",
                       audit(ing.pairs.filter(is_hh), only, evals, args.examples))
    # The control: rows whose prompt is an eval instruction must all go, and their reasons must hold.
    first = ing.pairs.filter(pa.compute.equal(ing.pairs.column("source"), annotations[0]))
    bad += print_audit("decontam control: one AlpacaEval file vs its own instructions",
                       audit(first, only, evals, args.examples))
    print(json.dumps({"false_drops": bad}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
