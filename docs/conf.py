"""Sphinx configuration of the flask_tracking documentation."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent))

import flask_tracking  # noqa: E402

project = "flask_tracking"
author = "flask_tracking contributors"
copyright = "flask_tracking contributors"
release = flask_tracking.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "myst_parser",
    "tracking_config",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}

html_theme = "furo"
html_title = f"flask_tracking {release}"
