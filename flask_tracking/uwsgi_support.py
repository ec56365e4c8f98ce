"""What running under uWSGI asks of the tracker: its own exit hook, and the settings to warn of.

uWSGI's Python plugin makes a ``uwsgi`` module in the processes it runs (there only). A worker
that exits calls ``uwsgi.atexit``, then Python's exit hooks, unless ``--skip-atexit-teardown``
skips the latter: :func:`run_at_uwsgi_exit` has the former run a function too. Two settings
keep records from being written, and :func:`warn_about_uwsgi_settings` says so once per
process: no Python threads (uWSGI before 2.0.27 without ``--enable-threads`` or ``--threads``)
and ``--skip-atexit`` (a worker exits with ``_exit()``, without any hook). Outside uWSGI both
do nothing. No Flask, no I/O.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any


def uwsgi_module() -> Any:
    """uWSGI's ``uwsgi`` module when uWSGI runs this process, else None."""
    try:
        return importlib.import_module("uwsgi")  # made by uWSGI, in its processes only
    except ImportError:
        return None


def run_at_uwsgi_exit(function: Callable[[], None]) -> None:
    """Under uWSGI, have ``uwsgi.atexit`` call ``function`` as a worker exits, then the
    ``uwsgi.atexit`` set before, if any."""
    uwsgi = uwsgi_module()
    if uwsgi is None:
        return
    previous = getattr(uwsgi, "atexit", None)

    def at_exit() -> None:
        try:
            function()
        finally:
            if previous is not None:
                previous()

    uwsgi.atexit = at_exit


#: Whether this process checked how uWSGI runs it (see :func:`warn_about_uwsgi_settings`).
_CHECKED = [False]


def warn_about_uwsgi_settings(logger: logging.Logger) -> None:
    """Once per process under uWSGI, warn about the settings that keep records from being
    written: no Python threads (the worker keeps the GIL while it waits for a request, so the
    writer thread runs only now and then while a request is served), and ``--skip-atexit``."""
    if _CHECKED[0]:
        return
    _CHECKED[0] = True
    uwsgi = uwsgi_module()
    if uwsgi is None:
        return
    if not getattr(uwsgi, "has_threads", True):
        logger.warning(
            "flask_tracking: uWSGI runs this app without Python threads: the tracking writer "
            "thread runs only now and then while a request is served, never between "
            "requests, so records wait in memory until the worker exits, or are dropped once "
            "the queue is full (dropped_queue_full). Start uWSGI with --enable-threads."
        )
    if _uwsgi_flag(getattr(uwsgi, "opt", {}), "skip-atexit"):
        logger.warning(
            "flask_tracking: uWSGI runs with --skip-atexit: a worker exits without any exit "
            "hook, so the records it has not written yet are lost, uncounted. Leave "
            "--skip-atexit out (--skip-atexit-teardown keeps the records)."
        )


def _uwsgi_flag(options: Any, name: str) -> bool:
    """Whether uWSGI's options (``uwsgi.opt``) set the flag ``name``, as uWSGI reads it: set
    unless its value is false, off, no or 0."""
    value = options.get(name) if isinstance(options, dict) else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        return value.lower() not in ("false", "off", "no", "0")
    return bool(value)
