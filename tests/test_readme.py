"""The README documents every setting with its default, and its first lines are the two commands."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

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


def python_block(text: str, containing: str) -> str:
    """The fenced ```python block of ``text`` that contains ``containing``."""
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    (block,) = [block for block in blocks if containing in block]
    return block


def test_the_before_save_sample_drops_health_checks_and_keeps_the_rest(mongomock_db: Any) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_sample"}
    exec(python_block(README, "def drop_health_checks"), namespace)
    app, tracking = namespace["app"], namespace["tracking"]
    client = app.test_client()
    client.get("/healthz", headers={"User-Agent": "kube-probe/1.27"})
    client.get("/", headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"})
    assert tracking.close(5.0)
    documents = list(mongomock_db["tracking"].find())
    assert [d["user_agent"]["string"] for d in documents] == [
        "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
    ]
    assert documents[0]["custom_data"] == {"region": "eu-1"}


CAPTURE_PAGE = (ROOT / "docs" / "capture.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "containing", ["def orders", "assert tracking.close(5)  # written"], ids=["record", "close"]
)
def test_the_capture_page_samples_run(containing: str) -> None:
    namespace: dict[str, Any] = {"__name__": "capture_sample"}
    exec(python_block(CAPTURE_PAGE, containing), namespace)
