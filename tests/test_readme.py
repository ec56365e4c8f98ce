"""The README documents every setting with its default, and its first lines are the two commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from flask_tracking.config import DEFAULTS

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_every_setting_is_in_the_configuration_table(key: str) -> None:
    rows = [line for line in README.splitlines() if line.startswith(f"| `{key}` |")]
    assert len(rows) == 1, f"{key} needs exactly one row in the README's configuration table"
    default = DEFAULTS[key]
    shown = f"{default:_}" if isinstance(default, int) and not isinstance(default, bool) else None
    assert (
        f"`{default!r}`" in rows[0]
        or (shown and f"`{shown}`" in rows[0])
        or (f"`{default}`" in rows[0])
    ), f"{key}: the default {default!r} is not in its row"


def test_the_first_lines_are_the_two_commands() -> None:
    commands = [line.strip() for line in README.splitlines()[:12] if line.startswith("    ")]
    assert commands[0].endswith("python -m example_app.app")
    assert commands[1].endswith("python -m pytest")
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci, ".ci/run must run the README's test command verbatim"
