"""Plots for the self-contained HTML reports stored with snapshots, runs and rounds: a figure as base64 PNG.

Uses a bare Figure with the Agg canvas, not pyplot: no global backend switch, no figure registry to leak,
safe from worker threads.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any


def png_base64(draw: Callable[[Any], None], w: float = 5.2, h: float = 3.0, dpi: int = 90) -> str:
    """Call `draw(ax)` on a fresh axes and return the figure as base64-encoded PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=dpi)
    FigureCanvasAgg(fig)
    draw(fig.add_subplot())
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")
