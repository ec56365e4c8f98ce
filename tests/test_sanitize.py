"""Tests for flask_tracking.sanitize.bson_safe: awkward custom data becomes a bounded BSON copy."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import namedtuple
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any, NamedTuple

import bson
import pytest
from bson import ObjectId

from flask_tracking.sanitize import (
    CIRCULAR,
    CUT_KEY,
    MAX_DEPTH,
    MAX_KEY_LENGTH,
    OVER_BUDGET,
    TOO_DEEP,
    TRUNCATED,
    bson_safe,
)

#: Bytes a result may exceed its budget by (cut markers, the outer document, key bytes).
SLACK = 1024
BUDGET = 4096
MB = 1024 * 1024


def encoded_size(value: Any) -> int:
    """Length of ``value`` stored as one field, with pymongo's own encoder (default options)."""
    return len(bson.encode({"v": value}))


def nesting(value: Any) -> int:
    """Levels of dicts/lists in ``value``."""
    if isinstance(value, dict):
        return 1 + max((nesting(item) for item in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((nesting(item) for item in value), default=0)
    return 0


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Frozen(Mapping):
    """A read-only Mapping that is not a dict."""

    def __init__(self, data: dict[Any, Any]) -> None:
        self._data = data

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class Hostile(Mapping):
    """A Mapping whose items cannot be read."""

    def __getitem__(self, key: Any) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[Any]:
        raise RuntimeError("cannot iterate")

    def __len__(self) -> int:
        return 1


def self_dict() -> dict[str, Any]:
    value: dict[str, Any] = {"name": "loop"}
    value["self"] = value
    return value


def self_list() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


def deep(levels: int, leaf: Any = "bottom") -> dict[str, Any]:
    value: Any = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def diamond(levels: int) -> list[Any]:
    """A DAG whose naive expansion has 2**levels leaves (shared, not circular)."""
    value: list[Any] = ["leaf"]
    for _ in range(levels):
        value = [value, value]
    return value


# Every result must encode and stay within BUDGET + SLACK.
AWKWARD = [
    pytest.param({3, 1, 2}, id="set"),
    pytest.param(frozenset({"b", "a"}), id="frozenset"),
    pytest.param({1, "a", None}, id="mixed_set"),
    pytest.param(Decimal("1.10"), id="decimal"),
    pytest.param(dt.date(2024, 1, 2), id="date"),
    pytest.param(dt.time(12, 30, 5), id="time"),
    pytest.param(dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), id="datetime"),
    pytest.param(dt.timedelta(days=1, seconds=5), id="timedelta"),
    pytest.param(uuid.UUID("12345678-1234-5678-1234-567812345678"), id="uuid"),
    pytest.param(object(), id="object"),
    pytest.param(BadRepr(), id="bad_repr"),
    pytest.param(len, id="function"),
    pytest.param(2**70, id="big_int"),
    pytest.param(-(2**70), id="big_negative_int"),
    pytest.param([2**63 - 1, -(2**63), 2**63, -(2**63) - 1], id="int64_edges"),
    pytest.param("ok \udcff \ud800 end", id="surrogate_value"),
    pytest.param({"k\udcff": 1}, id="surrogate_key"),
    pytest.param(self_dict(), id="self_dict"),
    pytest.param(self_list(), id="self_list"),
    pytest.param(deep(150), id="deep_150"),
    pytest.param(diamond(60), id="diamond_60"),
    pytest.param(
        {1: "int", b"k": "bytes", None: "none", (1, 2): "tuple", 1.5: "float"}, id="odd_keys"
    ),
    pytest.param({"a\x00b": 1}, id="nul_key"),
    pytest.param({"$set": 1, "a.b": 2, "$": 3, "x$": 4}, id="dollar_dot_keys"),
    pytest.param({"k" * 10_000: 1}, id="long_key"),
    pytest.param(b"\x00\xff" * 10, id="bytes"),
    pytest.param(bytearray(b"abc"), id="bytearray"),
    pytest.param(memoryview(b"abcdef")[1:4], id="memoryview"),
    pytest.param(b"x" * (2 * MB), id="big_bytes"),
    pytest.param((1, (2, 3), "x"), id="tuple"),
    pytest.param(ObjectId("65f0a1b2c3d4e5f601234567"), id="objectid"),
    pytest.param(Frozen({"a": 1, 2: {3}}), id="mapping_subclass"),
    pytest.param(Hostile(), id="hostile_mapping"),
    pytest.param([float("nan"), float("inf"), -float("inf")], id="nan_inf"),
    pytest.param("a\x00b", id="nul_in_value"),
    pytest.param("x" * (1 * MB), id="big_string"),
    pytest.param({f"k{i}": i for i in range(100_000)}, id="many_items_dict"),
    pytest.param(list(range(100_000)), id="long_list"),
    pytest.param(["y" * 1000] * 100, id="many_strings"),
    pytest.param({"a": [{"b": "z" * 100_000}], "c": list(range(10_000))}, id="nested_big"),
    pytest.param(
        {("k" * 250) + str(i): None for i in range(10_000)},
        id="long_keys_dict",
    ),
    pytest.param(
        "\N{GRINNING FACE}" * 1_000_000,
        id="multibyte_string",
    ),
    pytest.param(
        "\udcff" * 100_000,
        id="surrogate_string",
    ),
]


@pytest.mark.parametrize("value", AWKWARD)
def test_every_result_encodes_and_stays_bounded(value: Any) -> None:
    copied, size = bson_safe(value, BUDGET)
    length = encoded_size(copied)  # raises if pymongo cannot encode it
    assert length <= BUDGET + SLACK, f"{length} bytes for a {BUDGET} byte budget"
    assert nesting(copied) <= MAX_DEPTH
    assert size > 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b", "a"}), ["a", "b"]),
        (Decimal("1.10"), "1.10"),
        (dt.date(2024, 1, 2), "2024-01-02"),
        (dt.time(12, 30, 5), "12:30:05"),
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), "12345678-1234-5678-1234-567812345678"),
        (2**70, str(2**70)),
        (-(2**70), str(-(2**70))),
        (2**63 - 1, 2**63 - 1),
        (-(2**63), -(2**63)),
        (2**63, str(2**63)),
        ((1, (2, 3), "x"), [1, [2, 3], "x"]),
        (b"\x00\xff", b"\x00\xff"),
        (bytearray(b"abc"), b"abc"),
        (memoryview(b"abcdef")[1:4], b"bcd"),
        ("a\x00b", "a\x00b"),
        (True, True),
        (None, None),
        (1.5, 1.5),
    ],
    ids=repr,
)
def test_conversions(value: Any, expected: Any) -> None:
    copied = bson_safe(value, BUDGET).value
    assert copied == expected
    assert type(copied) is type(expected)
    encoded_size(copied)


