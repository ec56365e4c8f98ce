"""The reports over stored records: their aggregation pipelines, and their rows as returned.

:class:`~flask_tracking.documents.TrackingQuerySet` runs each pipeline after its own
``$match``; this module only builds the stages and turns the rows the server sends back into
the dicts the reports return. Every number is computed once, on the server, with operators
of MongoDB 4.4 that mongomock also evaluates ($isNumber, $cond, $divide, $multiply, $floor,
$arrayElemAt, $filter, $let, $size, $dateToString). Records carrying a ``sample_rate`` (in
``(0, 1]``) count for ``1 / sample_rate`` requests. :func:`percentile` is the same percentile
formula in Python.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import TypeGuard

__all__ = [
    "PERCENTILES",
    "STATS_GROUPS",
    "TIMELINE_BUCKETS",
    "USER_AGENT_FIELDS",
    "check_choice",
    "db_summary",
    "db_summary_pipeline",
    "finite_sorted",
    "is_number",
    "percentile",
    "percentile_index",
    "stats_pipeline",
    "stats_rows",
    "timeline_pipeline",
    "timeline_rows",
    "unique_visitors",
    "unique_visitors_pipeline",
    "user_agent_rows",
    "user_agents_pipeline",
]

#: Fields :meth:`TrackingQuerySet.stats` can group by.
STATS_GROUPS = ("endpoint", "path", "status_code", "user_id")
#: Buckets of :meth:`TrackingQuerySet.timeline`, as ``$dateToString`` (and ``strptime``) formats.
TIMELINE_BUCKETS = {"minute": "%Y-%m-%dT%H:%M", "hour": "%Y-%m-%dT%H", "day": "%Y-%m-%d"}
#: User-agent fields :meth:`TrackingQuerySet.user_agents` can break the records down by.
USER_AGENT_FIELDS = ("browser", "platform", "device", "language")
#: The percentiles every report gives, by key, as fractions.
PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}

# Aggregation expressions shared by the reports.
_VALID_SAMPLE_RATE = {
    "$and": [
        {"$isNumber": "$sample_rate"},
        {"$gt": ["$sample_rate", 0]},
        {"$lte": ["$sample_rate", 1]},
    ]
}
#: How many requests a stored record stands for: 1 / sample_rate when sampled, else 1.
_WEIGHT = {"$cond": [_VALID_SAMPLE_RATE, {"$divide": [1, "$sample_rate"]}, 1]}
#: A server error: status >= 500 or an exception (a string sorts above null; missing does not).
_IS_ERROR = {"$or": [{"$gte": ["$status_code", 500]}, {"$gt": ["$exception", None]}]}


def _number_or_zero(field: str) -> dict[str, Any]:
    return {"$cond": [{"$isNumber": f"${field}"}, f"${field}", 0]}


#: One row per record: its execution time, weight, error flag and body sizes.
_MEASURES = {
    "t": "$execution_time",
    "w": _WEIGHT,
    "e": {"$cond": [_IS_ERROR, 1, 0]},
    "bi": _number_or_zero("request_body_size"),
    "bo": _number_or_zero("response_body_size"),
}
#: Per group; ``times`` keeps the order of the preceding ``$sort`` on ``t``.
_ACCUMULATORS = {
    "count": {"$sum": "$w"},
    "errors": {"$sum": {"$multiply": ["$e", "$w"]}},
    "times": {"$push": "$t"},
    "weighted_time": {"$sum": {"$cond": [{"$isNumber": "$t"}, {"$multiply": ["$t", "$w"]}, 0]}},
    "timed_weight": {"$sum": {"$cond": [{"$isNumber": "$t"}, "$w", 0]}},
    "max": {"$max": "$t"},
    "bytes_in": {"$sum": {"$multiply": ["$bi", "$w"]}},
    "bytes_out": {"$sum": {"$multiply": ["$bo", "$w"]}},
}
_SUMMARY_FIELDS = ("count", "errors", "error_rate", "mean", "max", "bytes_in", "bytes_out")

#: Per record: weight, database commands and time, execution time (0 when not a number).
_DB_MEASURES = {
    "w": _WEIGHT,
    "n": _number_or_zero("db.count"),
    "d": _number_or_zero("db.time_ms"),
    "t": _number_or_zero("execution_time"),
}
_DB_TOTALS = {
    "_id": None,
    "requests": {"$sum": "$w"},
    "with_db": {"$sum": {"$cond": [{"$gt": ["$n", 0]}, "$w", 0]}},
    "commands": {"$sum": {"$multiply": ["$n", "$w"]}},
    "time_ms": {"$sum": {"$multiply": ["$d", "$w"]}},
    "app_time_ms": {"$sum": {"$multiply": ["$t", "$w"]}},
}
#: The two counts of :func:`unique_visitors`, by key, and the field each counts.
_VISITOR_FIELDS = {"ips": "ip", "users": "user_id"}


def check_choice(name: str, value: str, choices: Sequence[str] | dict[str, str]) -> None:
    """Raise :class:`ValueError` naming the choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}.")


