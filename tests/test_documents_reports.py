"""The reports computed in process (mongomock) against the aggregation pipelines.

On mongomock :class:`~flask_tracking.documents.Reports` reads the selected records once and
computes every report in Python; elsewhere the pipelines run. mongomock can run the pipelines
too (slowly), so here both paths run on the same varied small datasets and must give the very
same rows: same keys, counts, rates, means, percentiles, maxima, byte sums, order and buckets.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any, Callable

import pytest
from bson import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_tracking import documents
from flask_tracking.documents import (
    STATS_GROUPS,
    TIMELINE_BUCKETS,
    USER_AGENT_FIELDS,
    Reports,
    Tracking,
    TrackingQuerySet,
)

BASE = dt.datetime(2024, 5, 1, 10, 0)
MISSING = object()


@pytest.fixture(autouse=True)
def db(mongomock_db: Any) -> None:
    """Every test on a fresh mongomock database: these are the mongomock-only reading paths."""
    Tracking._get_collection().drop()


def store(records: list[dict[str, Any]]) -> None:
    collection = Tracking._get_collection()
    collection.drop()
    if records:
        collection.insert_many([dict(record) for record in records])


def every_report(queryset: TrackingQuerySet) -> dict[str, Any]:
    """Every report of ``queryset``, through one :class:`Reports` (as the dashboard asks)."""
    reports = queryset.reports()
    found: dict[str, Any] = {f"stats {key}": reports.stats(key) for key in STATS_GROUPS}
    found.update((f"timeline {key}", reports.timeline(key)) for key in TIMELINE_BUCKETS)
    found.update((f"agents {key}", reports.user_agents(key)) for key in USER_AGENT_FIELDS)
    found["visitors"] = reports.unique_visitors()
    found["times"] = reports.execution_times()
    return found


def by_pipelines(monkeypatch: pytest.MonkeyPatch, queryset: TrackingQuerySet) -> dict[str, Any]:
    with monkeypatch.context() as patch:
        patch.setattr(documents, "_evaluates_in_process", lambda collection: False)
        return every_report(queryset)


def in_process(queryset: TrackingQuerySet, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The reports computed in process; running a pipeline here would fail the test."""

    def no_pipeline(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a pipeline ran on the in-process path")

    with monkeypatch.context() as patch:
        patch.setattr(TrackingQuerySet, "_aggregate", no_pipeline)
        patch.setattr(TrackingQuerySet, "_scalar_execution_times", no_pipeline)
        return every_report(queryset)


def assert_same(monkeypatch: pytest.MonkeyPatch, queryset: TrackingQuerySet) -> dict[str, Any]:
    computed = in_process(queryset, monkeypatch)
    expected = by_pipelines(monkeypatch, queryset)
    for key, rows in expected.items():
        assert computed[key] == rows, key
        # == treats 1 and 1.0 alike; the types must match too (rounded counts are ints...).
        assert repr(computed[key]) == repr(rows), key
    return computed


# --- records ----------------------------------------------------------------------------


def field(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A stored value from ``strategy``, or null, or the field missing."""
    return st.one_of(st.just(MISSING), st.none(), strategy)


milliseconds = st.integers(min_value=0, max_value=3 * 24 * 3600 * 1000)
dates = milliseconds.map(lambda ms: BASE + dt.timedelta(milliseconds=ms))
times = st.one_of(
    st.floats(min_value=0, max_value=5000, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=5000),
    st.sampled_from([0.5, 1.25, 17.0, 300.125]),  # repeated values: ties in the $sort
)
rates = st.sampled_from([1.0, 1, 0.5, 0.3, 0.25, 0.1, 0.07, 0, -1, 1.5, 2])
agents = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {
            "browser": field(st.sampled_from(["Firefox", "Chrome", "Safari"])),
            "platform": field(st.sampled_from(["Linux", "Windows"])),
            "device": field(st.sampled_from(["Other", "iPhone"])),
            "language": field(st.sampled_from(["en-US", "fr"])),
        }
    ).map(lambda agent: {key: value for key, value in agent.items() if value is not MISSING}),
)


@st.composite
def records(draw: Callable[..., Any]) -> dict[str, Any]:
    values = {
        "date_created": draw(field(dates)),
        "endpoint": draw(field(st.sampled_from(["index", "users.show", "api.orders"]))),
        "path": draw(field(st.sampled_from(["/", "/users/1", "/users/2", "/api/orders"]))),
        "status_code": draw(field(st.sampled_from([200, 201, 302, 404, 499, 500, 503]))),
        "user_id": draw(field(st.sampled_from(["1", "2", "42"]))),
        "ip": draw(field(st.sampled_from(["10.0.0.1", "10.0.0.2", "::1"]))),
        "execution_time": draw(field(times)),
        "sample_rate": draw(field(rates)),
        "exception": draw(field(st.sampled_from(["ValueError: x", ""]))),
        "request_body_size": draw(field(st.integers(min_value=0, max_value=10**6))),
        "response_body_size": draw(field(st.integers(min_value=0, max_value=10**6))),
        "user_agent": draw(st.one_of(st.just(MISSING), agents)),
        "method": draw(st.sampled_from(["GET", "POST"])),
    }
    return {key: value for key, value in values.items() if value is not MISSING}


def selections() -> list[Callable[[TrackingQuerySet], TrackingQuerySet]]:
    return [
        lambda records: records,
        lambda records: records.for_path("/users/"),
        lambda records: records.errors(),
        lambda records: records.between(BASE + dt.timedelta(hours=5), BASE + dt.timedelta(days=2)),
        lambda records: records.filter(method="POST").for_endpoint("users.show"),
        lambda records: records[:7],
        lambda records: records[3:11],
        lambda records: records.order_by("execution_time")[2:9],
        lambda records: records.order_by("-status_code", "endpoint").skip(1).limit(5),
        lambda records: records.none(),
    ]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    stored=st.lists(records(), max_size=40),
    selection=st.sampled_from(selections()),
)
def test_in_process_reports_equal_the_pipelines(
    monkeypatch: pytest.MonkeyPatch,
    stored: list[dict[str, Any]],
    selection: Callable[[TrackingQuerySet], TrackingQuerySet],
) -> None:
    store(stored)
    assert_same(monkeypatch, selection(Tracking.objects))


def fixed_records() -> list[dict[str, Any]]:
    """Hand-made: sampled records, a group without times, records without a date or a size,
    errors by status and by exception, several buckets of every size."""
    rows: list[dict[str, Any]] = []
    for index in range(120):
        rows.append(
            {
                "date_created": BASE + dt.timedelta(minutes=7 * index, milliseconds=index),
                "endpoint": ["index", "users.show", "api.orders", None][index % 4],
                "path": f"/p/{index % 5}",
                "status_code": [200, 200, 404, 500, 201][index % 5],
                "user_id": str(index % 7) if index % 3 else None,
                "ip": f"10.0.0.{index % 9}",
                "execution_time": None if index % 11 == 0 else (index * 37 % 101) / 4,
                "sample_rate": [1.0, 0.5, 0.3, 0.1][index % 4],
                "exception": "KeyError: 'x'" if index % 13 == 0 else None,
                "request_body_size": index * 3 if index % 2 else None,
                "response_body_size": index * 100,
                "user_agent": {"browser": ["Firefox", "Chrome", None][index % 3], "device": "PC"},
            }
        )
    rows.append({"endpoint": "index", "execution_time": 3.0})  # no date, no status
    rows.append({"endpoint": "no.times", "date_created": BASE, "execution_time": None})
    rows.append({"endpoint": "no.times", "date_created": BASE, "sample_rate": 0.2})
    return rows


@pytest.mark.parametrize("selection", selections())
def test_fixed_dataset_gives_the_same_rows_both_ways(
    monkeypatch: pytest.MonkeyPatch, selection: Callable[[TrackingQuerySet], TrackingQuerySet]
) -> None:
    store(fixed_records())
    assert_same(monkeypatch, selection(Tracking.objects))


def test_fixed_dataset_has_the_expected_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only equal to the pipelines: the figures themselves, for a few rows."""
    store(fixed_records())
    found = assert_same(monkeypatch, Tracking.objects)
    by_endpoint = {row["endpoint"]: row for row in found["stats endpoint"]}
    no_times = by_endpoint["no.times"]
    assert no_times["count"] == 6  # 1 + 1 / 0.2
    assert (no_times["mean"], no_times["p50"], no_times["max"]) == (None, None, None)
    assert [row["count"] for row in found["stats status_code"]] == sorted(
        (row["count"] for row in found["stats status_code"]), reverse=True
    )
    days = found["timeline day"]
    first_day = BASE.replace(hour=0)
    assert [row["start"] for row in days] == [
        first_day + dt.timedelta(days=n) for n in range(len(days))
    ]
    assert (
        sum(row["count"] for row in days)
        == sum(row["count"] for row in found["stats endpoint"]) - 1
    )  # the record without a date
    assert found["visitors"] == {"ips": 9, "users": 7}
    assert found["times"] == sorted(found["times"])


def test_reports_read_the_collection_once(monkeypatch: pytest.MonkeyPatch) -> None:
    store(fixed_records())
    reads: list[Any] = []
    original = documents._read_selected

    def counting(queryset: Any) -> Any:
        reads.append(queryset)
        return original(queryset)

    monkeypatch.setattr(documents, "_read_selected", counting)
    every_report(Tracking.objects.last(days=100000))
    assert len(reads) == 1
    Tracking.objects.stats()  # a QuerySet method: its own Reports, its own read
    assert len(reads) == 2


def test_mongomock_is_detected_and_a_server_collection_is_not() -> None:
    assert documents._evaluates_in_process(Tracking._get_collection())
    assert Reports(Tracking.objects)._in_process

    class Collection:  # the name of pymongo's, from another module
        pass

    Collection.__module__ = "pymongo.collection"
    assert not documents._evaluates_in_process(Collection())


@pytest.mark.parametrize(
    "odd",
    [
        {"execution_time": "12"},
        {"execution_time": float("nan")},
        {"endpoint": ["a", "b"], "status_code": True},
        {"user_agent": "Firefox"},
        {"ip": {"v4": "10.0.0.1"}},
    ],
)
def test_values_not_mirrored_run_the_pipeline(
    monkeypatch: pytest.MonkeyPatch, odd: dict[str, Any]
) -> None:
    """A stored value whose BSON ordering the Python path does not mirror: that report runs
    its pipeline (whatever mongomock makes of it), instead of a different answer."""
    store([*fixed_records()[:10], {"date_created": BASE, **odd}])
    ran: list[str] = []
    original = TrackingQuerySet._aggregate

    def spy(self: TrackingQuerySet, pipeline: Any) -> Any:
        ran.append("pipeline")
        return original(self, pipeline)

    monkeypatch.setattr(TrackingQuerySet, "_aggregate", spy)
    reports = Tracking.objects.reports()
    for report in (
        lambda: reports.stats("endpoint"),
        lambda: reports.stats("status_code"),
        lambda: reports.user_agents(),
        lambda: reports.unique_visitors(),
    ):
        with contextlib.suppress(Exception):
            report()
    assert ran


def test_execution_times_convert_like_the_document_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """``execution_times`` reads through FloatField both ways: ints become floats."""
    store([{"execution_time": 5}, {"execution_time": 2.5}, {"execution_time": None}, {}])
    assert in_process(Tracking.objects, monkeypatch)["times"] == [2.5, 5.0]
    assert by_pipelines(monkeypatch, Tracking.objects)["times"] == [2.5, 5.0]


def test_reports_on_an_empty_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    found = assert_same(monkeypatch, Tracking.objects)
    assert found["visitors"] == {"ips": 0, "users": 0}
    assert found["stats endpoint"] == [] and found["times"] == []


def test_ids_and_dates_are_group_keys_in_bson_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """user_id stored as an ObjectId or a number next to strings: BSON order on ties."""
    store(
        [
            {"user_id": ObjectId("0" * 24)},
            {"user_id": 7},
            {"user_id": "7"},
            {"user_id": None},
            {},
        ]
    )
    found = assert_same(monkeypatch, Tracking.objects)
    assert [row["user_id"] for row in found["stats user_id"]] == [None, 7, "7", ObjectId("0" * 24)]
