"""The package declares every distribution it imports at module level (setup.cfg)."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).parent.parent


def module_level_imports(path: Path) -> set[str]:
    """Top-level names imported when the module is imported (not under TYPE_CHECKING)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def declared_requirements() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = parser["options"]["install_requires"].split("\n")
    return {normalize(re.split(r"[<>=!~;\[ ]", line.strip())[0]) for line in lines if line.strip()}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_distribution_is_declared() -> None:
    imported: set[str] = set()
    for path in (ROOT / "flask_tracking").rglob("*.py"):
        imported |= module_level_imports(path)
    third_party = imported - set(sys.stdlib_module_names) - {"__future__", "flask_tracking"}
    distributions = packages_distributions()
    needed = {normalize(distributions[name][0]) for name in third_party}
    assert "blinker" in needed  # flask_tracking.signals
    assert needed <= declared_requirements(), needed - declared_requirements()