def test_datetime_and_objectid_are_kept_as_is() -> None:
    when = dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc)
    oid = ObjectId()
    copied = bson_safe({"when": when, "oid": oid}, BUDGET).value
    assert copied["when"] is when
    assert copied["oid"] is oid
    decoded = bson.decode(bson.encode(copied))
    assert decoded["oid"] == oid


def test_arbitrary_objects_become_their_repr() -> None:
    class Point:
        def __repr__(self) -> str:
            return "Point(1, 2)"

    assert bson_safe(Point(), BUDGET).value == "Point(1, 2)"
    assert bson_safe(object(), BUDGET).value.startswith("<object object at 0x")


def test_broken_repr_is_described_not_raised() -> None:
    assert bson_safe(BadRepr(), BUDGET).value == "[unrepresentable BadRepr: RuntimeError]"
    # also as a key
    assert list(bson_safe({BadRepr(): 1}, BUDGET).value) == [
        "[unrepresentable BadRepr: RuntimeError]"
    ]


def test_hostile_mapping_keeps_the_record() -> None:
    copied = bson_safe(Hostile(), BUDGET).value
    assert copied == "[unconvertible Hostile: RuntimeError]"


def test_lone_surrogates_are_escaped_in_values_and_keys() -> None:
    copied = bson_safe({"k\udcff": "v\ud800", "ok": "caf\u00e9"}, BUDGET).value
    assert copied == {"k\\udcff": "v\\ud800", "ok": "caf\u00e9"}
    encoded_size(copied)


def test_self_references_become_markers() -> None:
    copied = bson_safe(self_dict(), BUDGET).value
    assert copied == {"name": "loop", "self": CIRCULAR}
    assert bson_safe(self_list(), BUDGET).value == [1, CIRCULAR]


def test_shared_but_not_circular_values_are_copied_twice() -> None:
    shared = [1, 2]
    assert bson_safe({"a": shared, "b": shared}, BUDGET).value == {"a": [1, 2], "b": [1, 2]}


def test_deep_nesting_is_cut_at_max_depth() -> None:
    copied = bson_safe(deep(150), BUDGET).value
    assert nesting(copied) == MAX_DEPTH
    innermost = copied
    for _ in range(MAX_DEPTH - 1):
        innermost = innermost["a"]
    assert innermost == {"a": TOO_DEEP}
    # inside a stored record (one more level) it stays below the server's 100 levels
    record = {"custom_data": copied}
    assert nesting(record) < 100
    encoded_size(record)


def test_shallow_nesting_is_untouched() -> None:
    value = deep(MAX_DEPTH - 1)
    assert bson_safe(value, BUDGET).value == value


