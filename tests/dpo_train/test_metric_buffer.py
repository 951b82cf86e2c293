"""A catalog held by an inspecting client never kills a training: metric rows wait in memory."""

import pytest

from dpo_train.metrics import MetricBuffer
from storage.errors import CatalogBusyError


class _BusyOnce:
    def __init__(self, busy: int) -> None:
        self.busy, self.rows = busy, []

    def log_metrics(self, run_id, rows):
        if self.busy:
            self.busy -= 1
            raise CatalogBusyError("catalog held by duckdb (PID 1)")
        self.rows.extend(rows)


def test_busy_catalog_keeps_rows_for_the_next_flush():
    ws = _BusyOnce(busy=1)
    buf = MetricBuffer(ws, "run", enabled=True)
    buf.add(0, {"loss": 0.69})
    buf.flush()  # busy: nothing lost, nothing raised
    assert ws.rows == [] and buf.pending == [(0, "loss", 0.69)]
    buf.add(1, {"loss": 0.5})
    buf.flush()
    assert ws.rows == [(0, "loss", 0.69), (1, "loss", 0.5)] and buf.pending == []


def test_final_flush_reports_a_busy_catalog():
    buf = MetricBuffer(_BusyOnce(busy=1), "run", enabled=True)
    buf.add(0, {"loss": 0.69})
    with pytest.raises(CatalogBusyError):
        buf.flush(final=True)
