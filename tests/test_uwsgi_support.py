"""flask_tracking.uwsgi_support: the writers stop from uWSGI's exit hook, and a writer warns
of the uWSGI settings that keep records unwritten (a fake ``uwsgi`` module; the real server is
in test_deployment.py)."""

from __future__ import annotations

import logging
import sys
import types
import weakref

import pytest

from flask_tracking import uwsgi_support
from flask_tracking import writer as writer_module
from flask_tracking.uwsgi_support import run_at_uwsgi_exit
from flask_tracking.writer import BatchWriter

from .test_writer import LOGGER_NAME, Sink, submit_all


def fake_uwsgi(monkeypatch: pytest.MonkeyPatch, **attributes: object) -> types.ModuleType:
    """A ``uwsgi`` module with ``attributes``, as uWSGI makes one in its processes."""
    module = types.ModuleType("uwsgi")
    for name, value in attributes.items():
        setattr(module, name, value)
    monkeypatch.setitem(sys.modules, "uwsgi", module)
    return module


def test_under_uwsgi_its_atexit_stops_the_writers_then_runs_the_one_set_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uWSGI's Python plugin calls ``uwsgi.atexit`` as a worker exits, then Python's exit
    hooks, unless ``--skip-atexit-teardown``: the writers stop from there too, and a
    ``uwsgi.atexit`` set before runs after them."""
    calls: list[str] = []
    uwsgi = fake_uwsgi(monkeypatch, atexit=lambda: calls.append("set before"))
    monkeypatch.setattr(writer_module, "_LIVE_WRITERS", weakref.WeakSet())  # this test's only
    run_at_uwsgi_exit(writer_module._exit_every_writer)  # as the writer module does
    sink = Sink()
    writer = BatchWriter(sink, flush_interval_seconds=30, shutdown_timeout_seconds=1.0)
    submit_all(writer, range(3))
    uwsgi.atexit()  # what uWSGI does as the worker exits
    assert (sink.written, calls) == ([0, 1, 2], ["set before"])
    assert writer.submit({"i": 3}, 1) is False  # it really shut down
    writer._exit_hook()  # Python's exit hooks then: nothing left to do
    assert sink.written == [0, 1, 2]


@pytest.mark.parametrize(
    ("has_threads", "opt", "named"),
    [
        (0, {}, ["--enable-threads"]),
        (1, {"master": True}, []),
        (1, {"skip-atexit": True}, ["--skip-atexit"]),
        (1, {"skip-atexit": b"false"}, []),  # set to false in an ini file
        (1, {"skip-atexit-teardown": True}, []),
    ],
)
def test_a_writer_under_uwsgi_warns_once_about_settings_that_keep_records_unwritten(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    has_threads: int,
    opt: dict[str, object],
    named: list[str],
) -> None:
    """uWSGI before 2.0.27 runs Python threads only with ``--enable-threads`` (or
    ``--threads``): without them (``uwsgi.has_threads`` 0) its worker keeps the GIL while it
    waits for a request, and the writer thread does not run between requests. With
    ``--skip-atexit`` a worker exits without any exit hook. One warning per process names
    the option."""
    fake_uwsgi(monkeypatch, has_threads=has_threads, opt=opt)
    monkeypatch.setattr(uwsgi_support, "_CHECKED", [False])
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    for _ in range(2):
        BatchWriter(Sink(), logger=logging.getLogger(LOGGER_NAME)).shutdown(1)
    warned = [r.getMessage() for r in caplog.records if "uWSGI" in r.getMessage()]
    assert len(warned) == len(named), warned
    assert all(option in message for option, message in zip(named, warned)), warned
