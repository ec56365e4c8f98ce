"""The package declares every distribution it imports at module level (setup.cfg)."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

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


def install_requirement(name: str) -> Requirement:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    for line in parser["options"]["install_requires"].split("\n"):
        if line.strip() and normalize(Requirement(line.strip()).name) == name:
            return Requirement(line.strip())
    raise AssertionError(f"{name} is not in install_requires")


def environment(
    system: str, machine: str, python: str, implementation: str = "CPython"
) -> dict[str, str]:
    return {
        "sys_platform": system,
        "platform_machine": machine,
        "python_version": python,
        "python_full_version": python + ".0",
        "platform_python_implementation": implementation,
        "implementation_name": implementation.lower(),
    }


#: Where each C extension is installed by default: (system, machine, Python, implementation,
#: installed). Elsewhere pip would build it from source, which needs a C or C++ toolchain (and,
#: for google-re2, the RE2 and Abseil libraries): the dependency is left out.
WHEELS = {
    "google-re2": [
        ("linux", "x86_64", "3.10", "CPython", True),
        ("linux", "x86_64", "3.14", "CPython", True),
        ("linux", "aarch64", "3.12", "CPython", True),
        ("win32", "AMD64", "3.13", "CPython", True),
        ("linux", "x86_64", "3.9", "CPython", False),
        ("linux", "x86_64", "3.15", "CPython", False),
        ("linux", "i686", "3.12", "CPython", False),
        ("linux", "ppc64le", "3.12", "CPython", False),
        ("linux", "x86_64", "3.10", "PyPy", False),
        ("win32", "ARM64", "3.12", "CPython", False),
        ("darwin", "arm64", "3.12", "CPython", False),  # wheels for macOS 13+ only: the extra
    ],
    "pyahocorasick": [
        ("linux", "x86_64", "3.9", "CPython", True),
        ("linux", "x86_64", "3.14", "CPython", True),
        ("linux", "aarch64", "3.10", "CPython", True),
        ("darwin", "arm64", "3.12", "CPython", True),
        ("darwin", "x86_64", "3.9", "CPython", True),
        ("win32", "AMD64", "3.13", "CPython", True),
        ("linux", "aarch64", "3.9", "CPython", False),
        ("linux", "x86_64", "3.15", "CPython", False),
        ("linux", "i686", "3.12", "CPython", False),
        ("linux", "ppc64le", "3.12", "CPython", False),
        ("win32", "ARM64", "3.12", "CPython", False),
        ("linux", "x86_64", "3.10", "PyPy", False),
    ],
}


@pytest.mark.parametrize(
    ("name", "system", "machine", "python", "implementation", "required"),
    [(name, *case) for name, cases in WHEELS.items() for case in cases],
)
def test_c_extensions_are_required_where_their_wheels_exist(
    name: str, system: str, machine: str, python: str, implementation: str, required: bool
) -> None:
    requirement = install_requirement(name)
    assert requirement.marker is not None
    assert (
        requirement.marker.evaluate(environment(system, machine, python, implementation))
        is required
    )


def test_the_declared_pymongo_minimum_is_the_first_release_with_async_mongo_client() -> None:
    # flask_tracking.dbactivity imports pymongo.AsyncMongoClient at module level, which pymongo
    # has since 4.9: setup.cfg requires pymongo>=4.9, and README.md and docs/quickstart.md say
    # "pymongo 4.9+". Without AsyncMongoClient (as in 4.0 to 4.8) the package does not import.
    import subprocess

    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    lines = parser["options"]["install_requires"].split("\n")
    (pymongo,) = [Requirement(line.strip()) for line in lines if line.strip().startswith("pymongo")]
    assert not pymongo.specifier.contains("4.8.0")
    assert pymongo.specifier.contains("4.9.0")
    code = "import pymongo; del pymongo.AsyncMongoClient; import flask_tracking"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0 and "AsyncMongoClient" in result.stderr
    for page in ("README.md", "docs/quickstart.md"):
        text = (ROOT / page).read_text(encoding="utf-8")
        assert "pymongo 4.9+" in text and "pymongo 4 " not in text, page
