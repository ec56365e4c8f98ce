"""The documentation cannot drift: every Python sample of the README and of docs/ runs.

Each page's fenced ``python`` blocks run in order in one namespace, on a fresh mongomock
connection behind MongoEngine's default alias (a block may use what an earlier block of its page
defined). Blocks that are not Python to run say so with another language (``text``, ``console``,
``sh``); a fence without a language is an error, so an unmarked sample cannot escape the tests.
The README also keeps its two commands first, and its table of settings true.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Any

import click
import mongoengine
import pytest

from flask_tracking import Tracking
from flask_tracking.cli import tracking_cli
from flask_tracking.config import DEFAULTS

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, ROOT / "CHANGES.md"]
PAGES += sorted(
    page
    for suffix in ("*.md", "*.rst")
    for page in DOCS.rglob(suffix)
    if "_build" not in page.relative_to(DOCS).parts
)
RUNNABLE = {"python", "py"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_RST_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. (?:code-block|code|sourcecode)::\s*(?P<lang>\S+)")

sys.path.insert(0, str(ROOT / "docs" / "_ext"))
from tracking_settings import documented_settings  # noqa: E402


def fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line, language, code)`` of every fenced block of a Markdown page (MyST directives
    such as ```{toctree} have their braces kept in the language)."""
    blocks = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        language = opening["info"].strip().split(" ")[0] if opening["info"].strip() else ""
        body = []
        index += 1
        while index < len(lines) and lines[index].strip() != fence:
            body.append(lines[index][indent:])
            index += 1
        blocks.append((index - len(body) + 1, language, "\n".join(body) + "\n"))
        index += 1
    return blocks


def rst_blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line, language, code)`` of every ``.. code-block::`` of a reStructuredText page."""
    blocks = []
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = _RST_BLOCK.match(line)
        if not match:
            continue
        body = []
        for following in lines[number + 1 :]:
            if following.strip() and not following.startswith(match["indent"] + " "):
                break
            if following.strip().startswith(":") and not body:
                continue
            body.append(following)
        code = "\n".join(body)
        blocks.append((number + 2, match["lang"], _dedent(code)))
    return blocks


def _dedent(code: str) -> str:
    import textwrap

    return textwrap.dedent(code).strip("\n") + "\n"


def page_blocks(page: Path) -> list[tuple[int, str, str]]:
    """Every code block of a documentation page, Markdown or reStructuredText."""
    text = page.read_text(encoding="utf-8")
    return rst_blocks(text) if page.suffix == ".rst" else fenced_blocks(text)


def _stop_trackers(namespace: dict[str, Any]) -> None:
    """Stop the writer threads of the extensions a page made, so none outlives its test."""
    for value in list(namespace.values()):
        if isinstance(value, Tracking):
            for tracked in list(value._apps.values()):
                tracked.writer.shutdown(1.0)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_python_sample_runs(page: Path, mongomock_db: Any) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    try:
        for line, language, code in page_blocks(page):
            if language in RUNNABLE:
                # Padded so that a traceback names the line of the page.
                exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)
    finally:
        _stop_trackers(namespace)
        mongoengine.disconnect_all()


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_fence_names_its_language(page: Path) -> None:
    unnamed = [line for line, language, _ in page_blocks(page) if not language]
    assert not unnamed, f"{page.name}: name the language of the blocks at lines {unnamed}"


def command_lines(*commands: str, prompt: bool = True) -> list[tuple[str, str]]:
    """``(page, command line)`` of every ``flask tracking ...`` line of a shell block (with its
    ``$`` prompt; ``prompt=False``: with or without it), of the ``commands`` given or of any."""
    start = "$ flask tracking " if prompt else "flask tracking "
    lines = []
    for page in PAGES:
        for _, language, code in page_blocks(page):
            if language in RUNNABLE:
                continue
            for line in code.splitlines():
                command = line if prompt else line.removeprefix("$ ")
                if command.startswith(start) and command[len(start) :].startswith(commands or ""):
                    lines.append((page.name, command[len(start) :]))
    return lines


@pytest.mark.parametrize(("page", "line"), command_lines())
def test_every_documented_command_line_parses(page: str, line: str) -> None:
    """The commands and options shown in the documentation exist and take those values."""
    words = shlex.split(line)
    group_context = click.Context(tracking_cli)
    command = tracking_cli.get_command(group_context, words[0])
    assert command is not None, f"{page}: no command {words[0]!r}"
    command.make_context(words[0], words[1:], parent=group_context)


@pytest.mark.parametrize(("page", "line"), command_lines("stats", "timeline", prompt=False))
def test_every_documented_report_line_groups_by_what_its_source_has(page: str, line: str) -> None:
    """``stats --by`` takes other groups from the rollups than from the records (--records):
    a documented line must not be one the command refuses."""
    from flask_tracking.cli.reports import ROLLUP_GROUPS, STATS_GROUPS

    words = shlex.split(line, comments=True)
    group_context = click.Context(tracking_cli)
    command = tracking_cli.get_command(group_context, words[0])
    assert command is not None
    params = command.make_context(words[0], words[1:], parent=group_context).params
    if words[0] == "stats":
        groups = STATS_GROUPS if params["records"] else ROLLUP_GROUPS
        assert params["by"] in groups, f"{page}: {line!r} is refused: --by {params['by']}"


def test_the_blocks_are_found() -> None:
    text = "a\n\n```python\nx = 1\n```\n\n- item\n\n  ```text\n  $ ls\n  ```\n"
    assert fenced_blocks(text) == [(4, "python", "x = 1\n"), (10, "text", "$ ls\n")]
    rst = "Text\n\n.. code-block:: python\n   :caption: c\n\n   x = 1\n   y = 2\n\nAfter\n"
    assert rst_blocks(rst) == [(4, "python", "x = 1\ny = 2\n")]


def test_the_first_lines_are_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    commands = [line.strip() for line in lines[:12] if line.startswith("    ")]
    assert commands[0].endswith("python -m example_app.app")
    assert commands[1].endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert commands[1] in ci, ".ci/run must run the README's test command verbatim"


def test_the_readme_is_short() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) < 300


def test_the_readme_settings_table_is_true() -> None:
    rows = re.findall(r"^\| `(TRACKING_\w+)` \| (.*?) \|", README.read_text(encoding="utf-8"), re.M)
    assert len(rows) >= 8
    for key, shown in rows:
        default = DEFAULTS[key]
        candidates = {f"`{default!r}`", f"`{default}`"}
        if isinstance(default, int) and not isinstance(default, bool):
            candidates.add(f"`{default:_}`")
        assert any(shown.startswith(text) for text in candidates), f"{key}: {shown} != {default!r}"


def test_every_setting_is_documented_in_config_py() -> None:
    source = (ROOT / "flask_tracking" / "config.py").read_text(encoding="utf-8")
    settings = documented_settings(source, DEFAULTS)
    assert [setting.key for setting in settings] == list(DEFAULTS)
    assert all(setting.doc for setting in settings)


def test_a_setting_without_a_comment_is_refused() -> None:
    source = '#: Seconds. Documented.\n"TRACKING_A": 1,\n"TRACKING_B": 2,\n'
    with pytest.raises(ValueError, match="TRACKING_B has no #: comment"):
        documented_settings(source, {"TRACKING_A": 1, "TRACKING_B": 2})
    (only,) = documented_settings(source, {"TRACKING_A": 1})
    assert (only.unit, only.doc) == ("seconds", "Seconds. Documented.")
