"""Per-minute aggregates of every tracked request, kept in memory and written as rollups.

Nothing here knows about Flask or MongoEngine. The request thread hands each request that
passed the path, method and view rules to :meth:`RollupAggregator.add` as one tuple (a
``deque.append``: no lock, no arithmetic), whether or not its record is kept. The writer
thread folds those tuples, every flush interval, into one aggregate per (minute, endpoint,
method) and one per (hour, endpoint, method): every request is counted in one minute rollup
and in one hour rollup, so that long windows read 60 times fewer documents. It hands the
aggregates to a ``write_rollups`` callable, which adds them to the stored documents with
``$inc`` (see :class:`flask_tracking.store.RollupSink`). Aggregates whose write failed for a
transient reason are merged back and written with the next round.

The latency histogram has fixed log-scale buckets (:func:`latency_bucket`): bucket 0 holds
times up to :data:`LATENCY_BASE_MS`, bucket ``i`` the times in
``(LATENCY_BASE_MS * LATENCY_GROWTH ** (i - 1), LATENCY_BASE_MS * LATENCY_GROWTH ** i]``.
A percentile read from it is the geometric middle of its bucket
(:func:`bucket_value`), at most ``sqrt(LATENCY_GROWTH) - 1`` (4.9 %) away from the exact one.
"""

from __future__ import annotations

import math
import os
import threading
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from itertools import groupby, repeat, starmap
from operator import floordiv, itemgetter

__all__ = [
    "LATENCY_BASE_MS",
    "LATENCY_BUCKETS",
    "LATENCY_GROWTH",
    "Aggregate",
    "RollupAggregator",
    "RollupOutcome",
    "Sample",
    "bucket_upper_bound",
    "bucket_value",
    "histogram_percentile",
    "latency_bucket",
    "status_class",
]

#: Upper bound (ms) of histogram bucket 0; every faster request falls into it.
LATENCY_BASE_MS = 0.01
#: Ratio between the bounds of consecutive histogram buckets.
LATENCY_GROWTH = 1.1
#: Number of buckets: the last one (above 0.01 * 1.1**248 ms, about 51.2 hours) takes every
#: slower request.
LATENCY_BUCKETS = 250
#: The largest relative error of a percentile read from the histogram (about 0.049).
LATENCY_RELATIVE_ERROR = math.sqrt(LATENCY_GROWTH) - 1

#: One request as the request thread hands it over: (time.time() of its arrival, endpoint,
#: method, WSGI status line or None when the app gave no response, execution time in ms or None,
#: whether the view raised, request body bytes, response body bytes).
Sample = tuple[float, "str | None", "str | None", "str | None", "float | None", bool, int, int]

#: The methods the rollups count apart (RFC 9110's and PATCH); any other method, which a client
#: may make up at will, is counted as :data:`OTHER_METHOD`, so that clients cannot add rollup
#: documents without bound. The stored record keeps the method as sent.
STANDARD_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)
OTHER_METHOD = "OTHER"

#: Identifies one rollup: (period name, start of the period as a naive UTC datetime,
#: endpoint, method).
Key = tuple[str, datetime, "str | None", "str | None"]


#: The upper bound (ms) of every bucket but the last, ascending.
_UPPER_BOUNDS = [LATENCY_BASE_MS * LATENCY_GROWTH**index for index in range(LATENCY_BUCKETS - 1)]


def latency_bucket(milliseconds: float) -> int:
    """The histogram bucket of an execution time (see the module docstring)."""
    if not milliseconds > LATENCY_BASE_MS:  # also NaN
        return 0
    return bisect_left(_UPPER_BOUNDS, milliseconds)


def bucket_value(index: int) -> float:
    """The value (ms) a percentile falling in bucket ``index`` is given: the geometric middle
    of the bucket (half of :data:`LATENCY_BASE_MS` for bucket 0)."""
    if index <= 0:
        return LATENCY_BASE_MS / 2
    return float(LATENCY_BASE_MS * LATENCY_GROWTH ** (index - 0.5))


def bucket_upper_bound(index: int) -> float:
    """The largest time (ms) bucket ``index`` holds (infinite for the last one)."""
    if index >= LATENCY_BUCKETS - 1:
        return math.inf
    return _UPPER_BOUNDS[max(index, 0)]


def histogram_percentile(
    counts: dict[int, int], fraction: float, maximum: float | None = None
) -> float | None:
    """The ``fraction`` percentile (0 to 1) of the times counted in ``counts`` (bucket ->
    requests): the value of the bucket holding the ``floor(fraction * (n - 1))``-th smallest
    time, the rank the record reports use; never above ``maximum`` when given. None when the
    histogram is empty."""
    total = sum(counts.values())
    if total <= 0:
        return None
    rank = math.floor(fraction * (total - 1))
    seen = 0
    for index in sorted(counts):
        seen += counts[index]
        if seen > rank:
            value = bucket_value(index)
            return value if maximum is None else min(value, maximum)
    return None  # pragma: no cover (the loop always reaches the rank)


