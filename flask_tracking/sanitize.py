"""Turn arbitrary Python values (custom data) into a bounded copy that BSON can always encode.

``bson.encode`` refuses sets, Decimals, dates, UUIDs, arbitrary objects, ints beyond 64 bits,
lone surrogates, non-string keys, NUL in keys and self-references, and a server refuses deep
nesting and documents over 16 MiB. :func:`bson_safe` converts all of these instead of failing,
so one odd value never costs its record (or its batch), and it copies, so a value the app mutates
after the request cannot change (or break) what is stored.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, NamedTuple

from bson import Binary, Decimal128, Int64, ObjectId

#: Nesting levels kept below the custom data itself; deeper values become :data:`TOO_DEEP`.
MAX_DEPTH = 32
#: Stored in place of a container that contains itself.
CIRCULAR = "[circular reference]"
#: Stored in place of values nested deeper than :data:`MAX_DEPTH`.
TOO_DEEP = "[nested too deep]"
#: Stored in place of the values that did not fit in the byte budget.
OVER_BUDGET = "[cut: over the size limit]"
#: Key added to a dict whose remaining items did not fit in the byte budget.
CUT_KEY = "_cut"
#: Characters kept of a key.
MAX_KEY_LENGTH = 256
#: Appended to strings and reprs that were cut to fit.
TRUNCATED = "...[truncated]"

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_KEPT_AS_IS = (bool, float, type(None), datetime.datetime, ObjectId, Decimal128, Int64)
_OVERHEAD = 16  # rough BSON bytes per element beyond its payload (type byte, key, length)


class SafeCopy(NamedTuple):
    """A BSON-safe copy and its estimated encoded size in bytes."""

    value: Any
    size: int


def bson_safe(value: Any, max_bytes: int) -> SafeCopy:
    """Return a copy of ``value`` that ``bson.encode`` accepts, about ``max_bytes`` at most.

    Dicts stay dicts (keys turned into strings; NUL, a leading ``$`` and ``.`` escaped), named
    tuples become dicts of their fields, lists, tuples and sets become lists,
    Decimal/UUID/date/time/timedelta become strings, ints beyond 64 bits become strings, invalid
    text is escaped, other objects become their (cut) ``repr``.
    """
    copier = _Copier(max_bytes)
    try:
        copied = copier.copy(value, 0)
    except Exception as error:  # a hostile Mapping or __iter__; keep the record, say why
        copied = f"[unconvertible {type(value).__name__}: {type(error).__name__}]"
    return SafeCopy(copied, max_bytes - copier.remaining())


class _Copier:
    __slots__ = ("_budget", "_path")

    def __init__(self, max_bytes: int) -> None:
        self._budget = max_bytes
        self._path: set[int] = set()  # ids of the containers being copied (cycle detection)

    def remaining(self) -> int:
        return self._budget

    def copy(self, value: Any, depth: int) -> Any:
        if self._budget <= 0:
            return OVER_BUDGET
        self._budget -= _OVERHEAD
        if isinstance(value, _KEPT_AS_IS):
            return value
        if isinstance(value, int):
            return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, (bytes, bytearray, memoryview, Binary)):
            return self._bytes(bytes(value))
        if isinstance(value, (Mapping, list, tuple, set, frozenset)):
            return self._container(value, depth)
        if isinstance(value, (datetime.date, datetime.time)):
            return self._text(value.isoformat())
        return self._text(_describe(value))

    def _text(self, text: str) -> str:
        limit = max(self._budget, 0)
        cut = len(text) > limit
        if cut:
            text = text[:limit]
        size = len(text)
        if not text.isascii():  # budget in UTF-8 bytes; lone surrogates become escapes
            data = text.encode("utf-8", "backslashreplace")
            if len(data) > limit:
                data, cut = data[:limit], True
            text, size = data.decode("utf-8", "ignore"), len(data)
        self._budget -= size
        return text + TRUNCATED if cut else text

    def _bytes(self, data: bytes) -> bytes:
        limit = max(self._budget, 0)
        self._budget -= min(len(data), limit)
        return data[:limit]

    def _container(self, value: Any, depth: int) -> Any:
        if depth >= MAX_DEPTH:
            return TOO_DEEP
        key = id(value)
        if key in self._path:
            return CIRCULAR
        self._path.add(key)
        try:
            if isinstance(value, Mapping):
                return self._mapping(value, depth + 1)
            names = _field_names(value)
            if names is not None:  # a named tuple: its names matter as a dict's keys do
                return self._mapping(dict(zip(names, value)), depth + 1)
            items = _ordered(value) if isinstance(value, (set, frozenset)) else value
            return self._sequence(list(items), depth + 1)
        finally:
            self._path.discard(key)

    def _mapping(self, value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        copied: dict[str, Any] = {}
        for key, item in list(value.items()):
            if self._budget <= 0:
                copied[CUT_KEY] = OVER_BUDGET
                break
            name = _safe_key(key)
            self._budget -= len(name)
            copied[name] = self.copy(item, depth)
        return copied

    def _sequence(self, items: list[Any], depth: int) -> list[Any]:
        copied: list[Any] = []
        for item in items:
            if self._budget <= 0:
                copied.append(OVER_BUDGET)
                break
            copied.append(self.copy(item, depth))
        return copied


def _field_names(value: Any) -> tuple[str, ...] | None:
    """The field names of a named tuple (``collections.namedtuple``, ``typing.NamedTuple``),
    else None."""
    names = getattr(type(value), "_fields", None) if isinstance(value, tuple) else None
    if type(names) is tuple and len(names) == len(value) and all(type(n) is str for n in names):
        return names
    return None


def _safe_key(key: Any) -> str:
    text = key if isinstance(key, str) else _describe(key)
    if len(text) > MAX_KEY_LENGTH:
        text = text[:MAX_KEY_LENGTH] + TRUNCATED
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if text.startswith("$"):
        text = "\uff04" + text[1:]  # FULLWIDTH DOLLAR SIGN, MongoDB's suggested stand-in
    if "." in text:
        text = text.replace(".", "\uff0e")  # FULLWIDTH FULL STOP
    return text


def _ordered(items: set[Any] | frozenset[Any]) -> list[Any]:
    try:
        return sorted(items)
    except TypeError:
        return sorted(items, key=repr)


def _describe(value: Any) -> str:
    """``str`` for numbers-like types, ``repr`` for the rest; never raises."""
    try:
        return str(value) if _is_stringish(value) else repr(value)
    except Exception as error:  # a broken __repr__ must not lose the record
        return f"[unrepresentable {type(value).__name__}: {type(error).__name__}]"


def _is_stringish(value: Any) -> bool:
    """Types whose ``str`` is their natural textual form (Decimal, UUID, enums of str, ...)."""
    return type(value).__module__ in _STRINGISH_MODULES


_STRINGISH_MODULES = frozenset({"decimal", "uuid", "fractions", "ipaddress", "pathlib", "datetime"})
