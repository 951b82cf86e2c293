"""Column mapping for layouts no reader knows: `--map prompt=question,chosen=good,rejected=bad`, or
`options.columns = {prompt = "question", ...}` in a refresh TOML.

Each target (a pair-table field) names a source path: a key, or a dotted path through objects and lists
(`chosen=answers.0.text`); a key that itself contains dots is matched whole first. The mapped row is then read
like TRL data: strings are the standard form, message lists the conversational form, and a missing prompt is
the shared beginning of chosen and rejected. Errors name the source path, not the target.
"""

from __future__ import annotations

from collections.abc import Mapping

from data_quality.ingest._common import Collector, RowError, label, text_field
from data_quality.ingest.trl import handle_conversational, handle_standard

REQUIRED = ("chosen", "rejected")
TARGETS = ("prompt", "chosen", "rejected", "system", "chosen_score", "rejected_score", "preference_prob",
           "chosen_model", "rejected_model", "judge")
_SCORES = ("chosen_score", "rejected_score", "preference_prob")
_LABELS = ("chosen_model", "rejected_model", "judge")


def parse_columns(spec: str | Mapping[str, str]) -> dict[str, str]:
    """"prompt=question,chosen=a.b" (or a mapping) -> {target: source path}, validated."""
    if isinstance(spec, str):
        pairs = [item.split("=", 1) for item in spec.split(",") if item.strip()]
        bad = [p[0] for p in pairs if len(p) != 2 or not p[1].strip()]
        if bad:
            raise ValueError(f"--map: {bad[0]!r} is not TARGET=SOURCE (e.g. prompt=question,chosen=good)")
        columns = {k.strip(): v.strip() for k, v in pairs}
    else:
        columns = dict(spec)
    unknown = sorted(set(columns) - set(TARGETS))
    if unknown:
        raise ValueError(f"column map: unknown target(s) {unknown}; targets are {list(TARGETS)}")
    missing = [t for t in REQUIRED if t not in columns]
    if missing:
        raise ValueError(f"column map: {missing} must be mapped (e.g. chosen=good,rejected=bad)")
    if not all(isinstance(v, str) and v for v in columns.values()):
        raise ValueError("column map: every source must be a non-empty field name or dotted path")
    return columns


def resolve(rec: object, path: str) -> object:
    """The value at a dotted path; RowError naming the path when a step is missing."""
    if isinstance(rec, dict) and path in rec:
        return rec[path]
    value = rec
    for step in path.split("."):
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.lstrip("-").isdigit() and -len(value) <= int(step) < len(value):
            value = value[int(step)]
        else:
            raise RowError(path, f"is missing (no {step!r} at this point of the path)")
    return value


def mapped_handler(columns: Mapping[str, str]):
    """A row handler reading rows through `columns`."""

    def handle(out: Collector, row: int, rec: dict) -> None:
        mapped: dict[str, object] = {}
        for target, path in columns.items():
            try:
                mapped[target] = resolve(rec, path)
            except RowError:
                if target in REQUIRED or target == "prompt":
                    raise
        evidence: dict[str, object] = {}
        for k in _SCORES:
            if mapped.get(k) is not None:
                try:
                    evidence[k] = float(mapped[k])  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    raise RowError(columns[k], f"cannot parse {mapped[k]!r} as a number") from None
        evidence.update({k: label(mapped[k]) for k in _LABELS if mapped.get(k) is not None})
        system = mapped.get("system")
        if isinstance(system, str) and not system.strip():
            system = None  # an empty system field means no system turn
        if system is not None:
            system = text_field(system, columns["system"], out.opts)
        sink = _EvidenceSink(out, evidence, system)
        conversational = isinstance(mapped.get("chosen"), list) or isinstance(mapped.get("prompt"), list)
        try:
            (handle_conversational if conversational else handle_standard)(sink, row, mapped)
        except RowError as exc:
            head = (exc.field or "").split("[", 1)[0].split(".", 1)[0]
            if head in columns:
                raise RowError(columns[head] + (exc.field or "")[len(head):], str(exc).split(": ", 1)[-1]) from None
            raise

    return handle


class _EvidenceSink:
    """Adds the mapped evidence (and system prompt) to what the TRL handler keeps."""

    def __init__(self, out: Collector, evidence: dict[str, object], system: object) -> None:
        self.out, self.opts, self.evidence, self.system = out, out.opts, evidence, system

    def keep(self, row: int, prompt: list[dict], chosen: str, rejected: str, **_: object) -> None:
        if self.system is not None and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": self.system}, *prompt]
        self.out.keep(row, prompt, chosen, rejected, **self.evidence)
