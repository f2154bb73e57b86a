"""The duration chart of a service page, drawn as inline SVG on the server.

Owns the geometry only (numbers and CSS class names); the template writes
the SVG elements, so every text in it goes through the template's escaping.

May use :mod:`oada_jobs.reports` records only; must not do I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..reports import JobRecord

__all__ = ["Bar", "DurationChart", "duration_chart"]

WIDTH = 640
HEIGHT = 140
#: Space left of the bars for the scale's labels.
MARGIN = 48


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    #: ``success`` or ``failure`` (a CSS class).
    status: str
    #: Tooltip: job key, type and duration.
    title: str
    key: str


@dataclass(frozen=True, slots=True)
class DurationChart:
    width: int
    height: int
    margin: int
    bars: list[Bar]
    #: Longest duration shown, in seconds (the top of the scale).
    top: float

    @property
    def top_label(self) -> str:
        return format_seconds(self.top)


def format_seconds(seconds: float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4.5 min``, ``2.0 h``; ``-`` for unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def duration_chart(records: Iterable[JobRecord], limit: int = 60) -> DurationChart:
    """Bars of the durations of the newest *limit* timed jobs, oldest on the left."""
    timed = sorted(
        (r for r in records if r.duration is not None and r.finished is not None),
        key=lambda r: (r.finished or "", r.key),
    )[-limit:]
    top = max((r.duration or 0.0 for r in timed), default=0.0) or 1.0
    inner = WIDTH - MARGIN
    step = inner / max(len(timed), 1)
    width = max(step * 0.8, 1.0)
    bars = []
    for index, record in enumerate(timed):
        duration = record.duration or 0.0
        height = max((HEIGHT - 10) * duration / top, 1.0)
        bars.append(
            Bar(
                x=round(MARGIN + index * step, 2),
                y=round(HEIGHT - height, 2),
                width=round(width, 2),
                height=round(height, 2),
                status=record.status,
                title=f"{record.key} {record.type or '?'} {format_seconds(duration)}",
                key=record.key,
            )
        )
    return DurationChart(WIDTH, HEIGHT, MARGIN, bars, top)
