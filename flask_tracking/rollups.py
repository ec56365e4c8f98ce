"""Reading the rollups: counts, errors and latency of every tracked request.

The writer adds every request that passed the path, method and view rules to the rollups of
its minute and of its hour, endpoint and method (see :mod:`flask_tracking.aggregate`),
whether its record was kept or not (sampling, ``TRACKING_ONLY_ERRORS``, a full queue) and
long after the capped collection evicted it. :class:`Rollup` maps those documents; its
QuerySet's :meth:`~RollupQuerySet.stats` and :meth:`~RollupQuerySet.timeline` give rows of
the same shape as ``Tracking.objects.stats()`` / ``timeline()``: where the two disagree, the
rollups are the count of what happened and the records are what is still stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from mongoengine import DateTimeField, DictField, FloatField, IntField, StringField

from ._mongoengine import Document, QuerySet
from .aggregate import histogram_percentile
from .documents import parse_datetime, window_start
from .reports import PERCENTILES, TIMELINE_BUCKETS, check_choice

__all__ = ["ROLLUP_GROUPS", "STATUS_CLASSES", "Rollup", "RollupQuerySet"]

#: What :meth:`RollupQuerySet.stats` can group by.
ROLLUP_GROUPS = ("endpoint", "method", "status_class")
#: The status classes a rollup counts (``other``: no status or an odd one).
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "other")

_SUMS = ("count", "errors", "client_errors", "timed", "time_sum", "bytes_in", "bytes_out")


class RollupQuerySet(QuerySet):
    """QuerySet of :class:`Rollup` documents, with filters and the reports.

    Filters chain like ``Tracking.objects``' ones:
    ``Rollup.objects.last(hours=24).for_endpoint("checkout").stats()``. Every request is in
    one minute rollup and in one hour rollup; the reports pick for each part of the window
    the documents that cover it: hour rollups for the whole hours, minute rollups for the
    minutes before the first whole hour and after the last (and for a ``"minute"``
    timeline), hour rollups for all time when no window is given. A minute belongs to a
    window when its start is in it. The window is kept by the QuerySet, not as a filter:
    iterate or count with ``filter(period=..., start__gte=...)`` to see documents.
    """

    _window: tuple[datetime | None, datetime | None] | None = None

    def _clone_into(self, new_qs: Any) -> Any:
        new_qs = super()._clone_into(new_qs)  # type: ignore[misc]
        new_qs._window = self._window
        return new_qs

    def between(
        self, start: datetime | date | str | None = None, end: datetime | date | str | None = None
    ) -> RollupQuerySet:
        """The requests from ``start`` (included) until ``end`` (excluded); either may be
        None. Takes what ``Tracking.objects.between`` takes (naive means UTC); a second call
        narrows the window further."""
        first = None if start is None else parse_datetime(start)
        stop = None if end is None else parse_datetime(end)
        if first is not None and stop is not None and first > stop:
            raise ValueError(f"The start ({start}) is after the end ({end}).")
        low, high = self._window or (None, None)
        if first is not None and (low is None or first > low):
            low = first
        if stop is not None and (high is None or stop < high):
            high = stop
        narrowed: RollupQuerySet = self.clone()
        narrowed._window = (low, high)
        return narrowed

    def last(self, *, minutes: float = 0, hours: float = 0, days: float = 0) -> RollupQuerySet:
        """The requests of the last ``minutes`` + ``hours`` + ``days`` (this machine's clock).
        Raises :class:`ValueError` for a duration that is not positive or reaches back before
        year 1."""
        return self.between(window_start(minutes=minutes, hours=hours, days=days))

    def for_endpoint(self, name: str | None) -> RollupQuerySet:
        """Rollups of one Flask endpoint (None: requests that matched no view)."""
        return self.filter(endpoint=name)

    def for_method(self, method: str) -> RollupQuerySet:
        """Rollups of one HTTP method (any case)."""
        return self.filter(method=method.upper())

    # --- reports -------------------------------------------------------------------------

    def stats(self, group_by: str = "endpoint") -> list[dict[str, Any]]:
        """Per ``group_by`` value (endpoint, method or status_class), most requests first.

        Rows of ``Tracking.objects.stats()``'s shape: the group value under the ``group_by``
        key, ``count``, ``errors`` (status 500 and above, or the view raised),
        ``error_rate``, ``mean``, ``p50``, ``p95``, ``p99`` and ``max`` execution time in ms,
        ``bytes_in``, ``bytes_out``; plus ``client_errors`` (4xx) and ``status`` (requests per
        status class). Percentiles come from the latency histogram (at most 4.9 % from the
        exact value). By status class, a row counts the requests of that class: ``errors``
        are its 5xx requests, and no times are known per class (None).
        """
        check_choice("group_by", group_by, ROLLUP_GROUPS)
        if group_by == "status_class":
            return self._by_status_class()
        rows = self._summaries(f"${group_by}")
        rows.sort(key=lambda row: (-row["count"], row["_id"] is not None, row["_id"] or ""))
        return [{group_by: row.pop("_id"), **row} for row in rows]

    def summary(self) -> dict[str, Any]:
        """One row (the fields of :meth:`stats`) for every selected request together."""
        rows = self._summaries(None)
        row = rows[0] if rows else {"_id": None, **_summary_of({}, {})}
        row.pop("_id")
        return row

    def timeline(self, bucket: str = "hour") -> list[dict[str, Any]]:
        """One row per ``bucket`` ("minute", "hour" or "day", UTC) that had requests, oldest
        first: ``start`` (naive UTC datetime) and the fields of :meth:`stats`."""
        check_choice("bucket", bucket, TIMELINE_BUCKETS)
        layout = TIMELINE_BUCKETS[bucket]
        key = {"$dateToString": {"format": layout, "date": "$start"}}
        rows = self._summaries(key, minutes_only=bucket == "minute")
        rows.sort(key=lambda row: row["_id"])
        return [{"start": datetime.strptime(row.pop("_id"), layout), **row} for row in rows]

    def latency_histogram(self) -> dict[int, int]:
        """Requests per latency bucket (see :func:`flask_tracking.aggregate.bucket_value`)."""
        found: dict[int, int] = {}
        for part in self._parts(minutes_only=False):
            for counts in part._histograms(None).values():
                _add_counts(found, counts)
        return found

    # --- the pipelines -------------------------------------------------------------------

    def _parts(self, *, minutes_only: bool) -> list[RollupQuerySet]:
        """This selection as QuerySets of one period each, which together cover the window
        once: each is answered from an index on (period, start)."""
        low, high = self._window or (None, None)
        if minutes_only:
            return [self._part("minute", low, high)]
        if self._window is None:
            return [self._part("hour", None, None)]
        first_hour = None if low is None else _ceil_hour(low)
        last_hour = None if high is None else _floor_hour(high)
        if first_hour is not None and last_hour is not None and first_hour >= last_hour:
            return [self._part("minute", low, high)]
        parts = [self._part("hour", first_hour, last_hour)]
        if low is not None and first_hour is not None and low < first_hour:
            parts.append(self._part("minute", low, first_hour))
        if high is not None and last_hour is not None and last_hour < high:
            parts.append(self._part("minute", last_hour, high))
        return parts

    def _part(self, period: str, low: datetime | None, high: datetime | None) -> RollupQuerySet:
        criteria: dict[str, Any] = {"period": period}
        if low is not None:
            criteria["start__gte"] = low
        if high is not None:
            criteria["start__lt"] = high
        part: RollupQuerySet = self.filter(**criteria)
        return part

    def _summaries(self, key: Any, *, minutes_only: bool = False) -> list[dict[str, Any]]:
        """One summary row per value of the aggregation expression ``key`` (``_id``)."""
        totals: dict[Any, dict[str, Any]] = {}
        histograms: dict[Any, dict[int, int]] = {}
        for part in self._parts(minutes_only=minutes_only):
            for row in part._totals(key):
                identity = _hashable(row["_id"])
                kept = totals.get(identity)
                totals[identity] = row if kept is None else _merged_totals(kept, row)
            for identity, counts in part._histograms(key).items():
                _add_counts(histograms.setdefault(identity, {}), counts)
        return [
            {"_id": total["_id"], **_summary_of(total, histograms.get(identity, {}))}
            for identity, total in totals.items()
        ]

    def _totals(self, key: Any) -> Iterator[dict[str, Any]]:
        group: dict[str, Any] = {"_id": key}
        group.update((name, {"$sum": f"${name}"}) for name in _SUMS)
        group["time_max"] = {"$max": "$time_max"}
        group.update((f"s_{name}", {"$sum": f"$status.{name}"}) for name in STATUS_CLASSES)
        return self._aggregate([{"$group": group}])

    def _histograms(self, key: Any) -> dict[Any, dict[int, int]]:
        """The latency histogram (bucket -> requests) per value of ``key``."""
        pipeline: list[dict[str, Any]] = [
            {
                "$project": {
                    "key": {"$literal": None} if key is None else key,
                    "h": {"$objectToArray": "$histogram"},
                }
            },
            {"$unwind": "$h"},
            {"$group": {"_id": {"key": "$key", "b": "$h.k"}, "n": {"$sum": "$h.v"}}},
        ]
        found: dict[Any, dict[int, int]] = {}
        for row in self._aggregate(pipeline):
            counts = found.setdefault(_hashable(row["_id"].get("key")), {})
            bucket = int(row["_id"]["b"])
            counts[bucket] = counts.get(bucket, 0) + int(row["n"])
        return found

    def _by_status_class(self) -> list[dict[str, Any]]:
        status: dict[str, int] = {}
        for part in self._parts(minutes_only=False):
            for total in part._totals(None):
                for name in STATUS_CLASSES:
                    status[name] = status.get(name, 0) + int(total.get(f"s_{name}") or 0)
        found = []
        for name in STATUS_CLASSES:
            count = status.get(name, 0)
            if not count:
                continue
            errors = count if name == "5xx" else 0
            found.append(
                {
                    "status_class": name,
                    **_summary_of({}, {}),
                    "count": count,
                    "errors": errors,
                    "error_rate": errors / count,
                    "client_errors": count if name == "4xx" else 0,
                    "status": {name: count},
                }
            )
        found.sort(key=lambda row: -row["count"])
        return found

    def _aggregate(self, pipeline: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        rows: Iterator[dict[str, Any]] = self.order_by().aggregate(pipeline, allowDiskUse=True)
        return rows


def _ceil_hour(moment: datetime) -> datetime:
    floor = _floor_hour(moment)
    if floor == moment:
        return floor
    # In the last hour of year 9999 no whole hour follows: the window's minutes cover the rest.
    return datetime.max if floor == _floor_hour(datetime.max) else floor + timedelta(hours=1)


def _floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _add_counts(into: dict[int, int], counts: dict[int, int]) -> None:
    for bucket, count in counts.items():
        into[bucket] = into.get(bucket, 0) + count


def _merged_totals(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two ``_totals`` rows of one key added up."""
    merged = dict(first)
    for name in (*_SUMS, *(f"s_{name}" for name in STATUS_CLASSES)):
        merged[name] = (first.get(name) or 0) + (second.get(name) or 0)
    maxima = [row["time_max"] for row in (first, second) if row.get("time_max") is not None]
    merged["time_max"] = max(maxima) if maxima else None
    return merged


def _hashable(value: Any) -> Any:
    return value if value is None or isinstance(value, (str, int, float)) else repr(value)


def _summary_of(total: dict[str, Any], histogram: dict[int, int]) -> dict[str, Any]:
    """A report row from the summed fields of some rollups and their merged histogram."""
    count = int(total.get("count") or 0)
    errors = int(total.get("errors") or 0)
    timed = total.get("timed") or 0
    maximum = total.get("time_max")
    row: dict[str, Any] = {
        "count": count,
        "errors": errors,
        "error_rate": errors / count if count else 0.0,
        "mean": total["time_sum"] / timed if timed else None,
    }
    row.update(
        (name, histogram_percentile(histogram, fraction, maximum))
        for name, fraction in PERCENTILES.items()
    )
    row["max"] = maximum
    row["bytes_in"] = int(total.get("bytes_in") or 0)
    row["bytes_out"] = int(total.get("bytes_out") or 0)
    row["client_errors"] = int(total.get("client_errors") or 0)
    row["status"] = {
        name: int(total.get(f"s_{name}") or 0) for name in STATUS_CLASSES if total.get(f"s_{name}")
    }
    return row


class Rollup(Document):
    """The requests of one minute, endpoint and method, as stored in ``tracking_rollups``.

    Written by the writer thread with ``$inc`` upserts (several processes add to the same
    document); read-only here.

    Fields: ``period`` (``"minute"`` or ``"hour"``: every request is counted in one rollup of
    each), ``start`` (start of the period, naive UTC), ``endpoint`` (None for requests that
    matched no view), ``method``; ``count`` requests, ``errors`` (status 500 and above or an
    exception), ``client_errors`` (4xx), ``timed`` (requests with an execution time),
    ``time_sum`` and ``time_max`` (ms), ``bytes_in`` / ``bytes_out`` (request and response
    body bytes), ``status`` (requests per status class: ``"2xx"``...) and ``histogram``
    (requests per latency bucket, keys are bucket numbers as strings; see
    :mod:`flask_tracking.aggregate`).

    Meta: ``collection`` is ``"tracking_rollups"`` (set TRACKING_ROLLUP_COLLECTION to write
    elsewhere, and read it with ``flask_tracking.cli.app_rollups()``); ``auto_create_index`` is
    off (the writer creates the unique key index, an (endpoint, period, start) index and the
    TTL index on ``start``);
    ``queryset_class`` is :class:`RollupQuerySet`; ``strict`` is off.
    """

    period = StringField()
    start = DateTimeField()
    endpoint = StringField()
    method = StringField()
    count = IntField()
    errors = IntField()
    client_errors = IntField()
    timed = IntField()
    time_sum = FloatField()
    time_max = FloatField()
    bytes_in = IntField()
    bytes_out = IntField()
    status = DictField()
    histogram = DictField()

    if TYPE_CHECKING:
        #: Set by MongoEngine's metaclass: a :class:`RollupQuerySet` over the collection.
        objects: ClassVar[RollupQuerySet]

    meta: ClassVar[dict[str, Any]] = {
        "collection": "tracking_rollups",
        "auto_create_index": False,
        "queryset_class": RollupQuerySet,
        "strict": False,
    }
