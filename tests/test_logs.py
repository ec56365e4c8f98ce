"""Unit tests of flask_tracking.logs: EventLimiter and RateLimitedLog (a fake clock; no
sleeping)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from flask_tracking import logs
from flask_tracking.logs import EventLimiter, RateLimitedLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Replaces ``time`` in flask_tracking.logs only (other threads keep the real clock)."""
    fake = Clock()
    monkeypatch.setattr(logs, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.fixture
def handler() -> Iterator[ListHandler]:
    listener = ListHandler()
    logger = logging.getLogger("tests.logs")
    logger.addHandler(listener)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield listener
    logger.removeHandler(listener)


def rate_limited(interval: float = 60.0) -> RateLimitedLog:
    return RateLimitedLog(logging.getLogger("tests.logs"), interval_seconds=interval)


def test_defaults_to_the_package_logger_and_one_minute() -> None:
    log = RateLimitedLog()
    assert log._log is logging.getLogger("flask_tracking")
    assert log._limiter._interval == 60.0


def test_the_events_held_back_are_counted_into_the_next_report(clock: Clock) -> None:
    limiter = EventLimiter(interval_seconds=10)
    assert limiter.take("drop", 3) == 3  # the first report goes through at once
    assert limiter.take("drop", 2) == 0
    assert limiter.take("drop") == 0
    assert limiter.take("other", 5) == 5  # each key on its own
    clock.now += 9.999
    assert limiter.take("drop", 4) == 0
    clock.now += 0.001
    assert limiter.take("drop") == 2 + 1 + 4 + 1  # everything since the last report
    assert limiter.take("drop") == 0
    clock.now += 10
    assert limiter.take("drop", 0) == 1  # the one held back just before


def test_one_line_per_reason_per_interval(clock: Clock, handler: ListHandler) -> None:
    log = rate_limited()
    results = [log.warning("db_down", "database is down") for _ in range(5)]
    assert results == [True, False, False, False, False]
    assert handler.messages() == ["database is down"]
    assert handler.records[0].levelno == logging.WARNING
    clock.now += 59.999
    assert log.warning("db_down", "database is down") is False
    assert len(handler.records) == 1


def test_separate_reasons_are_independent(clock: Clock, handler: ListHandler) -> None:
    log = rate_limited()
    assert log.warning("a", "first a") is True
    assert log.warning("b", "first b") is True
    assert log.warning("a", "second a") is False
    assert log.warning("c", "first c") is True
    assert handler.messages() == ["first a", "first b", "first c"]


def test_suppressed_count_is_reported_with_the_next_line(
    clock: Clock, handler: ListHandler
) -> None:
    log = rate_limited()
    log.warning("r", "failed %s", "once")
    for _ in range(4):
        log.warning("r", "failed %s", "again")
    log.warning("other", "unrelated")
    clock.now += 60.0  # exactly one interval later
    assert log.warning("r", "failed %s", "later") is True
    clock.now += 60.0
    assert log.warning("r", "failed %s", "quietly") is True  # nothing was folded since
    assert log.warning("other", "unrelated") is True  # its own count: none suppressed
    assert handler.messages() == [
        "failed once",
        "unrelated",
        "failed later (4 similar messages suppressed)",
        "failed quietly",
        "unrelated",
    ]


def test_interval_restarts_from_the_last_line_logged(clock: Clock, handler: ListHandler) -> None:
    log = rate_limited(interval=10)
    log.warning("r", "m")
    clock.now += 9
    log.warning("r", "m")  # suppressed; does not move the window
    clock.now += 1
    assert log.warning("r", "m") is True
    clock.now += 5
    assert log.warning("r", "m") is False
    assert handler.messages() == ["m", "m (1 similar messages suppressed)"]


def test_exc_info_is_passed_through(clock: Clock, handler: ListHandler) -> None:
    log = rate_limited()
    try:
        raise ValueError("boom")
    except ValueError:
        log.warning("r", "caught", exc_info=True)
    [record] = handler.records
    assert record.exc_info is not None
    assert record.exc_info[0] is ValueError
    clock.now += 100
    log.warning("r", "no traceback")
    assert not handler.records[1].exc_info


def test_a_literal_percent_survives_the_suppressed_count(
    clock: Clock, handler: ListHandler
) -> None:
    log = rate_limited()
    log.warning("disk", "disk 100% full")
    log.warning("disk", "disk 100% full")
    clock.now += 60
    log.warning("disk", "disk 100% full")
    assert handler.messages() == [
        "disk 100% full",
        "disk 100% full (1 similar messages suppressed)",
    ]


class YieldingDict(dict):  # type: ignore[type-arg]
    """Lets other threads run between reading an entry and writing it back, so that a missing
    lock shows up as a race every time rather than once in a while."""

    def get(self, key: object, default: object = None) -> object:
        value = super().get(key, default)
        time.sleep(0.0001)  # between the read and the caller's write
        return value


def test_thread_safety_many_threads_one_line(clock: Clock, handler: ListHandler) -> None:
    log = rate_limited()
    log._last = YieldingDict()
    log._suppressed = YieldingDict()
    threads_count, calls_each = 16, 50
    barrier = threading.Barrier(threads_count)
    results: list[bool] = []
    results_lock = threading.Lock()

    def hammer() -> None:
        barrier.wait()
        mine = [log.warning("shared", "overloaded") for _ in range(calls_each)]
        with results_lock:
            results.extend(mine)

    threads = [threading.Thread(target=hammer) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert len(results) == threads_count * calls_each
    assert results.count(True) == 1
    assert handler.messages() == ["overloaded"]
    clock.now += 60
    assert log.warning("shared", "overloaded") is True
    suppressed = threads_count * calls_each - 1
    assert handler.messages()[-1] == f"overloaded ({suppressed} similar messages suppressed)"
