"""The `dpo` verbs of training: train, iterate, rounds, runs, experiment, report, demo."""

from __future__ import annotations

import argparse
import os
from typing import Any

from pipelines import output
from pipelines.cli_common import load_toml, quiet_transformers, workspace


def cmd_train(args: argparse.Namespace) -> int:
    cfg_dict: dict[str, Any] = load_toml(args.config).get("train", {}) if args.config else {}
    cfg_dict.update({k: v for k, v in {"snapshot": args.snapshot, "model": args.model, "loss": args.loss,
                                       "max_steps": args.max_steps, "mode": args.mode,
                                       "output_dir": args.output_dir}.items() if v is not None})
    from pipelines.demo import train_with_progress

    if cfg_dict.get("model"):
        from pipelines.models import check_model

        check_model(str(cfg_dict["model"]))
    quiet_transformers()
    result = train_with_progress(cfg_dict, workspace(args), f"{cfg_dict.get('mode', 'dpo')} on {cfg_dict.get('snapshot')}")
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    done = f"{result.steps} steps" if result.losses else f"already finished at step {result.steps}, nothing rewritten"
    output.line(f"run {result.run_id}: {done}, trained on {result.snapshot_id}")
    if result.reference:  # cached reference log-probs: their own artefact, never a version of the dataset
        output.line(f"reference log-probs: {result.reference} ({'computed' if result.reference_computed else 'reused'})")
    output.line(f"checkpoint: {result.checkpoint}")
    if result.report:
        output.line(f"report: {result.report}")
    return 0


def cmd_iterate(args: argparse.Namespace) -> int:
    from pipelines.rounds import run_iterate

    quiet_transformers()
    history = run_iterate(args.config, rounds=args.rounds, workspace=args.workspace)
    output.line(f"{len(history) - 1} round(s) complete; lineage: dpo rounds")
    return 0


def cmd_rounds(args: argparse.Namespace) -> int:
    rows = workspace(args).sql("SELECT experiment, round, step, status, artefact, updated_at FROM rounds "
                         "ORDER BY experiment, round, updated_at")
    output.emit(rows, args.format, title="rounds")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    output.emit(workspace(args).sql("SELECT * FROM runs ORDER BY started_at"), args.format, title="runs")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from pipelines.experiment import TABLE_HEADER, format_table, run_experiment

    quiet_transformers()
    res = run_experiment(workspace=args.workspace, quick=args.quick)
    output.emit([dict(zip(TABLE_HEADER, row, strict=True)) for row in format_table(res["rows"])], args.format,
                title=f"controlled experiment: true reward vs KL to the reference ({res['seconds']:.0f}s)")
    output.line(f"plot: {res['plot']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipelines.report_ui import make_server

    ws = workspace(args)
    server = make_server(ws.root, args.host, args.port)
    output.message(f"serving the reports of {ws.root} at http://{args.host}:{server.server_address[1]}/ "
                   "(Ctrl-C stops); the Prefect UI's report artifacts link here")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    quiet_transformers()
    run_demo(workspace=args.workspace, quick=args.quick)
    return 0
