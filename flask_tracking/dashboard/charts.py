"""Geometry of the dashboard's charts, drawn as inline SVG by the templates.

Pure functions from report rows (what the QuerySet helpers return) to shapes with
coordinates in a fixed ``viewBox``; the templates only place them. No JavaScript and no chart
library: a chart is part of the HTML, readable without scripts, scaled by CSS.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

#: Size of every chart's ``viewBox``.
WIDTH = 800
HEIGHT = 220
#: Room for the axis labels, in viewBox units.
LEFT, RIGHT, TOP, BOTTOM = 52, 60, 12, 28
#: Latency histogram bin edges, in ms (a 1-2-5 series: latencies spread over decades).
HISTOGRAM_EDGES_MS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
#: At most this many labels under the time axis.
MAX_TIME_LABELS = 7


@dataclass(frozen=True)
class Bar:
    """One bar: its rectangle, and the tooltip (``<title>``) saying what it counts."""

    x: float
    y: float
    width: float
    height: float
    title: str
    css_class: str = "bar"


@dataclass(frozen=True)
class Label:
    """A text label at (x, y); ``anchor`` is the SVG ``text-anchor``."""

    x: float
    y: float
    text: str
    anchor: str = "middle"


@dataclass
class Chart:
    """Everything a template draws: bars, polylines (as SVG point lists), labels, grid lines."""

    width: int = WIDTH
    height: int = HEIGHT
    bars: list[Bar] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    #: Points of a line that has no neighbour to join (a one-point polyline is invisible).
    markers: list[tuple[float, float]] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    grid: list[float] = field(default_factory=list)
    description: str = ""
    plot_left: float = LEFT
    plot_right: float = WIDTH - RIGHT

    @property
    def empty(self) -> bool:
        """Whether there is nothing to draw."""
        return not self.bars


@dataclass(frozen=True)
class Share:
    """One row of a share table: name, count, and the bar's width in percent."""

    name: str
    count: int
    percent: float
    css_class: str = "bar"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``value`` (1 for 0)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return float(next(step * power for step in (1, 2, 5, 10) if step * power >= value))


def count_ceiling(value: float) -> int:
    """The top of a count axis: the smallest of 2, 4, 6, 10 times a power of ten (from 2) that
    is at least ``value``, so that its half, the axis' middle label, is a whole number."""
    if value <= 2:
        return 2
    power = 10 ** math.floor(math.log10(value))
    return int(next(step * power for step in (1, 2, 4, 6, 10) if step * power >= value))


def format_ms(value: float | None) -> str:
    """A duration in ms as people read it: ``"-"``, ``"0.42 ms"``, ``"12.5 ms"``, ``"1.50 s"``."""
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def timeline_chart(
    rows: Sequence[dict[str, Any]], starts: Sequence[datetime], bucket_size: timedelta
) -> Chart:
    """Requests (bars), errors (red bars in front) and p95 (a line, right axis) per bucket.

    ``rows`` come from :meth:`TrackingQuerySet.timeline`; ``starts`` are the buckets of the
    window, so empty buckets between records show as gaps rather than being left out. The chart
    begins at the first bucket with records: the empty start of a window says nothing.
    """
    by_start = {row["start"]: row for row in rows if row["count"]}
    chart = Chart()
    if not by_start:
        return chart
    first = min(by_start)
    starts = [start for start in starts if start >= first] or sorted(by_start)
    most = count_ceiling(max(row["count"] for row in rows))
    slowest = nice_ceiling(max((row["p95"] or 0) for row in rows))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / len(starts)
    bar_width = max(slot * 0.8, 0.5)
    layout = _time_layout(bucket_size)
    points: list[tuple[float, float]] = []
    for index, start in enumerate(starts):
        row = by_start.get(start)
        x = LEFT + index * slot + (slot - bar_width) / 2
        if row is None:
            _end_line(chart, points)
            points = []
            continue
        title = (
            f"{start:{layout}} UTC: {row['count']} requests, {row['errors']} errors, "
            f"p95 {format_ms(row['p95'])}"
        )
        height = row["count"] / most * plot_height
        chart.bars.append(Bar(x, TOP + plot_height - height, bar_width, height, title))
        if row["errors"]:
            error_height = row["errors"] / most * plot_height
            chart.bars.append(
                Bar(x, TOP + plot_height - error_height, bar_width, error_height, title, "error")
            )
        if row["p95"] is not None:
            y = TOP + plot_height - row["p95"] / slowest * plot_height
            points.append((x + bar_width / 2, y))
    _end_line(chart, points)
    chart.grid = [TOP + plot_height * fraction for fraction in (0, 0.5, 1)]
    for fraction in (0, 0.5, 1):
        y = TOP + plot_height * (1 - fraction) + 4
        chart.labels.append(Label(LEFT - 6, y, _count_text(most * fraction), "end"))
        chart.labels.append(Label(WIDTH - RIGHT + 6, y, format_ms(slowest * fraction), "start"))
    step = max(1, math.ceil(len(starts) / MAX_TIME_LABELS))
    for index in range(0, len(starts), step):
        x = LEFT + (index + 0.5) * slot
        chart.labels.append(Label(x, HEIGHT - 8, f"{starts[index]:{layout}}"))
    total = sum(row["count"] for row in rows)
    chart.description = (
        f"{total} requests in {len(starts)} buckets; bars: requests (errors in red); "
        "line: p95 latency (right axis)"
    )
    return chart


