"""``TrackingQuerySet.fetch``: the first records in an order, picked in process on mongomock.

On mongomock, ``order_by(...).limit(n)`` with plain sort values is answered by heapq over the
stored documents (``documents._top_documents``) instead of mongomock sorting and copying every
match. mongomock can run the normal query too, so both run here on small varied datasets
(ties, null and missing values, mixed types, filters, skip, projections) and must give the
same records in the same order.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any, Callable

import mongoengine
import mongomock
import pytest
from bson import ObjectId

from flask_tracking import documents
from flask_tracking.documents import Tracking, TrackingQuerySet

BASE = dt.datetime(2024, 5, 1, 10, 0)
MISSING = object()


@pytest.fixture(autouse=True)
def db(mongomock_db: Any) -> None:
    """Every test on a fresh mongomock database: these are the mongomock-only reading paths."""
    Tracking._get_collection().drop()


def pick(rng: random.Random, *values: Any) -> Any:
    return rng.choice(values)


def random_records(seed: int, count: int) -> list[dict[str, Any]]:
    """Few distinct values per field (many ties), nulls, missing fields, mixed types; ``_id``s
    not in storage order (records stored late)."""
    rng = random.Random(seed)
    start = int(BASE.replace(tzinfo=dt.timezone.utc).timestamp())
    records = []
    for index in range(count):
        record = {
            "_id": ObjectId(f"{start + rng.randrange(40):08x}{index:016x}"),
            "execution_time": pick(rng, None, MISSING, 0, 1, 1.0, 2.5, 7, -3, True, "slow"),
            "status_code": pick(rng, 200, 200, 404, 500, None, MISSING),
            "endpoint": pick(rng, "a", "b", "", None, MISSING),
            "date_created": pick(
                rng, BASE, BASE + dt.timedelta(seconds=index % 5), None, MISSING, "yesterday"
            ),
            "method": "GET",
            "path": f"/p/{index}",
        }
        records.append({key: value for key, value in record.items() if value is not MISSING})
    return records


def store(records: list[dict[str, Any]]) -> None:
    collection = Tracking._get_collection()
    collection.drop()
    if records:
        collection.insert_many([dict(record) for record in records])


ORDERINGS = [
    ("-id",),
    ("id",),
    ("-date_created",),
    ("date_created",),
    ("-execution_time",),
    ("execution_time",),
    ("-status_code", "-execution_time"),
    ("status_code", "execution_time"),
    ("-status_code", "execution_time"),
    ("endpoint", "-date_created", "id"),
]

SELECTIONS: list[Callable[[TrackingQuerySet], TrackingQuerySet]] = [
    lambda records: records,
    lambda records: records.errors(),
    lambda records: records.filter(endpoint="a"),
    lambda records: records.slow(1),
    lambda records: records.filter(id__gt=ObjectId.from_datetime(BASE + dt.timedelta(seconds=20))),
    lambda records: records.only("id", "execution_time", "endpoint"),
]


def normal(queryset: TrackingQuerySet) -> list[Any]:
    return list(queryset)


def same(found: list[Any], expected: list[Any]) -> None:
    assert [record.pk for record in found] == [record.pk for record in expected]
    assert [record.to_mongo().to_dict() for record in found] == [
        record.to_mongo().to_dict() for record in expected
    ]


@pytest.mark.parametrize("seed", range(6))
def test_in_process_top_equals_the_normal_query(seed: int) -> None:
    store(random_records(seed, 60))
    picked = 0
    for ordering in ORDERINGS:
        for select in SELECTIONS:
            for skip, limit in [(None, 1), (None, 7), (None, 51), (3, 10), (55, 10), (0, 100)]:
                queryset = select(Tracking.objects).order_by(*ordering).limit(limit)
                if skip is not None:
                    queryset = queryset.skip(skip)
                picked += documents._top_documents(queryset) is not None
                same(queryset.fetch(), normal(queryset))
    assert picked  # the in-process path ran (values it does not mirror run the query)


@pytest.mark.parametrize("seed", range(4))
def test_plain_values_always_take_the_in_process_path(seed: int) -> None:
    """Numbers, nulls and missing fields only: every top-n query is picked in process."""
    records = random_records(seed, 40)
    for record in records:
        if isinstance(record.get("execution_time"), (str, bool)):
            record["execution_time"] = None
        record["date_created"] = BASE + dt.timedelta(seconds=seed % 3)
    store(records)
    for ordering in ORDERINGS[:9]:
        queryset = Tracking.objects.order_by(*ordering).limit(9).skip(2)
        assert documents._top_documents(queryset) is not None, ordering
        same(queryset.fetch(), normal(queryset))


def test_null_and_missing_sort_lowest_and_ties_keep_storage_order() -> None:
    store(
        [
            {"_id": ObjectId(f"{1:024x}"), "execution_time": 5.0},
            {"_id": ObjectId(f"{2:024x}")},
            {"_id": ObjectId(f"{3:024x}"), "execution_time": None},
            {"_id": ObjectId(f"{4:024x}"), "execution_time": 5},
            {"_id": ObjectId(f"{5:024x}"), "execution_time": 0.5},
        ]
    )
    ids = [int(str(record.pk), 16) for record in Tracking.objects.order_by("-execution_time")[:5]]
    assert ids == [1, 4, 5, 2, 3]
    fast = Tracking.objects.order_by("-execution_time").limit(5).fetch()
    assert [int(str(record.pk), 16) for record in fast] == [1, 4, 5, 2, 3]
    slow_last = Tracking.objects.order_by("execution_time").limit(3).fetch()
    assert [int(str(record.pk), 16) for record in slow_last] == [2, 3, 5]


def test_values_not_mirrored_run_the_normal_query() -> None:
    store(
        [
            {"execution_time": [3, 1]},
            {"execution_time": float("nan")},
            {"execution_time": {"ms": 2}},
            {"execution_time": 4.0},
        ]
    )
    queryset = Tracking.objects.order_by("-execution_time").limit(2).as_pymongo()
    assert documents._top_documents(queryset) is None
    assert [row["_id"] for row in queryset.fetch()] == [row["_id"] for row in queryset]


def test_other_queries_are_not_picked_in_process() -> None:
    store(random_records(1, 10))
    for queryset in [
        Tracking.objects.order_by("-id"),  # no limit
        Tracking.objects.limit(3),  # the default ordering, not an explicit one
        Tracking.objects.order_by("-user_agent.browser").limit(3),  # a dotted key
        Tracking.objects.order_by("-id").limit(documents._TOP_MAX + 1),
    ]:
        assert documents._top_documents(queryset) is None
        same(queryset.fetch(), normal(queryset))


def test_projections_scalars_and_dicts_load_like_the_normal_query() -> None:
    store(random_records(2, 30))
    queryset = Tracking.objects.order_by("-id").limit(5)
    assert queryset.as_pymongo().fetch() == list(queryset.as_pymongo())
    assert queryset.scalar("path").fetch() == list(queryset.scalar("path"))
    assert queryset.only("path").fetch()[0].endpoint is None
    assert [record.path for record in queryset.only("path").fetch()] == [
        record.path for record in queryset
    ]


def test_time_zone_aware_connection_gives_aware_dates() -> None:
    mongoengine.disconnect()
    mongoengine.connect(
        "test_top_aware",
        alias="default",
        mongo_client_class=mongomock.MongoClient,
        uuidRepresentation="standard",
        tz_aware=True,
    )
    store([{"date_created": BASE + dt.timedelta(seconds=index)} for index in range(5)])
    queryset = Tracking.objects.order_by("-date_created").limit(2)
    found = queryset.fetch()
    assert documents._top_documents(queryset) is not None
    assert [record.date_created for record in found] == [r.date_created for r in queryset]
    assert found[0].date_created.tzinfo is not None


def test_a_server_collection_runs_the_normal_query(monkeypatch: pytest.MonkeyPatch) -> None:
    store(random_records(3, 20))
    monkeypatch.setattr(documents, "_evaluates_in_process", lambda collection: False)

    def never(queryset: TrackingQuerySet) -> None:
        raise AssertionError("picked in process on a server")

    monkeypatch.setattr(documents, "_fetch_top", never)
    queryset = Tracking.objects.order_by("-id").limit(4)
    same(queryset.fetch(), normal(queryset))


def test_poll_uses_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    store(random_records(4, 20))
    calls: list[Any] = []
    real = documents._fetch_top

    def counted(queryset: TrackingQuerySet, candidates: Any = None) -> Any:
        calls.append(queryset._ordering)
        return real(queryset, candidates)

    monkeypatch.setattr(documents, "_fetch_top", counted)
    found, _ = Tracking.objects.poll(limit=3)
    assert calls == [[("_id", -1)]]
    assert [record.pk for record in found] == [r.pk for r in Tracking.objects.order_by("-id")[:3]][
        ::-1
    ]


@pytest.mark.parametrize("seed", range(4))
def test_within_reports_of_a_wider_selection_gives_the_same_records(seed: int) -> None:
    store(random_records(seed, 60))
    wider = Tracking.objects.filter(method="GET")
    reports = wider.reports()
    reports.unique_visitors()  # the reports read their records first, as the dashboard's do
    candidates = reports._candidates()
    assert candidates is not None and len(candidates) == 60
    for ordering in ORDERINGS:
        for select in SELECTIONS:
            queryset = select(wider).order_by(*ordering).limit(5).skip(seed)
            top = documents._top_documents(queryset)
            assert documents._top_documents(queryset, candidates) == top
            same(queryset.fetch(reports), normal(queryset))


def test_within_reports_of_a_sliced_selection_reads_the_collection() -> None:
    store(random_records(5, 20))
    reports = Tracking.objects.order_by("-id").limit(3).reports()
    assert reports._candidates() is None
    queryset = Tracking.objects.order_by("-execution_time").limit(4)
    same(queryset.fetch(reports), normal(queryset))