def status_class(status: int | None) -> str:
    """``"2xx"`` for 200-299 and so on; ``"other"`` for a missing or odd status."""
    if status is None or not 100 <= status <= 599:
        return "other"
    return f"{status // 100}xx"


def status_code(status_line: str | None) -> int | None:
    """The code of a WSGI status line (``"404 NOT FOUND"`` -> 404), None when malformed or
    when there is none (the app gave no response)."""
    if status_line is None:
        return None
    try:
        return int(status_line[:3])
    except (TypeError, ValueError):
        return None


#: Status line -> (status class, server error, client error): the lines an app answers with
#: are few, so each is parsed once (at most :data:`_MAX_STATUS_KINDS` are kept).
_STATUS_KINDS: dict[str | None, tuple[str, bool, bool]] = {}
_MAX_STATUS_KINDS = 1000


def _status_kind(status_line: str | None) -> tuple[str, bool, bool]:
    code = status_code(status_line)
    kind = (
        status_class(code),
        code is not None and code >= 500,
        code is not None and 400 <= code < 500,
    )
    if len(_STATUS_KINDS) < _MAX_STATUS_KINDS:
        _STATUS_KINDS[status_line] = kind
    return kind


_STATUS_LINE, _ELAPSED, _RAISED = itemgetter(3), itemgetter(4), itemgetter(5)
_BYTES_IN, _BYTES_OUT = itemgetter(6), itemgetter(7)
#: :func:`latency_bucket` of a finite time, at C speed (a time up to LATENCY_BASE_MS, the
#: first bound, is in bucket 0 either way).
_BUCKET = partial(bisect_left, _UPPER_BOUNDS)


@dataclass
class Aggregate:
    """The requests of one minute, endpoint and method, as they are added to the rollup."""

    count: int = 0
    errors: int = 0
    client_errors: int = 0
    timed: int = 0
    time_sum: float = 0.0
    time_max: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    status: dict[str, int] = field(default_factory=dict)
    histogram: dict[int, int] = field(default_factory=dict)

    def add(self, sample: Sample) -> None:
        """Count one request."""
        self.add_many((sample,))

    def add_many(self, samples: Sequence[Sample]) -> None:
        """Count the requests of ``samples`` (in order): the same as adding each in turn, with
        the work per request done by C-level loops."""
        self.count += len(samples)
        # (status line, raised) pairs are few: each is classified once per call.
        for (status_line, raised), count in Counter(
            zip(map(_STATUS_LINE, samples), map(_RAISED, samples))
        ).items():
            kind = _STATUS_KINDS.get(status_line)
            if kind is None:
                kind = _status_kind(status_line)
            klass, error, client_error = kind
            if raised or error:
                self.errors += count
            if client_error:  # a 4xx whose body raised is both
                self.client_errors += count
            self.status[klass] = self.status.get(klass, 0) + count
        elapsed = list(map(_ELAPSED, samples))
        if None in elapsed:
            elapsed = [value for value in elapsed if value is not None]
        timed = list(filter(math.isfinite, elapsed))
        if timed:
            self.timed += len(timed)
            self.time_sum = sum(timed, self.time_sum)  # added one by one, in order, as before
            slowest = max(timed)
            if self.time_max is None or slowest > self.time_max:
                self.time_max = slowest
            histogram = self.histogram
            for bucket, count in Counter(map(_BUCKET, timed)).items():
                histogram[bucket] = histogram.get(bucket, 0) + count
        self.bytes_in = sum(map(_BYTES_IN, samples), self.bytes_in)
        self.bytes_out = sum(map(_BYTES_OUT, samples), self.bytes_out)

    def merge(self, other: Aggregate) -> None:
        """Add ``other`` (an aggregate of the same key) to this one."""
        self.count += other.count
        self.errors += other.errors
        self.client_errors += other.client_errors
        self.timed += other.timed
        self.time_sum += other.time_sum
        if other.time_max is not None and (self.time_max is None or other.time_max > self.time_max):
            self.time_max = other.time_max
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        for name, count in other.status.items():
            self.status[name] = self.status.get(name, 0) + count
        for bucket, count in other.histogram.items():
            self.histogram[bucket] = self.histogram.get(bucket, 0) + count


@dataclass
class RollupOutcome:
    """What ``write_rollups`` did with a round of aggregates."""

    written: int = 0
    """Aggregates added to the stored rollups."""

    dropped: int = 0
    """Aggregates given up on (the server refused them for good)."""

    retry: list[tuple[Key, Aggregate]] = field(default_factory=list)
    """Aggregates to add again with the next round (network trouble, a timeout)."""


#: ``write_rollups(aggregates) -> RollupOutcome``, called on the writer thread.
WriteRollups = Callable[[list[tuple[Key, Aggregate]]], RollupOutcome]


