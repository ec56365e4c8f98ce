"""The writer-side aggregation: histogram buckets, aggregates, the aggregator's rounds."""

from __future__ import annotations

import math
import os
import random
from datetime import datetime, timezone

import pytest

from flask_tracking.aggregate import (
    LATENCY_BASE_MS,
    LATENCY_BUCKETS,
    LATENCY_GROWTH,
    LATENCY_RELATIVE_ERROR,
    Aggregate,
    RollupAggregator,
    RollupOutcome,
    bucket_upper_bound,
    bucket_value,
    histogram_percentile,
    latency_bucket,
    status_class,
)
from flask_tracking.documents import percentile

from .conftest import fork_and_report

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc).timestamp()


def sample(
    at: float = T0,
    endpoint: str | None = "index",
    method: str | None = "GET",
    status: str | None = "200 OK",
    elapsed: float | None = 10.0,
    raised: bool = False,
    bytes_in: int = 0,
    bytes_out: int = 2,
) -> tuple[float, str | None, str | None, str | None, float | None, bool, int, int]:
    return (at, endpoint, method, status, elapsed, raised, bytes_in, bytes_out)


def test_buckets_hold_their_bounds() -> None:
    assert latency_bucket(0.0) == 0
    assert latency_bucket(LATENCY_BASE_MS) == 0
    assert latency_bucket(-5.0) == 0
    assert latency_bucket(math.nan) == 0
    assert latency_bucket(1e12) == LATENCY_BUCKETS - 1
    for index in range(1, 200):
        low, high = bucket_upper_bound(index - 1), bucket_upper_bound(index)
        assert high == pytest.approx(low * LATENCY_GROWTH)
        assert latency_bucket(high) == index
        assert latency_bucket(low * 1.000001) == index
        assert low < bucket_value(index) < high


def test_the_error_bound_is_under_five_percent() -> None:
    assert LATENCY_RELATIVE_ERROR < 0.05
    rng = random.Random(7)
    for _ in range(5000):
        value = math.exp(rng.uniform(math.log(0.02), math.log(600_000)))
        estimate = bucket_value(latency_bucket(value))
        assert abs(estimate - value) / value <= LATENCY_RELATIVE_ERROR + 1e-12


def test_histogram_percentiles_use_the_rank_of_the_record_reports() -> None:
    rng = random.Random(3)
    times = sorted(rng.lognormvariate(3, 1.2) for _ in range(2000))
    counts: dict[int, int] = {}
    for value in times:
        counts[latency_bucket(value)] = counts.get(latency_bucket(value), 0) + 1
    for fraction in (0.0, 0.5, 0.95, 0.99, 1.0):
        exact = percentile(times, fraction)
        estimate = histogram_percentile(counts, fraction, maximum=times[-1])
        assert exact is not None and estimate is not None
        assert abs(estimate - exact) <= 0.05 * exact
    assert histogram_percentile(counts, 1.0, maximum=times[-1]) <= times[-1]
    assert histogram_percentile({}, 0.5) is None


def test_status_classes() -> None:
    assert [status_class(code) for code in (101, 200, 302, 404, 503)] == [
        "1xx",
        "2xx",
        "3xx",
        "4xx",
        "5xx",
    ]
    assert status_class(None) == status_class(999) == status_class(42) == "other"


def test_an_aggregate_counts_and_merges() -> None:
    first, second = Aggregate(), Aggregate()
    first.add(sample(elapsed=10.0, bytes_in=5))
    first.add(sample(status="500 INTERNAL SERVER ERROR", elapsed=30.0))
    first.add(sample(status="200 OK", raised=True, elapsed=None))
    second.add(sample(status="404 NOT FOUND", elapsed=50.0))
    second.add(sample(status="bogus", elapsed=math.inf))
    first.merge(second)
    assert (first.count, first.errors, first.client_errors) == (5, 2, 1)
    assert (first.timed, first.time_sum, first.time_max) == (3, 90.0, 50.0)
    assert (first.bytes_in, first.bytes_out) == (5, 10)
    assert first.status == {"2xx": 2, "5xx": 1, "4xx": 1, "other": 1}
    assert sum(first.histogram.values()) == 3


def test_a_request_without_a_response_is_an_error_of_no_status_class() -> None:
    """A SystemExit or KeyboardInterrupt ended it before the app answered (no status line):
    counted, as an error, under ``other``."""
    aggregate = Aggregate()
    aggregate.add(sample(status=None, raised=True, elapsed=30.0))
    aggregate.add(sample())
    assert (aggregate.count, aggregate.errors, aggregate.client_errors) == (2, 1, 0)
    assert aggregate.status == {"other": 1, "2xx": 1}