def _end_line(chart: Chart, points: list[tuple[float, float]]) -> None:
    """Add a finished run of p95 points: a polyline, or a marker for a lone point."""
    if len(points) == 1:
        chart.markers.append(points[0])
    elif points:
        chart.lines.append(" ".join(f"{x:.1f},{y:.1f}" for x, y in points))


def histogram_chart(times: Iterable[tuple[float, int]]) -> Chart:
    """How many requests took how long: bars over 1-2-5 bins (:data:`HISTOGRAM_EDGES_MS`),
    from the first non-empty bin to the last. ``times``: (milliseconds, requests) pairs, such
    as a rollup latency histogram's bucket values and counts."""
    chart = Chart()
    counts = [0] * len(HISTOGRAM_EDGES_MS)
    for value, count in times:
        counts[max(0, bisect.bisect_right(HISTOGRAM_EDGES_MS, value) - 1)] += count
    total = sum(counts)
    if not total:
        return chart
    used = [index for index, count in enumerate(counts) if count]
    first, last = used[0], used[-1]
    most = count_ceiling(max(counts))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / (last - first + 1)
    for position, index in enumerate(range(first, last + 1)):
        name = _bin_name(index)
        height = counts[index] / most * plot_height
        x = LEFT + position * slot + slot * 0.1
        title = f"{name}: {counts[index]} requests"
        chart.bars.append(Bar(x, TOP + plot_height - height, slot * 0.8, height, title))
        chart.labels.append(Label(LEFT + (position + 0.5) * slot, HEIGHT - 8, name))
    chart.grid = [TOP + plot_height * fraction for fraction in (0, 0.5, 1)]
    for fraction in (0, 0.5, 1):
        y = TOP + plot_height * (1 - fraction) + 4
        chart.labels.append(Label(LEFT - 6, y, _count_text(most * fraction), "end"))
    chart.description = f"latency of {total} requests, by bins of milliseconds"
    return chart


def shares(rows: Sequence[dict[str, Any]], key: str, *, limit: int = 10) -> list[Share]:
    """The first ``limit`` rows as share-table rows (name under ``key``), widths relative to
    the largest count; a missing name shows as "(unknown)"."""
    kept = list(rows)[:limit]
    most = max((row["count"] for row in kept), default=0) or 1
    return [
        Share(
            "(unknown)" if row[key] is None else str(row[key]),
            row["count"],
            round(row["count"] / most * 100, 1),
            _status_class(row[key]) if key in ("status_code", "status_class") else "bar",
        )
        for row in kept
    ]


def _status_class(status: Any) -> str:
    """The bar style of a status code (404) or class ("4xx")."""
    if isinstance(status, str) and status[:1].isdigit():
        status = int(status[0]) * 100
    if isinstance(status, int) and status >= 500:
        return "error"
    if isinstance(status, int) and status >= 400:
        return "warn"
    return "bar"


def _bin_name(index: int) -> str:
    low = HISTOGRAM_EDGES_MS[index]
    if index == len(HISTOGRAM_EDGES_MS) - 1:
        return f"≥{_edge_text(low)}"
    high = HISTOGRAM_EDGES_MS[index + 1]
    return f"<{_edge_text(high)}" if low == 0 else f"{_edge_text(low)}-{_edge_text(high)}"


def _edge_text(ms: float) -> str:
    return f"{ms / 1000:g}s" if ms >= 1000 else f"{ms:g}ms"


def _count_text(value: float) -> str:
    return f"{value / 1000:g}k" if value >= 10000 else f"{value:g}"


def _time_layout(bucket_size: timedelta) -> str:
    if bucket_size < timedelta(hours=1):
        return "%H:%M"
    if bucket_size < timedelta(days=1):
        return "%m-%d %H:00"
    return "%Y-%m-%d"
