"""A ``tracking-config`` directive: the reference of every ``TRACKING_*`` setting.

It reads ``flask_tracking/config.py`` itself (see ``tracking_settings``), so the page cannot
drift from the code: a key added to ``DEFAULTS`` appears with its comment, default and unit.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from tracking_settings import CONFIG_SOURCE, documented_settings, setting_lines


class TrackingConfigDirective(SphinxDirective):
    """``.. tracking-config::``: one ``data`` entry per key of ``config.DEFAULTS``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from flask_tracking.config import DEFAULTS

        self.env.note_dependency(str(CONFIG_SOURCE))
        source = CONFIG_SOURCE.read_text(encoding="utf-8")
        lines: list[str] = []
        for setting in documented_settings(source, DEFAULTS):
            lines += setting_lines(setting)
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source=str(CONFIG_SOURCE)), 0, container)
        return list(container.children)


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the directive."""
    app.add_directive("tracking-config", TrackingConfigDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