def one_by_one(samples: list) -> dict:
    """The aggregates of ``samples`` worked out one request at a time, as written out in the
    docs of Aggregate (the oracle for the aggregator's batched fold)."""
    found: dict = {}
    for at, endpoint, method, status, elapsed, raised, bytes_in, bytes_out in samples:
        key = (int(at // 60), endpoint, method)
        fields = found.setdefault(
            key,
            {
                "count": 0,
                "errors": 0,
                "client_errors": 0,
                "timed": 0,
                "time_sum": 0.0,
                "time_max": None,
                "bytes_in": 0,
                "bytes_out": 0,
                "status": {},
                "histogram": {},
            },
        )
        code = int(status[:3]) if status[:3].isdigit() else None
        fields["count"] += 1
        if raised or (code is not None and code >= 500):
            fields["errors"] += 1
        if code is not None and 400 <= code < 500:
            fields["client_errors"] += 1
        klass = status_class(code)
        fields["status"][klass] = fields["status"].get(klass, 0) + 1
        if elapsed is not None and math.isfinite(elapsed):
            fields["timed"] += 1
            fields["time_sum"] += elapsed
            if fields["time_max"] is None or elapsed > fields["time_max"]:
                fields["time_max"] = elapsed
            bucket = latency_bucket(elapsed)
            fields["histogram"][bucket] = fields["histogram"].get(bucket, 0) + 1
        fields["bytes_in"] += bytes_in
        fields["bytes_out"] += bytes_out
    return found


def test_a_round_folds_exactly_as_one_request_at_a_time() -> None:
    """Float sums added in the same order, the same first maximum, dicts in the same order,
    runs of one key broken by another key, odd times and statuses."""
    rng = random.Random(7)
    statuses = ["200 OK", "404 NOT FOUND", "503 SERVICE UNAVAILABLE", "302 FOUND", "bogus"]
    times = [None, math.nan, math.inf, -1.0, 0.0, LATENCY_BASE_MS, 0.1, 1e9]
    samples = [
        sample(
            at=T0 + rng.choice((0, 0, 0, 30, 61, 3600.5)),
            endpoint=rng.choice(("index", "index", None)),
            method=rng.choice(("GET", "GET", "POST")),
            status=rng.choice(statuses),
            elapsed=rng.choice(times) if rng.random() < 0.3 else rng.uniform(0, 500),
            raised=rng.random() < 0.1,
            bytes_in=rng.randrange(100),
            bytes_out=rng.randrange(100),
        )
        for _ in range(2000)
    ]
    aggregator = RollupAggregator(lambda aggregates: RollupOutcome())
    for item in samples[:700]:
        aggregator.add(item)
    assert aggregator.fold() == 700
    for item in samples[700:]:
        aggregator.add(item)
    assert aggregator.fold() == 1300
    folded = {
        key: {name: getattr(aggregate, name) for name in one_by_one(samples)[key]}
        for key, aggregate in aggregator._fresh.items()
    }
    expected = one_by_one(samples)
    assert list(folded) == list(expected)
    for key, fields in expected.items():
        got = folded[key]
        assert repr(got) == repr(fields)  # every float bit for bit, every dict in its order
        assert list(got["status"]) == list(fields["status"])
        assert list(got["histogram"]) == list(fields["histogram"])


def recorder(outcomes: list[RollupOutcome] | None = None) -> tuple[RollupAggregator, list]:
    rounds: list = []

    def write(aggregates: list) -> RollupOutcome:
        rounds.append(aggregates)
        if outcomes:
            return outcomes.pop(0)
        return RollupOutcome(written=len(aggregates))

    return RollupAggregator(write), rounds


def test_the_aggregator_folds_by_minute_and_hour_endpoint_and_method() -> None:
    aggregator, rounds = recorder()
    for offset in (0, 1, 59.9, 60, 61, 3600):
        aggregator.add(sample(at=T0 + offset))
    aggregator.add(sample(method="POST"))
    aggregator.add(sample(endpoint=None))
    assert aggregator.has_work()
    assert aggregator.write()
    ((batch),) = rounds
    found = {key: aggregate.count for key, aggregate in batch}
    minute = datetime(2024, 5, 1, 10, 0)
    next_minute = datetime(2024, 5, 1, 10, 1)
    next_hour = datetime(2024, 5, 1, 11, 0)
    assert found == {
        ("minute", minute, "index", "GET"): 3,
        ("minute", next_minute, "index", "GET"): 2,
        ("minute", next_hour, "index", "GET"): 1,
        ("minute", minute, "index", "POST"): 1,
        ("minute", minute, None, "GET"): 1,
        ("hour", minute, "index", "GET"): 5,
        ("hour", next_hour, "index", "GET"): 1,
        ("hour", minute, "index", "POST"): 1,
        ("hour", minute, None, "GET"): 1,
    }
    assert not aggregator.has_work()
    assert aggregator.write()  # nothing to write: no round
    assert len(rounds) == 1
    assert aggregator.stats() == {
        "rollup_requests": 8,
        "rollup_writes": 9,
        "rollup_retries": 0,
        "rollup_dropped": 0,
        "rollup_pending": 0,
    }


def test_failed_aggregates_are_retried_merged_with_new_requests() -> None:
    aggregator, rounds = recorder()
    aggregator.add(sample())
    aggregator.add(sample(method="POST"))

    def fail_get(aggregates: list) -> RollupOutcome:
        rounds.append(aggregates)
        retry = [item for item in aggregates if item[0][3] == "GET"]
        return RollupOutcome(written=len(aggregates) - len(retry), retry=retry)

    aggregator._write_rollups = fail_get
    assert not aggregator.write()
    assert aggregator.stats()["rollup_retries"] == 2  # the minute and the hour rollup
    assert aggregator.stats()["rollup_pending"] == 2
    aggregator.add(sample(elapsed=99.0))  # same keys: merged into the ones to retry
    aggregator._write_rollups = lambda aggregates: (
        rounds.append(aggregates) or RollupOutcome(written=len(aggregates))
    )
    assert aggregator.write()
    assert len(rounds[-1]) == 2
    for key, aggregate in rounds[-1]:
        assert key[3] == "GET" and aggregate.count == 2 and aggregate.time_max == 99.0
    assert aggregator.stats()["rollup_writes"] == 4


def test_a_raising_writer_keeps_everything_for_the_next_round() -> None:
    calls = []

    def broken(aggregates: list) -> RollupOutcome:
        calls.append(len(aggregates))
        raise RuntimeError("down")

    aggregator = RollupAggregator(broken)
    aggregator.add(sample())
    assert not aggregator.write()
    assert not aggregator.write()
    assert calls == [2, 2]  # a minute and an hour rollup
    assert aggregator.stats()["rollup_retries"] == 4
    assert aggregator.stats()["rollup_pending"] == 2


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt()])
def test_a_writer_ended_mid_write_leaves_its_aggregates_pending(error: BaseException) -> None:
    # A SystemExit or KeyboardInterrupt (gevent's kill too) ends the writer thread while it
    # writes the rollups: the thread that takes over writes them.
    def ended(aggregates: list) -> RollupOutcome:
        raise error

    aggregator = RollupAggregator(ended)
    aggregator.add(sample())
    with pytest.raises(type(error)):
        aggregator.write()
    assert aggregator.stats()["rollup_pending"] == 2
    written: list = []
    aggregator._write_rollups = lambda aggregates: (
        written.extend(aggregates) or RollupOutcome(written=len(aggregates))
    )
    assert aggregator.write()
    assert len(written) == 2


