"""Dataset, table and snapshot names: what may be created, and how `name@version` addresses parse.

DuckDB identifiers are case-insensitive, so every uniqueness rule here compares names case-folded: `Hh` and
`hh` are the same name. A name is refused at creation when it would shadow something in SQL: a reserved
keyword, a catalog view or table, a version alias (`hh_v1` is the view of `hh@1`), or a gate statistics table.
"""

from __future__ import annotations

import re

import duckdb

# ASCII only (re.ASCII keeps `\d` from matching full-width digits); fullmatch, so no trailing newline slips in.
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,127}", re.ASCII)
_VERSION_RE = re.compile(r"[1-9][0-9]{0,8}", re.ASCII)
_VERSION_ALIAS_RE = re.compile(r".+_v[0-9]+", re.ASCII | re.IGNORECASE)

# Views and tables the catalog itself creates; a dataset of that name would shadow them.
CATALOG_OBJECTS = frozenset({
    "snapshots", "rejects", "quarantine", "rounds", "runs", "metrics", "round_log", "snapshot_log",
    "catalog_meta", "catalog_views", "artefact_log", "pairs",
})
# Statistics tables a clean publishes beside its snapshot (data_quality/checks/tables.py): reserved in
# advance, so a dataset created before the first clean cannot make every later clean fail.
GATE_TABLES = frozenset({
    "gate_drops", "gate_steps", "gate_hist", "gate_clusters", "gate_length_bins", "gate_length_models",
    "gate_summary",
})


def _sql_keywords() -> frozenset[str]:
    with duckdb.connect() as con:
        rows = con.execute(
            "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category <> 'unreserved'"
        ).fetchall()
    return frozenset(r[0].lower() for r in rows)


SQL_KEYWORDS = _sql_keywords()


def check_name(name: str, what: str = "dataset") -> str:
    """The shape of a name: ASCII letters, digits, '_' or '-', starting with a letter or '_'."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid {what} name {name!r}: use ASCII letters, digits, '_' or '-', starting with a letter or '_' "
            "(at most 128 characters)"
        )
    return name


def check_new_name(name: str, what: str = "dataset") -> str:
    """A name that may be created: well-formed and shadowing nothing the catalog defines."""
    check_name(name, what)
    folded = name.lower()
    if folded in CATALOG_OBJECTS or folded in GATE_TABLES:
        raise ValueError(f"{what} name {name!r} is reserved for a catalog view or table")
    if folded in SQL_KEYWORDS:
        raise ValueError(f"{what} name {name!r} is reserved: it is an SQL keyword")
    if _VERSION_ALIAS_RE.fullmatch(name):
        base = name[: name.lower().rindex("_v")]
        raise ValueError(
            f"{what} name {name!r} is reserved: it has the shape of a version alias (the view of {base}@N)"
        )
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'hh@3' -> ('hh', 3); 'hh' -> ('hh', None) meaning the newest version.

    Only plain ASCII digits without a leading zero: `hh@01` or a full-width `hh@１` is not `hh@1`.
    """
    name, sep, version = ref.partition("@")
    check_name(name)
    if not sep:
        return name, None
    if not _VERSION_RE.fullmatch(version):
        raise ValueError(
            f"invalid snapshot reference {ref!r}: the version after '@' must be a number written with "
            "ASCII digits 0-9, without leading zeros (e.g. hh@3)"
        )
    return name, int(version)
