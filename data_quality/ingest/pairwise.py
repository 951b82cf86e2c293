"""Two answers and a label saying which one people preferred, in the layouts the public data sets publish.

- `pku_saferlhf` (PKU-Alignment/PKU-SafeRLHF): prompt, response_0, response_1, better_response_id,
  safer_response_id, response_{0,1}_source (the model). `IngestOptions.pku_label` picks the label:
  "better" (helpfulness, the default) or "safer".
- `shp` (stanfordnlp/SHP, SHP-2): history (the post), human_ref_A, human_ref_B, labels (1: A preferred,
  0: B preferred), score_A, score_B (upvotes, kept as chosen_score / rejected_score).
- `helpsteer`: HelpSteer3 preference (context = messages, response1, response2, overall_preference -3..3) and
  HelpSteer2 preference (prompt, response_1, response_2, preference_strength -3..3). Negative means the first
  response is better; 0 is a tie (rejects, rule `ingest_tie`). The strength is kept as the score margin:
  chosen_score = |strength|, rejected_score = 0.
- `chatbot_arena` (lmsys/chatbot_arena_conversations): conversation_a, conversation_b (messages), model_a,
  model_b, winner (model_a | model_b | tie | tie (bothbad)), judge. A tie goes to rejects (rule `ingest_tie`);
  a multi-turn battle whose earlier assistant turns differ has no single prompt and is quarantined.
"""

from __future__ import annotations

import re

from data_quality.ingest._common import (
    Collector,
    RowError,
    get,
    label,
    messages_field,
    text_field,
    user_prompt,
)
from data_quality.ingest.multi_completion import TIE_RULE
from data_quality.ingest.trl import conversation_pair


def _int(value: object, name: str, allowed: range) -> int:
    """An integer label, also when a CSV export stored it as text or a float (1.0)."""
    if isinstance(value, bool) or value is None:
        raise RowError(name, "is missing or null" if value is None else f"expected an integer, got {value!r}")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise RowError(name, f"expected an integer, got {value!r}") from None
    if not number.is_integer() or int(number) not in allowed:
        raise RowError(name, f"{value!r} is not one of {list(allowed)}")
    return int(number)


def _score(value: object) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def handle_pku(out: Collector, row: int, rec: dict) -> None:
    opts = out.opts
    prompt = user_prompt(text_field(rec.get("prompt"), "prompt", opts))
    answers = [text_field(rec.get(f"response_{i}"), f"response_{i}", opts) for i in (0, 1)]
    key = f"{opts.pku_label}_response_id"
    best = _int(rec.get(key), key, range(2))
    models = [label(rec.get(f"response_{i}_source")) for i in (0, 1)]
    out.keep(row, prompt, answers[best], answers[1 - best], chosen_model=models[best],
             rejected_model=models[1 - best])


def handle_shp(out: Collector, row: int, rec: dict) -> None:
    opts = out.opts
    prompt = user_prompt(text_field(rec.get("history"), "history", opts))
    a = text_field(rec.get("human_ref_A"), "human_ref_A", opts)
    b = text_field(rec.get("human_ref_B"), "human_ref_B", opts)
    sa, sb = _score(rec.get("score_A")), _score(rec.get("score_B"))
    if _int(rec.get("labels"), "labels", range(2)) == 1:
        out.keep(row, prompt, a, b, chosen_score=sa, rejected_score=sb)
    else:
        out.keep(row, prompt, b, a, chosen_score=sb, rejected_score=sa)


# HelpSteer2 writes a multi-turn prompt as one string, turns after the first introduced by "<extra_id_1>Role".
_HS2_TURN = re.compile(r"\n?<extra_id_1>(User|Assistant)\n")


def _helpsteer2_prompt(text: str) -> list[dict]:
    parts = _HS2_TURN.split(text)
    msgs = [{"role": "user", "content": parts[0]}]
    msgs += [{"role": parts[i].lower(), "content": parts[i + 1]} for i in range(1, len(parts) - 1, 2)]
    return msgs


def handle_helpsteer(out: Collector, row: int, rec: dict) -> None:
    opts = out.opts
    if "context" in rec:  # HelpSteer3
        prompt = messages_field(rec.get("context"), "context", opts)
        names = ("response1", "response2")
    else:  # HelpSteer2 preference
        prompt = _helpsteer2_prompt(text_field(rec.get("prompt"), "prompt", opts))
        names = ("response_1", "response_2")
    if not prompt or prompt[-1]["role"] != "user":
        raise RowError("context" if "context" in rec else "prompt", "must end with a user turn")
    first, second = (text_field(rec.get(n), n, opts) for n in names)
    key, strength = get(rec, "overall_preference", "preference_strength")
    s = _int(strength, key, range(-3, 4))
    if s == 0:
        out.reject(TIE_RULE, f"{key}=0: the two responses are rated about the same", {key: strength}, row,
                   prompt, first, second, chosen_score=0.0, rejected_score=0.0)
    elif s < 0:
        out.keep(row, prompt, first, second, chosen_score=float(-s), rejected_score=0.0)
    else:
        out.keep(row, prompt, second, first, chosen_score=float(s), rejected_score=0.0)


ARENA_WINNERS = {"model_a": 0, "model_b": 1, "tie": None, "tie (bothbad)": None}


def handle_arena(out: Collector, row: int, rec: dict) -> None:
    opts = out.opts
    winner = rec.get("winner")
    if winner not in ARENA_WINNERS:
        raise RowError("winner", f"{winner!r} is not one of {list(ARENA_WINNERS)}")
    a = messages_field(rec.get("conversation_a"), "conversation_a", opts)
    b = messages_field(rec.get("conversation_b"), "conversation_b", opts)
    try:
        prompt, answer_a, answer_b = conversation_pair(a, b)
    except RowError as exc:
        field = {"chosen": "conversation_a", "rejected": "conversation_b"}.get(exc.field or "", "conversation_a")
        raise RowError(field, str(exc).split(": ", 1)[-1].replace("chosen and rejected", "the two")) from None
    models = [label(rec.get("model_a")), label(rec.get("model_b"))]
    judge = label(rec.get("judge"))
    pick = ARENA_WINNERS[winner]
    if pick is None:
        out.reject(TIE_RULE, f"winner={winner!r}: the voter preferred neither answer", {"winner": winner}, row,
                   prompt, answer_a, answer_b, chosen_model=models[0], rejected_model=models[1], judge=judge)
        return
    answers = [answer_a, answer_b]
    out.keep(row, prompt, answers[pick], answers[1 - pick], chosen_model=models[pick],
             rejected_model=models[1 - pick], judge=judge)


def looks_pku(rec: dict) -> bool:
    return "response_0" in rec and "response_1" in rec and "prompt" in rec


def looks_shp(rec: dict) -> bool:
    return "human_ref_A" in rec and "human_ref_B" in rec


def looks_helpsteer(rec: dict) -> bool:
    return (("response1" in rec and "overall_preference" in rec)
            or ("response_1" in rec and "preference_strength" in rec))


def looks_arena(rec: dict) -> bool:
    return "conversation_a" in rec and "conversation_b" in rec and "winner" in rec
