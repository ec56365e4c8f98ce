"""``flask tracking ...``: read the recorded requests from a shell.

A thin layer over :class:`~flask_tracking.documents.TrackingQuerySet`: every command turns its
options into query helpers and prints the result. Records are read through the connection
alias the app's :class:`~flask_tracking.Tracking` extension writes to (``TRACKING_DB_ALIAS``),
``"default"`` without the extension. Mistakes (a bad date, an unknown id, no database) end with
one sentence on stderr and exit code 1, never a traceback; colour only on a terminal.

This package holds the ``tracking`` group (:data:`tracking_cli`, which ``Tracking.init_app``
adds to ``app.cli``) and its commands, one module each: ``browse`` (list, show, tail),
``resend`` (curl, replay), ``reports`` (stats, timeline), ``export``, ``collection`` (info,
migrate), and ``selection`` (what they read, chosen from their options). The names the
documentation gives as ``flask_tracking.cli.<name>`` are importable from here:
:func:`select_records`, :func:`app_records`, :func:`select_rollups`, :func:`app_rollups` and
``CSV_COLUMNS``.
"""

from __future__ import annotations

from flask.cli import AppGroup

from .browse import list_command, show_command, tail_command
from .collection import info_command, migrate_command
from .export import CSV_COLUMNS, export_command
from .reports import stats_command, timeline_command
from .resend import curl_command, replay_command
from .selection import app_records, app_rollups, select_records, select_rollups

__all__ = [
    "CSV_COLUMNS",
    "app_records",
    "app_rollups",
    "select_records",
    "select_rollups",
    "tracking_cli",
]

tracking_cli = AppGroup(
    "tracking",
    help="Read the requests flask_tracking recorded.",
    commands=[
        list_command,
        show_command,
        tail_command,
        curl_command,
        replay_command,
        stats_command,
        timeline_command,
        export_command,
        info_command,
        migrate_command,
    ],
)
