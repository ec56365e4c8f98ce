"""The ``TRACKING_*`` settings as ``flask_tracking/config.py`` documents them.

Each key of ``DEFAULTS`` with the ``#:`` comment written above it, its default (the value in
``DEFAULTS``) and its unit (the comment's first word, such as ``Bytes.`` or ``Seconds.``, or
the key's suffix). Used by the ``tracking-config`` Sphinx directive and by the tests; it needs
nothing but the standard library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_SOURCE = Path(__file__).resolve().parents[2] / "flask_tracking" / "config.py"
_KEY_LINE = re.compile(r'^\s*"(TRACKING_[A-Z0-9_]+)"\s*:')
_UNIT_WORDS = {
    "Bytes": "bytes",
    "Seconds": "seconds",
    "Milliseconds": "milliseconds",
    "Records": "records",
    "Documents": "documents",
    "Fraction": "fraction (0 to 1)",
    "Minutes": "minutes",
    "Hours": "hours",
    "Days": "days",
}
_UNIT_SUFFIXES = {
    "_BYTES": "bytes",
    "_SECONDS": "seconds",
    "_MS": "milliseconds",
    "_MINUTES": "minutes",
    "_HOURS": "hours",
    "_DAYS": "days",
}


@dataclass(frozen=True)
class Setting:
    """One documented key of ``DEFAULTS``."""

    key: str
    default: Any
    doc: str
    unit: str | None


def documented_settings(source: str, defaults: dict[str, Any]) -> list[Setting]:
    """Every key of ``defaults`` in source order, with the ``#:`` comment above it.

    Raises ``ValueError`` naming a key that has no comment, or that the source does not list.
    """
    comments: list[str] = []
    found: dict[str, str] = {}
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            comments.append(stripped[2:].strip())
            continue
        match = _KEY_LINE.match(line)
        if match and match.group(1) in defaults:
            if not comments:
                raise ValueError(f"{match.group(1)} has no #: comment in config.py")
            found[match.group(1)] = " ".join(comments)
        comments = []
    missing = sorted(set(defaults) - set(found))
    if missing:
        raise ValueError(f"not documented in config.py's DEFAULTS: {', '.join(missing)}")
    return [Setting(key, defaults[key], doc, unit_of(key, doc)) for key, doc in found.items()]


def unit_of(key: str, doc: str) -> str | None:
    """The unit a setting is given in: its comment's first word, else its name's suffix."""
    first = re.match(r"(\w+)\b", doc)
    if first and first.group(1) in _UNIT_WORDS:
        return _UNIT_WORDS[first.group(1)]
    for suffix, unit in _UNIT_SUFFIXES.items():
        if key.endswith(suffix):
            return unit
    return None


def shown_default(value: Any) -> str:
    """The default as Python source, with a readable size for byte counts."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 10_000:
        text = f"{value:_}"
        for size, name in ((1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
            if value % size == 0:
                return f"``{text}`` ({value // size} {name})"
        return f"``{text}``"
    return f"``{value!r}``"


def setting_lines(setting: Setting) -> list[str]:
    """reStructuredText for one setting: a ``.. data::`` entry with default and unit."""
    lines = [f".. data:: {setting.key}", ""]
    lines.append(f"   :Default: {shown_default(setting.default)}")
    if setting.unit:
        lines.append(f"   :Unit: {setting.unit}")
    lines += ["", f"   {setting.doc}", ""]
    return lines