class RollupAggregator:
    """Collects samples from request threads; the writer thread folds and writes them.

    ``add`` is the request path: one ``deque.append``, safe from any thread. ``write`` runs on
    the writer thread only: it folds the samples into aggregates, calls ``write_rollups``
    once and keeps the aggregates to retry. Counters (``stats()``): ``rollup_requests``
    (requests folded into an aggregate), ``rollup_writes`` (aggregates written),
    ``rollup_retries`` (aggregates kept for another try), ``rollup_dropped`` (aggregates
    given up on) and ``rollup_pending`` (aggregates waiting). After a fork the child starts
    empty (the parent writes what it had) with zero counters.
    """

    def __init__(self, write_rollups: WriteRollups) -> None:
        if not callable(write_rollups):
            raise TypeError(f"write_rollups must be callable, got {write_rollups!r}.")
        self._write_rollups = write_rollups
        self.reset()

    def reset(self) -> None:
        """Forget everything: on init and in a forked child."""
        self._pid = os.getpid()
        self._samples: deque[Sample] = deque()
        #: The request path's entry point: ``aggregator.add(sample)``.
        self.add: Callable[[Sample], None] = self._samples.append
        # Minute aggregates folded since the last write; their hour aggregates are derived
        # when they are written (an addition per key, not per request).
        self._fresh: dict[tuple[int, str | None, str | None], Aggregate] = {}
        self._pending: dict[Key, Aggregate] = {}  # to write: fresh ones and retries
        self._lock = threading.Lock()  # write() from the worker and from shutdown
        self._requests = 0
        self._writes = 0
        self._retries = 0
        self._dropped = 0

    def close(self) -> None:
        """Take no more samples: the writer that folds them has stopped, and an app that keeps
        answering must not pile them up. ``add`` discards from now on (until ``reset``)."""
        self.add = _discard

    def has_work(self) -> bool:
        """Whether samples or unwritten aggregates wait."""
        return bool(self._samples) or bool(self._fresh) or bool(self._pending)

    def fold(self) -> int:
        """Fold the samples added so far into the pending aggregates; return how many."""
        # Taken from the left, one popleft() each (request threads append meanwhile), by a
        # C-level loop; then each run of samples of one (minute, endpoint, method) is added
        # at once (a round's samples are mostly one run).
        samples = self._samples
        taken = list(starmap(samples.popleft, repeat((), len(samples))))
        fresh = self._fresh
        keys = zip(
            map(int, map(floordiv, map(_TIMESTAMP, taken), repeat(60))),
            map(_ENDPOINT, taken),
            map(rollup_method, map(_METHOD, taken)),
        )
        for key, run in groupby(zip(keys, taken), _KEY):
            aggregate = fresh.get(key)
            if aggregate is None:
                aggregate = fresh[key] = Aggregate()
            aggregate.add_many(list(map(_SAMPLE, run)))
        self._requests += len(taken)
        return len(taken)

    def _take_fresh(self) -> None:
        """Move the fresh minute aggregates, and the hour aggregates they add up to, into the
        pending ones."""
        fresh, self._fresh = self._fresh, {}
        for (minute, endpoint, method), aggregate in fresh.items():
            start = _EPOCH + timedelta(minutes=minute)
            hour = start.replace(minute=0)
            self._merge_back(
                [
                    (("minute", start, endpoint, method), aggregate),
                    (("hour", hour, endpoint, method), _copy(aggregate)),
                ]
            )

    def write(self) -> bool:
        """Fold the samples and write every pending aggregate; True when nothing is left to
        retry. A ``write_rollups`` that raises keeps the aggregates for a retry; only a
        SystemExit or KeyboardInterrupt (which ends the writer thread) is raised on, the
        aggregates kept pending too."""
        with self._lock:
            self.fold()
            self._take_fresh()
            if not self._pending:
                return True
            batch = list(self._pending.items())
            self._pending = {}
            try:
                outcome = self._write_rollups(batch)
            except Exception:
                outcome = RollupOutcome(retry=batch)
            except BaseException:  # the writer thread is ended: the next one writes them
                self._merge_back(batch)
                raise
            self._writes += outcome.written
            self._dropped += outcome.dropped
            self._retries += len(outcome.retry)
            self._merge_back(outcome.retry)
            return not self._pending

    def _merge_back(self, aggregates: Iterable[tuple[Key, Aggregate]]) -> None:
        for key, aggregate in aggregates:
            kept = self._pending.get(key)
            if kept is None:
                self._pending[key] = aggregate
            else:
                kept.merge(aggregate)

    def stats(self) -> dict[str, int]:
        """The counters described in the class docstring."""
        return {
            "rollup_requests": self._requests,
            "rollup_writes": self._writes,
            "rollup_retries": self._retries,
            "rollup_dropped": self._dropped,
            "rollup_pending": len(self._pending) + len(self._fresh),
        }


def _discard(sample: Sample) -> None:
    """``add`` of a closed aggregator."""


_EPOCH = datetime(1970, 1, 1)


def rollup_method(method: str | None) -> str | None:
    """The method a request is counted under: itself if standard, else ``"OTHER"``."""
    return method if method is None or method in STANDARD_METHODS else OTHER_METHOD


_TIMESTAMP, _ENDPOINT, _METHOD = itemgetter(0), itemgetter(1), itemgetter(2)
_KEY, _SAMPLE = itemgetter(0), itemgetter(1)


def _copy(aggregate: Aggregate) -> Aggregate:
    copied = Aggregate()
    copied.merge(aggregate)
    return copied
