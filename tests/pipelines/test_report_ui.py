"""`dpo report serve`: the reports the Prefect UI links to, over http, and nothing else of the workspace."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest

from pipelines.report_ui import make_server, markdown_table


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "ws"
    report = root / "snapshots" / "hh" / "v2" / "report.html"
    report.parent.mkdir(parents=True)
    report.write_text("<html>the report</html>")
    (report.parent / "pairs.parquet").write_bytes(b"PAR1")
    (tmp_path / "secret.html").write_text("outside")
    server = make_server(root, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 (a local test server)
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_serves_reports_and_an_index_only(served):
    assert _get(f"{served}/snapshots/hh/v2/report.html") == (200, "<html>the report</html>")
    status, index = _get(f"{served}/")
    assert status == 200 and 'href="/snapshots/hh/v2/report.html"' in index
    assert _get(f"{served}/snapshots/hh/v2/pairs.parquet")[0] == 404
    assert _get(f"{served}/../secret.html")[0] == 404
    assert _get(f"{served}/%2e%2e/secret.html")[0] == 404


def test_markdown_cells_show_text_not_markup():
    lines = markdown_table([{"what": "rejected: dedup/a|b [x](y) *z*", "count": 3}])
    assert lines[2] == r"| rejected: dedup/a\|b \[x\](y) \*z\* | 3 |"


def test_report_link_of_a_snapshot_on_object_storage_is_its_uri(tmp_path):
    from pipelines.report_ui import report_url
    from storage.objects import ObjectPath
    from storage.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    report = ObjectPath("s3://bucket/dpo/snapshots/hh/v1-0123456789abcdef") / "report.html"
    assert report_url(ws, report) == "s3://bucket/dpo/snapshots/hh/v1-0123456789abcdef/report.html"
    local = ws.root / "snapshots" / "hh" / "v1" / "report.html"
    assert report_url(ws, local).endswith("/snapshots/hh/v1/report.html")
