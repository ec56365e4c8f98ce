"""End to end: the writer's lifecycle. Apps come and go without leaving threads or memory
behind, ``Tracking.close`` flushes and stops, and a dropped app's last records still land."""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc
from typing import Any

from flask import Flask

from flask_tracking import Tracking
from flask_tracking.extension import _AppTracking

from .conftest import FAST_WRITER


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("flask-tracking-writer")]


def wait_for(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def one_request_app(name: str) -> Flask:
    app = Flask(name)
    app.config.update(TESTING=True, **FAST_WRITER)
    Tracking(app)

    @app.get("/")
    def index() -> str:
        return "ok"

    assert app.test_client().get("/").status_code == 200
    return app


def live_apps(prefix: str) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is Flask and o.name.startswith(prefix))


def test_apps_created_and_dropped_leave_at_most_a_few_threads(mongo: Any) -> None:
    before = len(writer_threads())
    for number in range(150):
        one_request_app(f"dropped-{number}")
    gc.collect()
    assert wait_for(lambda: len(writer_threads()) <= before + 3), len(writer_threads())
    gc.collect()  # what the writers held while they wrote their last batch
    assert live_apps("dropped-") == 0  # nothing (a signal receiver, a thread) kept one alive
    # Nor their tracking state (config, writer, queue): a signal receiver used to hold it.
    assert not [
        o
        for o in gc.get_objects()
        if type(o) is _AppTracking
        and o.config is not None
        and o.writer._name.startswith("flask-tracking-writer[dropped-")
    ]
    assert mongo["tracking"].count_documents({}) == 150  # and every record was written


def test_a_dropped_apps_pending_records_are_still_written(mongo: Any) -> None:
    app = one_request_app("dropped-with-records")
    name = app.name
    del app
    gc.collect()
    assert wait_for(lambda: mongo["tracking"].count_documents({}) == 1)
    assert wait_for(lambda: not [t for t in writer_threads() if name in t.name])


def test_close_flushes_stops_and_leaves_nothing_running(mongo: Any) -> None:
    app = one_request_app("closed")
    tracking = app.extensions["tracking"]
    assert [t for t in writer_threads() if "[closed]" in t.name]
    assert tracking.close(5.0) is True
    assert mongo["tracking"].count_documents({}) == 1  # flushed before it stopped
    assert not [t for t in writer_threads() if "[closed]" in t.name]
    assert app.test_client().get("/").status_code == 200  # the app still answers
    assert tracking.stats(app)["dropped_shutdown"] == 1  # counted, not written
    assert not [t for t in writer_threads() if "[closed]" in t.name]
    assert tracking.close(1.0) is True  # idempotent
    assert mongo["tracking"].count_documents({}) == 1


def test_close_of_one_instance_serving_two_apps_stops_both(mongo: Any) -> None:
    tracking = Tracking()
    apps = []
    for name in ("first", "second"):
        app = Flask(f"closing-{name}")
        app.config.update(TESTING=True, **FAST_WRITER)
        tracking.init_app(app)
        app.test_client().get("/nowhere")
        apps.append(app)
    assert tracking.close(5.0) is True
    assert mongo["tracking"].count_documents({}) == 2
    assert not [t for t in writer_threads() if "closing-" in t.name]


def test_an_app_still_answering_after_close_keeps_no_memory_per_request(mongo: Any) -> None:
    app = one_request_app("closed-busy")
    tracking = app.extensions["tracking"]
    assert tracking.close(5.0) is True
    client = app.test_client()

    def held_by_the_tracker_after(requests: int) -> int:
        for _ in range(requests):
            client.get("/")
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        traces = snapshot.filter_traces([tracemalloc.Filter(True, "*/flask_tracking/*")])
        return sum(stat.size for stat in traces.statistics("filename"))

    tracemalloc.start()
    try:
        before = held_by_the_tracker_after(100)
        after = held_by_the_tracker_after(2000)
    finally:
        tracemalloc.stop()
    # No thread runs to fold the rollups' samples any more: they must not pile up.
    assert after - before < 20_000, (before, after)
    assert tracking.stats(app)["dropped_shutdown"] == 2100