def test_diamond_is_bounded_in_time_and_size() -> None:
    start = time.perf_counter()
    copied, _ = bson_safe(diamond(60), BUDGET)
    assert time.perf_counter() - start < 1.0
    assert encoded_size(copied) <= BUDGET + SLACK


def test_non_string_keys_become_strings() -> None:
    copied = bson_safe({1: "int", b"k": "bytes", None: "none"}, BUDGET).value
    assert copied == {"1": "int", "b'k'": "bytes", "None": "none"}


def test_nul_dollar_and_dot_in_keys_are_escaped() -> None:
    copied = bson_safe({"a\x00b": 1, "$set": 2, "a.b.c": 3, "x$": 4}, BUDGET).value
    assert copied == {"a\\x00b": 1, "\uff04set": 2, "a\uff0eb\uff0ec": 3, "x$": 4}
    for key in copied:
        assert "\x00" not in key
        assert "." not in key
        assert not key.startswith("$")
    encoded_size(copied)


def test_long_keys_are_cut() -> None:
    (key,) = bson_safe({"k" * 10_000: 1}, BUDGET).value
    # the marker's dots are escaped like any dot in a key (cut happens first)
    assert key == "k" * MAX_KEY_LENGTH + TRUNCATED.replace(".", "\uff0e")


def test_huge_string_is_cut_quickly() -> None:
    value = "x" * (100 * MB)
    start = time.perf_counter()
    copied, size = bson_safe(value, 64 * 1024)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5
    assert copied.endswith(TRUNCATED)
    assert 60 * 1024 <= len(copied) <= 64 * 1024 + len(TRUNCATED)
    assert size <= 64 * 1024
    assert encoded_size(copied) <= 64 * 1024 + SLACK


def test_huge_multibyte_string_is_cut_to_the_budget_in_bytes() -> None:
    copied, _ = bson_safe("\u20ac" * (10 * MB), 64 * 1024)
    assert encoded_size(copied) <= 64 * 1024 + SLACK


def test_big_containers_are_cut_with_markers() -> None:
    copied = bson_safe({f"k{i}": i for i in range(100_000)}, BUDGET).value
    assert copied[CUT_KEY] == OVER_BUDGET
    assert 10 < len(copied) < 1000
    listed = bson_safe(list(range(100_000)), BUDGET).value
    assert listed[-1] == OVER_BUDGET
    assert listed[:10] == list(range(10))


def test_tuples_and_sets_become_lists() -> None:
    copied = bson_safe({"t": (1, 2), "s": {2, 1}, "f": frozenset({"x"})}, BUDGET).value
    assert copied == {"t": [1, 2], "s": [1, 2], "f": ["x"]}


def test_mapping_subclass_becomes_dict() -> None:
    copied = bson_safe(Frozen({"a": 1, 2: {3}}), BUDGET).value
    assert type(copied) is dict
    assert copied == {"a": 1, "2": [3]}


def test_copy_is_independent_of_later_mutation() -> None:
    original: dict[str, Any] = {"items": [1, 2], "inner": {"x": 1}, "buf": bytearray(b"ab")}
    copied = bson_safe(original, BUDGET).value
    original["items"].append(3)
    original["inner"]["y"] = 2
    original["buf"] += b"cd"
    original["new"] = True
    assert copied == {"items": [1, 2], "inner": {"x": 1}, "buf": b"ab"}


def test_zero_budget_still_encodes() -> None:
    copied, _ = bson_safe({"a": "b" * 100}, 0)
    assert copied == OVER_BUDGET
    encoded_size(copied)


ORDINARY = [
    {"order": 42, "tags": ["a", "b"]},
    {"user": "x" * 100, "numbers": list(range(50))},
    [{"a": i, "b": str(i)} for i in range(100)],
    "hello" * 100,
    {"nested": {"deeper": {"deepest": ["one", "two", 3.5, True, None]}}},
    {"blob": b"\x01" * 2000, "text": "t" * 3000},
]


@pytest.mark.parametrize("value", ORDINARY, ids=lambda v: type(v).__name__)
def test_size_estimate_tracks_the_encoded_size(value: Any) -> None:
    copied, size = bson_safe(value, MB)
    assert copied == value
    length = encoded_size(copied)
    assert 0.5 * length <= size <= 3 * length, (size, length)


def test_a_named_tuple_becomes_a_dict_of_its_fields() -> None:
    Login = namedtuple("Login", ["user", "password"])

    class Point(NamedTuple):
        x: int
        y: int

    class Fake(tuple):  # type: ignore[type-arg]
        _fields = ("a",)  # more items than names: not a named tuple

    assert bson_safe({"login": Login("ada", "pw")}, BUDGET).value == {
        "login": {"user": "ada", "password": "pw"}
    }
    assert bson_safe(Point(1, 2), BUDGET).value == {"x": 1, "y": 2}
    assert bson_safe(Fake((1, 2)), BUDGET).value == [1, 2]
