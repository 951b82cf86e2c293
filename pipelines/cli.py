"""The `dpo` command. Each verb is a thin wrapper over a plain function that can be imported and called."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

# Tables are wide; when piped (no terminal to measure) don't squeeze them into 80 columns.
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 200)


def _ws(args: argparse.Namespace):
    from storage.workspace import Workspace

    return Workspace(args.workspace)


def _print_table(rows: list[dict[str, Any]], title: str | None = None, max_width: int = 60) -> None:
    if not rows:
        out.print("(no rows)")
        return
    table = Table(title=title, show_lines=False)
    for col in rows[0]:
        table.add_column(str(col), overflow="fold", max_width=max_width)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r.values()))
    out.print(table)


# -- verbs ------------------------------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    from pipelines import steps

    ws = _ws(args)
    with console.status(f"reading {len(args.sources)} source(s)"):
        info = steps.ingest(ws, [str(s) for s in args.sources], args.dataset, format=args.format)
    if info.quarantined:
        for q in ws.read_quarantine(info.snapshot_id).slice(0, 5).to_pylist():
            console.print(f"[yellow]quarantined[/] {q['source']} row {q['source_row']}: {q['error']}")
        if info.quarantined > 5:
            console.print(f"... and {info.quarantined - 5} more (see the quarantine view)")
    _print_table([_counts(info)], title=f"ingested {info.snapshot_id}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from pipelines import steps

    gate = _load_toml(args.config).get("gate", {}) if args.config else {}
    eval_prompts = steps.read_eval_prompts(args.eval_prompts)
    with console.status(f"cleaning {args.snapshot}"):
        info = steps.clean(_ws(args), args.snapshot, gate, dataset=args.dataset, eval_prompts=eval_prompts)
    _print_table([_counts(info)], title=f"cleaned {info.parents[0] if info.parents else ''} -> {info.snapshot_id}")
    report = info.path / "report.html"
    if report.exists():
        out.print(f"report: {report}")
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    from pipelines.flows import run_refresh

    with console.status(f"refreshing the sources of {args.config} (flow run logs below)"):
        infos = run_refresh(args.config, workspace=args.workspace)
    _print_table([_counts(i) for i in infos], title="refresh")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.schedules import serve

    serve(args.config)
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    infos = _ws(args).list_snapshots(args.dataset)
    _print_table([{**_counts(i), "kind": i.kind, "parents": ",".join(i.parents),
                   "created": i.created_at.strftime("%Y-%m-%d %H:%M:%S")} for i in infos], title="snapshots")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    ws = _ws(args)
    info = ws.resolve(args.snapshot)
    if args.json:
        out.print_json(json.dumps(info.as_dict(), default=str))
        return 0
    _print_table([_counts(info)], title=info.snapshot_id)
    out.print(f"kind: {info.kind}   created: {info.created_at}   flow run: {info.flow_run or '-'}")
    out.print(f"content hash: {info.content_hash}   schema version: {info.schema_version}")
    out.print(f"path: {info.path}")
    chain, cur = [], info
    while cur.parents:  # lineage back to the raw snapshot
        cur = ws.resolve(cur.parents[0])
        chain.append(f"{cur.snapshot_id} ({cur.kind})")
    out.print("lineage: " + " <- ".join([info.snapshot_id, *chain]))
    schema = ws.read(info.snapshot_id).schema
    _print_table([{"column": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema], title="schema")
    if info.rejected:
        from storage.catalog import quote_literal

        rows = ws.sql(
            "SELECT rule, reason, count(*) AS n FROM rejects WHERE snapshot_id = "  # noqa: S608 (quoted literal)
            + quote_literal(info.snapshot_id) + " GROUP BY ALL ORDER BY n DESC LIMIT 20"
        ).to_pylist()
        _print_table(rows, title="rejects by rule")
    if info.params:
        out.print("params: " + json.dumps(info.params, sort_keys=True)[:2000])
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from storage.formats import export

    ws = _ws(args)
    path = export(ws.read(args.snapshot), args.to, args.format)
    out.print(f"wrote {path}")
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    table = _ws(args).sql(args.query)
    if args.format == "json":
        for row in table.to_pylist():
            out.print(json.dumps(row, default=str, ensure_ascii=False), soft_wrap=True)
    elif args.format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sys.stdout.buffer)
    else:
        _print_table(table.slice(0, args.limit).to_pylist())
        if table.num_rows > args.limit:
            console.print(f"({table.num_rows} rows, showing {args.limit}; use --limit)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg_dict: dict[str, Any] = _load_toml(args.config).get("train", {}) if args.config else {}
    cfg_dict.update({k: v for k, v in {"snapshot": args.snapshot, "model": args.model, "loss": args.loss,
                                       "max_steps": args.max_steps, "mode": args.mode,
                                       "output_dir": args.output_dir}.items() if v is not None})
    from pipelines.demo import train_with_progress

    _quiet_transformers()
    result = train_with_progress(cfg_dict, _ws(args), f"{cfg_dict.get('mode', 'dpo')} on {cfg_dict.get('snapshot')}")
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    out.print(f"run {result.run_id}: {result.steps} steps, trained on {result.snapshot_id}")
    out.print(f"checkpoint: {result.checkpoint}")
    if result.report:
        out.print(f"report: {result.report}")
    return 0


def cmd_iterate(args: argparse.Namespace) -> int:
    from pipelines.rounds import run_iterate

    _quiet_transformers()
    history = run_iterate(args.config, rounds=args.rounds, workspace=args.workspace)
    out.print(f"{len(history) - 1} round(s) complete; lineage: dpo rounds")
    return 0


def cmd_rounds(args: argparse.Namespace) -> int:
    rows = _ws(args).sql("SELECT experiment, round, step, status, artefact, updated_at FROM rounds").to_pylist()
    _print_table(rows, title="rounds")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    _quiet_transformers()
    run_demo(workspace=args.workspace, quick=args.quick)
    return 0


def _quiet_transformers() -> None:
    """Weight-loading progress bars of every model load would bury the command's own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


