"""The report as the Prefect UI can show it, and `dpo report serve` for the full HTML reports.

A browser refuses a `file://` link from the UI's http page, so the UI gets a Markdown artifact that renders in
place: the row accounting and the rejects by rule as tables, the length-bias summary, and the report's plots as
PNG images inlined as data URIs (taken from the snapshot's report.html, so they are the same figures). Its link
to the full report is http, served by `dpo report serve` (only report files under the workspace, read-only).
"""

from __future__ import annotations

import html
import os
import re
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from storage import objects
from storage.workspace import SnapshotInfo, Workspace

DEFAULT_PORT = 8765
REPORT_URL_ENV = "DPO_REPORT_URL"  # where `dpo report serve` is reachable, if not http://127.0.0.1:8765
_IMG = re.compile(r'<img alt="([^"]*)" src="(data:image/png;base64,[A-Za-z0-9+/=]+)"')


def report_base_url() -> str:
    return os.environ.get(REPORT_URL_ENV, f"http://127.0.0.1:{DEFAULT_PORT}").rstrip("/")


def report_url(ws: Workspace, report: Path) -> str:
    if objects.is_uri(report):  # a snapshot on object storage: `dpo report serve` serves local reports only
        return str(report)
    rel = report.resolve().relative_to(ws.root.resolve())
    return f"{report_base_url()}/{quote(rel.as_posix())}"


def _cell(value: Any) -> str:
    """A Markdown table cell that shows the value as text (pipes and markup characters escaped)."""
    text = " ".join(str(value).split())
    return re.sub(r"([\\|*_`\[\]<>#])", r"\\\1", text)


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    cols = list(rows[0])
    lines = ["| " + " | ".join(_cell(c) for c in cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return lines


def report_images(report: Path) -> list[tuple[str, str]]:
    """(title, data URI) of every plot in an HTML report written by data_quality.report."""
    if not report.exists():
        return []
    return [(html.unescape(alt), uri) for alt, uri in _IMG.findall(report.read_text(encoding="utf-8"))]


def report_markdown(ws: Workspace, info: SnapshotInfo, counts: list[dict[str, Any]],
                    length_bias: str | None = None) -> str:
    lines = [f"# {info.snapshot_id} ({info.kind})", "", *markdown_table(counts), ""]
    if length_bias:
        lines += [length_bias.replace("# Length bias", "## Length bias", 1), ""]
    report = info.path / "report.html"
    for title, uri in report_images(report):
        lines += [f"## {_cell(title)}", "", f"![{_cell(title)}]({uri})", ""]
    if report.exists():
        lines += [f"Full report: [{report_url(ws, report)}]({report_url(ws, report)}) "
                  f"(run `dpo report serve -w {ws.root}` to open it)."]
    return "\n".join(lines)


# -- dpo report serve ------------------------------------------------------------------------------------------
class _ReportHandler(SimpleHTTPRequestHandler):
    """Serves the HTML reports under the workspace and an index of them; nothing else (no Parquet, no catalog)."""

    root: Path

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = unquote(urlparse(self.path).path).lstrip("/")
        if path == "":
            return self._send(self._index().encode("utf-8"))
        target = (self.root / path).resolve()
        if not target.is_relative_to(self.root) or target.suffix != ".html" or not target.is_file():
            self.send_error(HTTPStatus.NOT_FOUND, "no such report")
            return None
        return self._send(target.read_bytes())

    def do_HEAD(self) -> None:  # noqa: N802
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)

    def _index(self) -> str:
        items = "".join(f'<li><a href="/{quote(p.relative_to(self.root).as_posix())}">'
                        f"{html.escape(p.relative_to(self.root).as_posix())}</a></li>"
                        for p in sorted(self.root.glob("**/report.html")))
        return f"<!doctype html><title>dpo reports</title><h1>Reports</h1><ul>{items or '<li>none yet</li>'}</ul>"

    def _send(self, body: bytes) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: no request log lines
        return


def make_server(ws_root: str | os.PathLike[str], host: str = "127.0.0.1", port: int = DEFAULT_PORT
                ) -> ThreadingHTTPServer:
    root = Path(ws_root).resolve()
    handler = type("ReportHandler", (_ReportHandler,), {"root": root})
    return ThreadingHTTPServer((host, port), handler)
