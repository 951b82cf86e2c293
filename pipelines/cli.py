"""The `dpo` command. Each verb is a thin wrapper over a plain function that can be imported and called."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console

from pipelines import output
from pipelines.cli_common import load_toml, workspace
from pipelines.cli_train import (
    cmd_demo,
    cmd_experiment,
    cmd_iterate,
    cmd_report,
    cmd_rounds,
    cmd_runs,
    cmd_train,
)
from pipelines.errors import quiet_tracebacks, report_error

# Spinners only: every printed value goes through pipelines.output, which never reads data as markup.
console = Console(stderr=True, markup=False, emoji=False, highlight=False)


def _status(text: str) -> Any:
    """A spinner whose text is shown as written (rich's spinner would parse `[...]` in a snapshot name as markup)."""
    from rich.text import Text

    return console.status(Text(text))


def _print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    output.print_table(rows, title=title)


# -- verbs ------------------------------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    from pipelines import steps

    ws = workspace(args)
    with _status(f"reading {len(args.sources)} source(s)"):
        info = steps.ingest(ws, [str(s) for s in args.sources], args.dataset, format=args.format,
                            options=_ingest_options(args))
    output.message(f"format: {info.params.get('format')}")
    for src in info.meta.get("per_source", []):  # a file read row by row, or rows unlike a forced format
        if src.get("format_rows"):
            rows = ", ".join(f"{k}: {n}" for k, n in src["format_rows"].items())
            output.message(f"{src['source']} mixes formats, each row read by its own ({rows} rows)", label="note:")
        if src.get("rows_like"):
            rows = ", ".join(f"{n} look like {k}" for k, n in src["rows_like"].items())
            output.message(f"{src['source']}: {rows}, read as {src['format']} (forced)", label="warning:",
                           style="yellow")
    if info.quarantined:
        for q in ws.read_quarantine(info.snapshot_id).slice(0, 5).to_pylist():
            output.message(f"{q['source']} row {q['source_row']}: {q['error']}", label="quarantined", style="yellow")
        if info.quarantined > 5:
            output.message(f"... and {info.quarantined - 5} more (see the quarantine view)")
    _print_table([_counts(info)], title=f"ingested {info.snapshot_id}")
    return 0


def _ingest_options(args: argparse.Namespace) -> dict[str, Any]:
    """`-o KEY=VALUE` ingest options (values read as JSON when they parse, else as text) plus `--map`."""
    import json

    opts: dict[str, Any] = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"-o {item!r}: expected KEY=VALUE, e.g. -o pairing=best_vs_random")
        try:
            opts[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            opts[key.strip()] = value
    if args.map:
        opts["columns"] = args.map
    return opts


def cmd_clean(args: argparse.Namespace) -> int:
    from pipelines import steps

    gate = load_toml(args.config).get("gate", {}) if args.config else {}
    eval_prompts = steps.read_eval_prompts(args.eval_prompts)
    with _status(f"cleaning {args.snapshot}"):
        info = steps.clean(workspace(args), args.snapshot, gate, dataset=args.dataset, eval_prompts=eval_prompts)
    _print_table([_counts(info)], title=f"cleaned {info.parents[0] if info.parents else ''} -> {info.snapshot_id}")
    report = info.path / "report.html"
    if report.exists():
        output.line(f"report: {report}")
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    from pipelines.flows import run_refresh

    with _status(f"refreshing the sources of {args.config} (flow run logs below)"):
        infos = run_refresh(args.config, workspace=args.workspace)
    _print_table([_counts(i) for i in infos], title="refresh")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import httpx

    from pipelines.schedules import serve

    try:
        serve(args.config)
    except httpx.TransportError as exc:
        from prefect.settings import PREFECT_API_URL

        raise ConnectionError(f"cannot reach the Prefect server at {PREFECT_API_URL.value()} ({exc}): start it "
                              "with `prefect server start`") from exc
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    infos = workspace(args).list_snapshots(args.dataset)
    rows = [{**_counts(i), "kind": i.kind, "parents": i.parents, "created": i.created_at} for i in infos]
    output.emit(rows, args.format, title="snapshots")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    ws = workspace(args)
    info = ws.resolve(args.snapshot)
    chain, cur = [], info
    while cur.parents:  # lineage back to the raw snapshot
        cur = ws.resolve(cur.parents[0])
        chain.append(cur)
    schema = [{"column": f.name, "type": str(f.type), "nullable": f.nullable}
              for f in ws.read(info.snapshot_id).schema]
    rejects: list[dict[str, Any]] = []
    if info.rejected:
        from storage.catalog import quote_literal

        rejects = ws.sql(
            "SELECT rule, reason, count(*) AS n FROM rejects WHERE snapshot_id = "  # noqa: S608 (quoted literal)
            + quote_literal(info.snapshot_id) + " GROUP BY ALL ORDER BY n DESC LIMIT 20"
        ).to_pylist()
    fmt = "json" if args.json else args.format
    if fmt != "table":  # one record: the catalog row plus lineage, schema and rejects by rule
        output.emit([{**info.as_dict(), "lineage": [c.snapshot_id for c in chain], "schema": schema,
                      "rejects_by_rule": rejects}], fmt)
        return 0
    output.print_table([_counts(info)], title=info.snapshot_id)
    output.line(f"kind: {info.kind}   created: {info.created_at}   flow run: {info.flow_run or '-'}")
    output.line(f"content hash: {info.content_hash}   schema version: {info.schema_version}")
    output.line(f"path: {info.path}")
    output.line("lineage: " + " <- ".join([info.snapshot_id, *(f"{c.snapshot_id} ({c.kind})" for c in chain)]))
    output.print_table(schema, title="schema")
    if rejects:
        output.print_table(rejects, title="rejects by rule")
    if info.params:
        output.line("params: " + output.json_bytes(info.params).decode("utf-8")[:2000])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipelines.export import export_snapshot

    res = export_snapshot(workspace(args), args.snapshot, args.to, args.format, overwrite=args.overwrite,
                          with_reference=args.with_reference_logps)
    for warning in res.warnings:
        output.message(warning, label="warning:", style="yellow")
    output.line(f"wrote {res.rows} rows to {res.path}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from storage.sandbox import SqlLimits

    limits = SqlLimits(timeout_s=args.timeout, memory_limit=args.memory_limit, threads=args.threads,
                       max_temp_size=args.temp_limit)
    table = workspace(args).sql(args.query, limits)
    # The table view shows --limit rows; json and csv are the data, every row.
    output.emit(table, args.format, limit=args.limit if args.format == "table" else None)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from storage.doctor import diagnose

    ws = workspace(args)  # opening repoints a moved or copied workspace and upgrades an old catalog
    findings = [f.as_dict() for f in diagnose(ws.root, fix=args.fix)]
    output.emit(findings or [{"check": "all", "path": str(ws.root), "problem": "none", "status": "ok",
                              "action": ""}], args.format, title="doctor")
    open_ = sum(f["status"] == "open" for f in findings)
    if open_:
        output.message(f"{open_} problem(s) remain" + ("" if args.fix else " (--fix repairs what is safe)"))
    return 1 if open_ else 0


# -- helpers ----------------------------------------------------------------------------------------------------
def _counts(info: Any) -> dict[str, Any]:
    return {"snapshot": info.snapshot_id, "input": info.input_rows, "kept": info.kept, "rejected": info.rejected,
            "quarantined": info.quarantined}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dpo-platform")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


def _global_options() -> argparse.ArgumentParser:
    """Options every verb accepts before or after its name (`dpo -w ws sql ...` = `dpo sql ... -w ws`)."""
    g = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option not given after the verb must not reset the value given before it.
    g.add_argument("--workspace", "-w", default=argparse.SUPPRESS,
                   help="workspace folder (default $DPO_WORKSPACE or ./dpo-workspace)")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an error")
    return g


def _add_format(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--format", "-f", choices=output.FORMATS, default="table",
                    help="table (for reading), json (one object per line) or csv (nested values as JSON)")


def build_parser() -> argparse.ArgumentParser:
    common = _global_options()
    p = argparse.ArgumentParser(prog="dpo", description="Preference-data platform for DPO.", parents=[common])
    p.add_argument("--version", action="version", version=f"dpo {_version()}")
    sub = p.add_subparsers(dest="verb", required=True)

    def verb(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, parents=[common])
        sp.set_defaults(fn=fn)
        return sp

    sp = verb("ingest", cmd_ingest, "read sources into a raw snapshot (unreadable rows are quarantined)")
    sp.add_argument("sources", nargs="+")
    sp.add_argument("--dataset", "-d", required=True)
    from data_quality.ingest.formats import FORMATS

    sp.add_argument("--format", "-f", default=None, choices=FORMATS, metavar="FORMAT",
                    help=f"override format auto-detection: one of {', '.join(FORMATS)}")
    sp.add_argument("--map", default=None, metavar="TARGET=SOURCE,...",
                    help="read any layout through a column map, e.g. prompt=question,chosen=answers.0.text,"
                         "rejected=bad (dotted paths reach into objects and lists)")
    sp.add_argument("--option", "-o", action="append", metavar="KEY=VALUE",
                    help="an ingest option (repeatable): pairing, min_margin, score_key, pku_label, seed, ...")
    sp = verb("clean", cmd_clean, "run the quality gate into a new snapshot + rejects + report")
    sp.add_argument("snapshot", help="NAME or NAME@VERSION")
    sp.add_argument("--config", "-c", default=None, help="TOML with a [gate] table")
    sp.add_argument("--dataset", default=None, help="name of the clean dataset (default: same name)")
    sp.add_argument("--eval-prompts", default=None, help="file of evaluation prompts to decontaminate against")
    sp = verb("refresh", cmd_refresh, "ingest + clean a configured set of sources now")
    sp.add_argument("--config", "-c", required=True)
    sp = verb("serve", cmd_serve, "serve the configured refresh on its cron schedule (needs `prefect server start`)")
    sp.add_argument("--config", "-c", required=True)
    sp = verb("snapshots", cmd_snapshots, "list snapshots")
    sp.add_argument("dataset", nargs="?")
    _add_format(sp)
    sp = verb("show", cmd_show, "schema, counts and lineage of a snapshot")
    sp.add_argument("snapshot")
    _add_format(sp)
    sp.add_argument("--json", action="store_true", help="same as --format json")
    sp = verb("export", cmd_export, "export a snapshot for TRL / HF datasets")
    sp.add_argument("snapshot")
    sp.add_argument("--to", required=True, help="target file (.jsonl / .parquet) or folder (hf-dataset)")
    sp.add_argument("--format", default="trl-standard",
                    choices=["trl-standard", "trl-conversational", "hf-dataset"])
    sp.add_argument("--overwrite", action="store_true",
                    help="replace a previous export of this tool at --to (never anything else)")
    sp.add_argument("--with-reference-logps", action="store_true",
                    help="also export cached reference log-probs (TRL computes its own by default)")
    sp = verb("sql", cmd_sql, "read-only SQL over the catalog's views")
    sp.add_argument("query")
    _add_format(sp)
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--timeout", type=float, default=60.0, help="seconds before the query is stopped (60)")
    sp.add_argument("--memory-limit", default="2GB", help="DuckDB memory limit for the query (2GB)")
    sp.add_argument("--threads", type=int, default=2, help="DuckDB threads for the query (2)")
    sp.add_argument("--temp-limit", default="4GB", help="spill-to-disk space for the query (4GB)")
    sp = verb("doctor", cmd_doctor, "check a workspace (orphans, stale temp/trash, broken views, dead runs); "
              "exit 1 while problems remain")
    sp.add_argument("--fix", action="store_true", help="repair what is safe (only what the workspace made)")
    _add_format(sp)
    sp = verb("train", cmd_train, "DPO (or SFT) training on a snapshot")
    sp.add_argument("--snapshot", "-s", default=None)
    sp.add_argument("--model", "-m", default=None, help="local path or hub id of the policy")
    sp.add_argument("--config", "-c", default=None, help="TOML with a [train] table")
    sp.add_argument("--loss", default=None)
    sp.add_argument("--mode", default=None, choices=["dpo", "sft"])
    sp.add_argument("--max-steps", type=int, default=None)
    sp.add_argument("--output-dir", default=None)
    sp = verb("iterate", cmd_iterate, "iterative DPO rounds")
    sp.add_argument("--config", "-c", required=True)
    sp.add_argument("--rounds", type=int, default=None)
    _add_format(verb("rounds", cmd_rounds, "lineage of iterative rounds"))
    _add_format(verb("runs", cmd_runs, "training runs and their status"))
    sp = verb("experiment", cmd_experiment, "controlled experiment: DPO, Preferred-FT, best-of-n and rounds "
              "against a known reward, as a reward-vs-KL table")
    sp.add_argument("--quick", action="store_true", help="smaller settings (used by the tests)")
    _add_format(sp)
    sp = verb("report", cmd_report, "serve the HTML reports of the workspace over http (for the Prefect UI)")
    sp.add_argument("action", choices=["serve"])
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=8765, help="port (8765; the artifacts link here unless "
                    "$DPO_REPORT_URL says otherwise)")
    sp = verb("demo", cmd_demo, "the whole product end to end on the embedded defaults")
    sp.add_argument("--quick", action="store_true", help="smaller settings (used by the tests)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from pipelines.logging import configure_logging

    args = build_parser().parse_args(argv)
    args.workspace = getattr(args, "workspace", None)
    args.debug = getattr(args, "debug", False)
    # Prefect's local (ephemeral) server gets 20 s to start by default: too short on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    configure_logging()
    quiet_tracebacks(not args.debug)
    try:
        return args.fn(args)
    except Exception as exc:  # noqa: BLE001 - one line for the user; --debug re-raises with the traceback
        if args.debug:
            raise
        return report_error(exc)
    except KeyboardInterrupt:
        output.message("interrupted", label="error:", style="bold red")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