def percentile_index(fraction: float, count: int) -> int:
    """Position of the ``fraction`` percentile (0 to 1) among ``count`` sorted values.

    ``floor(fraction * (count - 1))``: the lower of the two values linear interpolation would
    blend (NumPy's ``method="lower"``), so a percentile is always a recorded value. The reports
    compute the same position in MongoDB with ``$floor``, ``$multiply`` and ``$arrayElemAt``.
    """
    return math.floor(fraction * (count - 1))


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` percentile of ascending ``sorted_values`` (see :func:`percentile_index`);
    None when there are no values."""
    if not sorted_values:
        return None
    return sorted_values[percentile_index(fraction, len(sorted_values))]


def _percentile_expression(fraction: float) -> dict[str, Any]:
    """``times[floor(fraction * (size - 1))]``, or null for no times: :func:`percentile_index`."""
    position = {"$floor": {"$multiply": [fraction, {"$subtract": ["$$n", 1]}]}}
    return {
        "$let": {
            "vars": {"n": {"$size": "$times"}},
            "in": {"$cond": [{"$eq": ["$$n", 0]}, None, {"$arrayElemAt": ["$times", position]}]},
        }
    }


def _summary_stages(key: Any) -> list[dict[str, Any]]:
    """Pipeline stages grouping the matched records by ``key`` into one summary each."""
    return [
        {"$project": {"_id": 0, "key": key, **_MEASURES}},
        {"$sort": {"t": 1}},
        {"$group": {"_id": "$key", **_ACCUMULATORS}},
        {
            "$project": {
                "count": 1,
                "errors": 1,
                "max": 1,
                "bytes_in": 1,
                "bytes_out": 1,
                "error_rate": {
                    "$cond": [{"$gt": ["$count", 0]}, {"$divide": ["$errors", "$count"]}, 0]
                },
                "mean": {
                    "$cond": [
                        {"$gt": ["$timed_weight", 0]},
                        {"$divide": ["$weighted_time", "$timed_weight"]},
                        None,
                    ]
                },
                "times": {"$filter": {"input": "$times", "as": "v", "cond": {"$isNumber": "$$v"}}},
            }
        },
        {
            "$project": {
                **dict.fromkeys(_SUMMARY_FIELDS, 1),
                **{key: _percentile_expression(p) for key, p in PERCENTILES.items()},
            }
        },
    ]


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    """A pipeline summary row as returned to callers: estimated counts rounded to integers."""
    summary: dict[str, Any] = {
        "count": round(row["count"]),
        "errors": round(row["errors"]),
        "error_rate": row["error_rate"],
        "mean": row.get("mean"),
    }
    summary.update((key, row.get(key)) for key in PERCENTILES)
    summary["max"] = row.get("max")
    summary["bytes_in"] = round(row["bytes_in"])
    summary["bytes_out"] = round(row["bytes_out"])
    return summary


def stats_pipeline(group_by: str) -> list[dict[str, Any]]:
    """The stages of ``stats(group_by)`` (one of :data:`STATS_GROUPS`): a summary per value,
    most requests first."""
    return [*_summary_stages(f"${group_by}"), {"$sort": {"count": -1, "_id": 1}}]


def stats_rows(rows: Iterable[dict[str, Any]], group_by: str) -> list[dict[str, Any]]:
    """The rows of :func:`stats_pipeline` as ``stats()`` returns them."""
    return [{group_by: row["_id"], **_summary(row)} for row in rows]


def timeline_pipeline(bucket: str) -> list[dict[str, Any]]:
    """The stages of ``timeline(bucket)`` (one of :data:`TIMELINE_BUCKETS`): a summary per
    bucket that has dated records, oldest first."""
    key = {"$dateToString": {"format": TIMELINE_BUCKETS[bucket], "date": "$date_created"}}
    return [
        {"$match": {"date_created": {"$type": "date"}}},
        *_summary_stages(key),
        {"$sort": {"_id": 1}},
    ]


def timeline_rows(rows: Iterable[dict[str, Any]], bucket: str) -> list[dict[str, Any]]:
    """The rows of :func:`timeline_pipeline` as ``timeline()`` returns them (``start``: the
    naive UTC datetime of the bucket)."""
    layout = TIMELINE_BUCKETS[bucket]
    return [{"start": datetime.strptime(row["_id"], layout), **_summary(row)} for row in rows]


def unique_visitors_pipeline() -> list[dict[str, Any]]:
    """One ``$facet`` counting the distinct ips and the distinct user ids (nulls left out)."""

    def distinct(field: str) -> list[dict[str, Any]]:
        return [
            {"$match": {field: {"$ne": None}}},
            {"$group": {"_id": f"${field}"}},
            {"$count": "n"},
        ]

    return [{"$facet": {key: distinct(field) for key, field in _VISITOR_FIELDS.items()}}]


def unique_visitors(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """``{"ips": n, "users": n}`` from the rows of :func:`unique_visitors_pipeline`."""
    found = list(rows)
    counts = found[0] if found else {}
    return {key: counts[key][0]["n"] if counts.get(key) else 0 for key in _VISITOR_FIELDS}


def user_agents_pipeline(by: str) -> list[dict[str, Any]]:
    """The stages of ``user_agents(by)`` (one of :data:`USER_AGENT_FIELDS`): the weight of
    each value, most first."""
    return [
        {"$group": {"_id": f"$user_agent.{by}", "count": {"$sum": _WEIGHT}}},
        {"$sort": {"count": -1, "_id": 1}},
    ]


def user_agent_rows(rows: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    """``{"_id": value, "count": weight}`` rows (most first) as ``user_agents`` returns them."""
    total = sum(row["count"] for row in rows)
    return [
        {by: row["_id"], "count": round(row["count"]), "share": row["count"] / total}
        for row in rows
    ]


def db_summary_pipeline() -> list[dict[str, Any]]:
    """The stages of ``db_summary()``: one row of weighted totals ($project, $group)."""
    return [{"$project": {"_id": 0, **_DB_MEASURES}}, {"$group": _DB_TOTALS}]


def db_summary(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``db_summary()``'s dict from the rows of :func:`db_summary_pipeline` (none: zeros)."""
    found = list(rows)
    totals = found[0] if found else {}
    requests = round(totals.get("requests", 0))
    commands = round(totals.get("commands", 0))
    time_ms = float(totals.get("time_ms", 0))
    app_time_ms = float(totals.get("app_time_ms", 0))
    return {
        "requests": requests,
        "with_db": round(totals.get("with_db", 0)),
        "commands": commands,
        "time_ms": time_ms,
        "app_time_ms": app_time_ms,
        "share": time_ms / app_time_ms if app_time_ms > 0 else None,
        "mean_commands": commands / requests if requests else None,
        "mean_time_ms": time_ms / requests if requests else None,
    }


def is_number(value: Any) -> TypeGuard[int | float]:
    """``$isNumber``: an int or a float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_sorted(values: Iterable[Any]) -> list[float]:
    """The values that are finite numbers (see :func:`is_number`), ascending."""
    return sorted(value for value in values if is_number(value) and math.isfinite(value))
