"""Read-only SQL over the catalog: refused unless it only reads, and run where it cannot write anyway.

Two independent layers:
1. The decision is made on DuckDB's own parse tree, never on the text: every statement must be a SELECT (SHOW,
   DESCRIBE, SUMMARIZE, FROM-first, VALUES, ... parse as SELECT) or an EXPLAIN [ANALYZE] of one; every table
   function in the tree must be on a list of functions that only read (so `FROM checkpoint()` is refused);
   functions that change state (nextval) are refused.
2. The query cannot write even if the check missed something: it never touches the real catalog (a private
   copy of `catalog.duckdb` is taken under a brief shared lock, milliseconds, so readers never block writers, and
   ATTACHed READ_ONLY in an in-memory database; the data views the query reaches are shadowed by TEMP views of
   the same SQL whose paths go through `ReadOnlySnapshots`), local files are reachable only in the query's private spill
   folder (`enable_external_access=false` + `allowed_directories`), and the snapshot files only through
   `ReadOnlySnapshots`, a file system that opens files for reading, under the workspace's `snapshots/` and
   `_empty/` folders, and nothing else (no write, delete or rename); snapshots on object storage likewise only
   through `ReadOnlyObjects` (storage/sandbox_objects.py), under the folders the catalog lists.
   Extensions cannot be installed and the configuration is locked before the user's SQL runs. Memory, threads
   and temp space are capped and a timer interrupts the query at `timeout_s`.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from fsspec import AbstractFileSystem

from storage import catalog, objects, sandbox_objects
from storage.errors import QueryLimitError, UnsafeQueryError

# Table functions that only read: file readers (which reach only what layer 2 lets them read), generators
# and the catalog's own metadata. Anything else in a FROM clause is refused.
READ_TABLE_FUNCTIONS = frozenset({
    "read_parquet", "parquet_scan", "parquet_metadata", "parquet_schema", "parquet_file_metadata",
    "parquet_kv_metadata", "read_csv", "read_csv_auto", "read_json", "read_json_auto", "read_ndjson",
    "read_ndjson_auto", "read_json_objects", "read_text", "glob", "range", "generate_series", "unnest",
    "json_each", "json_tree", "duckdb_columns", "duckdb_constraints", "duckdb_databases", "duckdb_dependencies",
    "duckdb_functions", "duckdb_indexes", "duckdb_keywords", "duckdb_schemas", "duckdb_sequences",
    "duckdb_settings", "duckdb_tables", "duckdb_types", "duckdb_views", "pragma_table_info", "pragma_show",
    "pragma_version", "pragma_database_size", "pragma_storage_info", "summary", "test_all_types",
})
# Scalar functions with a side effect on the database.
WRITE_FUNCTIONS = frozenset({"nextval", "setval"})
ALIAS = "dpo"
SQL_CACHE = "sql-cache"
PROTOCOL = "dpo-snapshots"


class ReadOnlySnapshots(AbstractFileSystem):
    """The only file system the sandbox has: reads files under `allowed` folders; every write is refused
    (AbstractFileSystem's mutators raise, and `_open` opens nothing but 'rb')."""

    protocol = PROTOCOL
    root_marker = "/"
    cachable = False

    def __init__(self, allowed: list[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.allowed = [os.path.realpath(a) for a in allowed]

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        path = str(path)
        path = path.removeprefix(PROTOCOL + "://")
        return "/" + path.lstrip("/")

    def _real(self, path: str) -> str:
        real = os.path.realpath(self._strip_protocol(path))
        if not any(real == a or real.startswith(a + os.sep) for a in self.allowed):
            raise PermissionError(f"the SQL sandbox reads only the workspace's snapshot files, not {real}")
        return real

    def info(self, path: str, **kw: Any) -> dict[str, Any]:
        real = self._real(path)
        st = os.stat(real)
        return {"name": self._strip_protocol(path), "size": st.st_size,
                "type": "directory" if os.path.isdir(real) else "file", "mtime": st.st_mtime}

    def ls(self, path: str, detail: bool = True, **kw: Any) -> list[Any]:
        real = self._real(path)
        names = [os.path.join(real, n) for n in sorted(os.listdir(real))] if os.path.isdir(real) else [real]
        return [self.info(n) for n in names] if detail else names

    def modified(self, path: str) -> Any:
        import datetime

        return datetime.datetime.fromtimestamp(os.stat(self._real(path)).st_mtime, tz=datetime.UTC)

    def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
        if mode != "rb":
            raise PermissionError(f"the SQL sandbox is read-only: cannot open {path} for writing")
        return open(self._real(path), "rb")  # noqa: SIM115 (closed by DuckDB through the file object)


@dataclass(frozen=True)
class SqlLimits:
    """Caps for one query: wall-clock seconds, DuckDB memory, threads and spill-to-disk space."""

    timeout_s: float = 60.0
    memory_limit: str = "2GB"
    threads: int = 2
    max_temp_size: str = "4GB"


def _refuse(kind: str, stmt: str, why: str) -> UnsafeQueryError:
    return UnsafeQueryError(
        f"refused: the SQL inspection path is read-only and this {kind} {why} ({stmt.strip()[:80]!r}); "
        "only SELECT/EXPLAIN (incl. DESCRIBE/SHOW/SUMMARIZE) over the catalog's views run here"
    )


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def _tree(parser: duckdb.DuckDBPyConnection, text: str) -> dict[str, Any]:
    row = parser.execute("SELECT json_serialize_sql(?)", [text]).fetchone()
    return json.loads(row[0]) if row else {"error": True, "error_message": "no parse tree"}


def _table_names(tree: dict[str, Any]) -> set[str]:
    """Every table or view name the statement refers to (case-folded)."""
    return {str(n["table_name"]).lower() for n in _walk(tree) if isinstance(n.get("table_name"), str)}


def _check_select(parser: duckdb.DuckDBPyConnection, text: str) -> set[str]:
    """Refuse table functions not known to only read, and functions that write; return the names referenced."""
    tree = _tree(parser, text)
    if tree.get("error"):
        raise _refuse("statement", text, f"could not be checked ({tree.get('error_message', 'no parse tree')})")
    for node in _walk(tree):
        if node.get("type") == "TABLE_FUNCTION":
            name = str((node.get("function") or {}).get("function_name", "")).lower()
            if name not in READ_TABLE_FUNCTIONS:
                raise _refuse("query", text, f"calls the table function {name}(), which is not known to only read")
        elif node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() in WRITE_FUNCTIONS:
            raise _refuse("query", text, f"calls {node['function_name']}(), which writes")
    return _table_names(tree)


def _explained(text: str) -> str:
    """The statement an EXPLAIN wraps: the text after EXPLAIN, ANALYZE and an optional (options) list."""
    tokens = duckdb.tokenize(text)
    i = 1  # token 0 is EXPLAIN
    while i < len(tokens) and tokens[i][1] == duckdb.token_type.comment:
        i += 1
    if i < len(tokens) and text[tokens[i][0]:].upper().startswith(("ANALYZE", "ANALYSE")):
        i += 1
    elif i < len(tokens) and text[tokens[i][0]] == "(":
        depth = 0
        for j in range(i, len(tokens)):
            ch = text[tokens[j][0]]
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                i = j + 1
                break
    return text[tokens[i][0]:] if i < len(tokens) else ""


_PARSER: list[duckdb.DuckDBPyConnection] = []
_PARSER_LOCK = threading.Lock()


def check_read_only(query: str) -> tuple[list[str], set[str]]:
    """The statements of `query`, each checked to only read (raises UnsafeQueryError otherwise), and the table
    or view names they refer to."""
    with _PARSER_LOCK:
        return _check(_parser(), query)


def _parser() -> duckdb.DuckDBPyConnection:
    """One in-memory connection that only parses, reused (opening one costs ~50 ms); use under _PARSER_LOCK."""
    if not _PARSER:
        _PARSER.append(duckdb.connect())
    return _PARSER[0]


def _check(parser: duckdb.DuckDBPyConnection, query: str) -> tuple[list[str], set[str]]:
    try:
        statements = parser.extract_statements(query)
    except duckdb.ParserException as exc:
        raise UnsafeQueryError(f"SQL syntax error: {exc}") from exc
    if not statements:
        raise UnsafeQueryError("empty SQL")
    out, names = [], set()
    for stmt in statements:
        text, kind = stmt.query, stmt.type.name
        inner, inner_kind = text, kind
        if kind == "EXPLAIN":
            inner = _explained(text)
            try:
                inner_stmts = parser.extract_statements(inner) if inner.strip() else []
            except duckdb.Error as exc:
                raise _refuse("EXPLAIN", text, f"wraps a statement that could not be checked ({exc})") from exc
            if len(inner_stmts) != 1:
                raise _refuse("EXPLAIN", text, "does not wrap exactly one statement")
            inner_kind = inner_stmts[0].type.name
        if inner_kind != "SELECT":
            raise _refuse(f"{kind} statement", text, "is not a query")
        names |= _check_select(parser, inner)
        out.append(text)
    return out, names


def _fingerprint(root: Path) -> str:
    """Identifies a state of the catalog file (and of a WAL left by a killed writer)."""
    parts = []
    for p in (root / catalog.CATALOG_FILE, root / (catalog.CATALOG_FILE + ".wal")):
        try:
            st = p.stat()
            parts.append(f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}")
        except FileNotFoundError:
            parts.append("none")
    return "_".join(parts)


def catalog_copy(root: Path) -> Path:
    """A private copy of the catalog, cached per catalog state (the query attaches it READ_ONLY).

    It is taken under a shared lock held only while the file is copied, so readers never block writers for
    longer; until the catalog changes, later queries reuse it without touching the catalog at all.
    """
    cache = root / ".tmp" / SQL_CACHE
    cache.mkdir(parents=True, exist_ok=True)
    slot = cache / f"{_fingerprint(root)}.duckdb"
    if slot.exists():
        return slot
    work = cache / f".{uuid.uuid4().hex}.duckdb"
    src = root / catalog.CATALOG_FILE
    try:
        with catalog.connect(root, read_only=True):
            slot = cache / f"{_fingerprint(root)}.duckdb"  # the state actually copied
            shutil.copyfile(src, work)
            wal = src.with_name(src.name + ".wal")
            if wal.exists():  # left by a killed writer: fold it in, so the copy is one self-contained file
                shutil.copyfile(wal, work.with_name(work.name + ".wal"))
                duckdb.connect(str(work)).close()
        os.replace(work, slot)
    finally:
        for leftover in (work, work.with_name(work.name + ".wal")):
            leftover.unlink(missing_ok=True)
    for old in cache.iterdir():  # older states: a query still using one keeps its open file
        if old != slot and not old.name.startswith("."):
            old.unlink(missing_ok=True)
    return slot


def _sandboxed(path: str) -> str:
    """Where a sandboxed view reads a snapshot file: through ReadOnlySnapshots or ReadOnlyObjects."""
    return sandbox_objects.sandbox_uri(path) if objects.is_uri(path) else f"{PROTOCOL}://{path}"


def _needed_views(con: duckdb.DuckDBPyConnection, root: Path, names: set[str] | None) -> dict[str, str]:
    """The catalog's data views the query reaches (directly or through a user's views), reading through
    ReadOnlySnapshots. `names=None`: all of them."""
    wanted = catalog.wanted_views(con, root, root / "_empty", locate=_sandboxed)
    if names is None:
        return wanted
    folded = {k.lower(): k for k in wanted}
    user_views = {v.lower(): sql for v, sql in con.execute(
        "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal AND database_name = current_database()"
    ).fetchall() if v.lower() not in folded}
    seen, frontier = set(), set(names)
    while frontier:
        name = frontier.pop()
        seen.add(name)
        if name in user_views:
            with _PARSER_LOCK:
                frontier |= _table_names(_tree(_parser(), _view_body(user_views[name]))) - seen
    return {folded[n]: wanted[folded[n]] for n in seen if n in folded}


def _view_body(create_sql: str) -> str:
    """'CREATE VIEW x AS SELECT ...;' -> 'SELECT ...' (duckdb_views().sql holds the whole statement)."""
    tokens = duckdb.tokenize(create_sql)
    for pos, _kind in tokens:
        if create_sql[pos:pos + 2].upper() == "AS" and not create_sql[pos + 2:pos + 3].isalnum():
            return create_sql[pos + 2:].strip().rstrip(";")
    return create_sql


def _limit_error(exc: duckdb.Error, limits: SqlLimits, timed_out: bool) -> QueryLimitError | None:
    if timed_out or isinstance(exc, duckdb.InterruptException):
        return QueryLimitError(
            f"the query ran longer than the {limits.timeout_s:g} s limit and was stopped (--timeout to change)"
        )
    if isinstance(exc, duckdb.OutOfMemoryException):
        return QueryLimitError(
            f"the query needed more than its memory limit ({limits.memory_limit}) or temp space "
            f"({limits.max_temp_size}) and was stopped (--memory-limit / --temp-limit to change): {exc}"
        )
    return None


def _prepare(con: duckdb.DuckDBPyConnection, root: Path, copy: Path, spill: Path, names: set[str] | None) -> None:
    """Attach the catalog copy READ_ONLY; shadow the data views the query needs with TEMP views that read through
    ReadOnlySnapshots; local files only in the private spill folder; lock the settings."""
    con.register_filesystem(ReadOnlySnapshots([str(root / "snapshots"), str(root / "_empty")]))
    con.execute(f"ATTACH {catalog.quote_literal(str(copy))} AS {ALIAS} (READ_ONLY)")
    con.execute(f"USE {ALIAS}")
    # Snapshots on object storage: each catalogued snapshot's folder, read-only, and nothing else of the bucket.
    remote = [p for p in catalog.snapshot_paths(con) if objects.is_uri(p)]
    if remote:
        con.register_filesystem(sandbox_objects.ReadOnlyObjects(remote))
    for name, sel in _needed_views(con, root, names).items():
        con.execute(f"CREATE TEMP VIEW {catalog.quote_ident(name)} AS {sel}")
    # Local files: the private spill folder only. Snapshot files: through ReadOnlySnapshots only.
    allowed = [str(spill) + "/", *(f"{PROTOCOL}://{root / sub}/" for sub in ("snapshots", "_empty")),
               *(sandbox_objects.sandbox_uri(p) + "/" for p in remote)]
    con.execute("SET allowed_directories = [" + ", ".join(map(catalog.quote_literal, allowed)) + "]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def sql_read_only(root: Path, query: str, limits: SqlLimits | None = None) -> pa.Table:
    """Run read-only SQL over a private copy of the catalog; the last statement's rows as an Arrow table."""
    statements, names = check_read_only(query)
    return run_statements(root, statements, limits or SqlLimits(), names)


def run_statements(root: Path, statements: list[str], limits: SqlLimits, names: set[str] | None = None) -> pa.Table:
    """The second layer alone: run statements (already checked) where they cannot write into the workspace;
    `names` are the views they refer to (None: make every data view readable)."""
    work = root / ".tmp" / f"sql-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    try:
        copy = catalog_copy(root)
        con = duckdb.connect(config={
            "memory_limit": limits.memory_limit, "threads": limits.threads,
            "temp_directory": str(work / "spill"), "max_temp_directory_size": limits.max_temp_size,
            "autoinstall_known_extensions": False, "allow_community_extensions": False,
        })
        timer = threading.Timer(limits.timeout_s, con.interrupt)
        try:
            _prepare(con, root, copy, work / "spill", names)
            timer.start()
            result = pa.table({})
            for text in statements:
                rel = con.sql(text)
                result = rel.to_arrow_table() if rel is not None else pa.table({})
            return result
        except duckdb.Error as exc:
            limit = _limit_error(exc, limits, timed_out=timer.finished.is_set())
            if limit is not None:
                raise limit from exc
            raise
        finally:
            timer.cancel()
            con.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