def test_dropped_aggregates_are_counted() -> None:
    aggregator, _ = recorder([RollupOutcome(dropped=1)])
    aggregator.add(sample())
    assert aggregator.write()
    assert aggregator.stats()["rollup_dropped"] == 1


def test_the_writer_must_be_callable() -> None:
    with pytest.raises(TypeError):
        RollupAggregator("nope")  # type: ignore[arg-type]


def test_reset_forgets_everything() -> None:
    aggregator, _ = recorder()
    aggregator.add(sample())
    aggregator.fold()
    aggregator.add(sample())
    aggregator.reset()
    assert not aggregator.has_work()
    assert aggregator.stats()["rollup_requests"] == 0


def test_a_forked_child_starts_empty() -> None:
    from flask_tracking.writer import BatchOutcome, BatchWriter

    aggregator, rounds = recorder()
    writer = BatchWriter(lambda records: BatchOutcome(written=len(records)), rollups=aggregator)
    aggregator.add(sample())

    def child() -> list:
        return [aggregator.has_work(), aggregator.stats()["rollup_requests"], os.getpid()]

    has_work, requests, pid = fork_and_report(child)
    assert (has_work, requests) == (False, 0) and pid != os.getpid()
    assert aggregator.has_work()
    writer.shutdown(1.0)
    assert aggregator.stats()["rollup_requests"] == 1
    assert [aggregate.count for (_, aggregate) in rounds[0]] == [1, 1]  # the parent wrote it