# -- helpers ----------------------------------------------------------------------------------------------------
def _counts(info: Any) -> dict[str, Any]:
    return {"snapshot": info.snapshot_id, "input": info.input_rows, "kept": info.kept, "rejected": info.rejected,
            "quarantined": info.quarantined}


def _load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"error: {path}: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dpo", description="Preference-data platform for DPO.")
    p.add_argument("--workspace", "-w", default=None,
                   help="workspace folder (default $DPO_WORKSPACE or ./dpo-workspace)")
    sub = p.add_subparsers(dest="verb", required=True)

    def verb(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    sp = verb("ingest", cmd_ingest, "read sources into a raw snapshot (unreadable rows are quarantined)")
    sp.add_argument("sources", nargs="+")
    sp.add_argument("--dataset", "-d", required=True)
    sp.add_argument("--format", "-f", default=None, help="override format auto-detection")
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
    sp = verb("show", cmd_show, "schema, counts and lineage of a snapshot")
    sp.add_argument("snapshot")
    sp.add_argument("--json", action="store_true")
    sp = verb("export", cmd_export, "export a snapshot for TRL / HF datasets")
    sp.add_argument("snapshot")
    sp.add_argument("--to", required=True, help="target file (.jsonl / .parquet) or folder (hf-dataset)")
    sp.add_argument("--format", default="trl-standard",
                    choices=["trl-standard", "trl-conversational", "hf-dataset"])
    sp = verb("sql", cmd_sql, "read-only SQL over the catalog's views")
    sp.add_argument("query")
    sp.add_argument("--format", choices=["table", "json", "csv"], default="table")
    sp.add_argument("--limit", type=int, default=50)
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
    verb("rounds", cmd_rounds, "lineage of iterative rounds")
    sp = verb("demo", cmd_demo, "the whole product end to end on the embedded defaults")
    sp.add_argument("--quick", action="store_true", help="smaller settings (used by the tests)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    import duckdb

    from pipelines.logging import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        return args.fn(args)
    except duckdb.Error as exc:
        console.print(f"[bold red]SQL error:[/] {exc}")
        return 2
    except (ValueError, KeyError, FileNotFoundError, TypeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        console.print(f"[bold red]error:[/] {msg}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
