"""The time windows the dashboard reports on: the last hour, 24 hours, 7 days, or from/to.

A :class:`Window` knows its bounds (naive UTC, like the stored ``date_created``), the timeline
bucket that suits its length, and the query arguments that link back to it. It narrows a
QuerySet with the QuerySet's own helpers (``last``, ``between``), nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TypeVar

from ..documents import TrackingQuerySet, parse_datetime
from ..rollups import RollupQuerySet

_Selection = TypeVar("_Selection", TrackingQuerySet, RollupQuerySet)

#: The preset windows, by the name used in URLs and in TRACKING_DASHBOARD_DEFAULT_WINDOW.
PRESETS: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
#: How each preset is called on the page.
PRESET_LABELS = {"1h": "Last hour", "24h": "Last 24 hours", "7d": "Last 7 days"}
#: Timeline buckets of :meth:`TrackingQuerySet.timeline`, with their length.
BUCKETS: dict[str, timedelta] = {
    "minute": timedelta(minutes=1),
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}
#: A custom window gets the finest bucket that keeps the chart at most this many bars wide.
MAX_BARS = 200
#: Beyond this many buckets (a custom window of years), empty buckets are not drawn as gaps.
MAX_FILLED_BUCKETS = 1000
#: The latest moment a custom window may reach: a day before the end of year 9999, so that the
#: whole hour and the day bucket after any moment of the window are still dates.
LATEST = datetime(9999, 12, 31)


@dataclass(frozen=True)
class Window:
    """A reporting window: ``start`` (included) to ``end`` (excluded), naive UTC.

    ``preset`` is "1h", "24h" or "7d" for the preset windows and None for a custom one.
    """

    start: datetime
    end: datetime
    preset: str | None

    @property
    def label(self) -> str:
        """How the page names the window."""
        if self.preset is not None:
            return PRESET_LABELS[self.preset]
        return f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC"

    @property
    def bucket(self) -> str:
        """The timeline bucket: the finest one that draws at most :data:`MAX_BARS` bars."""
        span = self.end - self.start
        return next(
            (name for name, size in BUCKETS.items() if span / size <= MAX_BARS),
            "day",
        )

    @property
    def args(self) -> dict[str, str]:
        """The query arguments that select this window again."""
        if self.preset is not None:
            return {"window": self.preset}
        return {"from": _input_value(self.start), "to": _input_value(self.end)}

    @property
    def from_value(self) -> str:
        """The start as an ``<input type="datetime-local">`` value."""
        return _input_value(self.start)

    @property
    def to_value(self) -> str:
        """The end as an ``<input type="datetime-local">`` value."""
        return _input_value(self.end)

    @property
    def since_value(self) -> str:
        """The start to the microsecond, as the request list's ``since`` filter: its links
        list every request the window counts, those of the current minute too."""
        return self.start.isoformat()

    @property
    def until_value(self) -> str:
        """The end to the microsecond, as the request list's ``until`` filter."""
        return self.end.isoformat()

    def select(self, records: _Selection) -> _Selection:
        """``records`` (stored records or rollups) within this window (``last()`` for
        presets, ``between()`` otherwise)."""
        if self.preset is not None:
            return records.last(minutes=PRESETS[self.preset].total_seconds() / 60)
        return records.between(self.start, self.end)

    def bucket_starts(self) -> list[datetime]:
        """The start of every timeline bucket that overlaps the window, oldest first; empty
        when a custom window spans more than :data:`MAX_FILLED_BUCKETS` days (the chart then
        shows the buckets that have records, side by side)."""
        size = BUCKETS[self.bucket]
        first = _floor(self.start, self.bucket)
        count = math.ceil((self.end - first) / size)
        if count > MAX_FILLED_BUCKETS:
            return []
        return [first + index * size for index in range(count)]


def check_preset(name: str) -> str:
    """``name`` when it is a preset window, else :class:`ValueError` with a sentence."""
    if name not in PRESETS:
        raise ValueError(
            f"The window must be one of {', '.join(PRESETS)} (or a custom from/to), not {name!r}."
        )
    return name


def window_from_args(args: Mapping[str, str], default: str) -> Window:
    """The window the query arguments ask for: ``from``/``to`` (custom), else ``window``
    (a preset), else the ``default`` preset. Raises :class:`ValueError` with a sentence."""
    now = utc_now()
    start_text, end_text = args.get("from", "").strip(), args.get("to", "").strip()
    if start_text or end_text:
        start = parse_datetime(start_text) if start_text else now - PRESETS[default]
        end = parse_datetime(end_text) if end_text else now
        if start >= end:
            raise ValueError(f"The start ({start_text}) must be before the end ({end_text}).")
        if end > LATEST:
            raise ValueError(f"The window must end by {LATEST:%Y-%m-%d %H:%M} UTC, not {end_text}.")
        return Window(start, end, None)
    preset = check_preset(args.get("window") or default)
    return Window(now - PRESETS[preset], now, preset)


def utc_now() -> datetime:
    """Now, as a naive UTC datetime (the way records store dates)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _floor(moment: datetime, bucket: str) -> datetime:
    if bucket == "minute":
        return moment.replace(second=0, microsecond=0)
    if bucket == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _input_value(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M")
