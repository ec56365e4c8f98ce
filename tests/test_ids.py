"""Ids (flask_tracking.ids): request ids (and flask_tracking.request_id()), made or taken from
the incoming header, validated, available during the request, echoed, stored; records'
ObjectIds."""

from __future__ import annotations

import copy
import os
import pickle
import re
import threading
import types
from typing import Any, Callable

import bson
import pytest
from bson import ObjectId
from flask import Flask, Response

from flask_tracking import request_id
from flask_tracking.ids import (
    REQUEST_ID_MAX_LENGTH,
    _reseed,
    environ_key,
    is_valid_request_id,
    new_object_id,
    new_request_id,
)

from .conftest import fork_and_report, stored

HEX_32 = re.compile(r"[0-9a-f]{32}")


# ---------------------------------------------------------------------------- unit


def test_new_ids_are_32_hex_digits_and_unique() -> None:
    ids = [new_request_id() for _ in range(100_000)]
    assert all(HEX_32.fullmatch(value) for value in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # W3C traceparent
        "Root=1-5759e988-bd862e3fe1be46a994272793",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "dGVzdA+/=",
        "svc:req@host.example_1",
        "x" * REQUEST_ID_MAX_LENGTH,
    ],
)
def test_valid_incoming_ids(value: str) -> None:
    assert is_valid_request_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * (REQUEST_ID_MAX_LENGTH + 1),
        "has space",
        "a,b",
        "a;b",
        'quote"d',
        "new\nline",
        "tab\t",
        "null\x00",
        "café",
        "<script>",
        "a\r\nSet-Cookie: x=1",
    ],
)
def test_invalid_incoming_ids(value: str) -> None:
    assert not is_valid_request_id(value)


def test_environ_key() -> None:
    assert environ_key("X-Request-ID") == "HTTP_X_REQUEST_ID"
    assert environ_key("x-correlation-id") == "HTTP_X_CORRELATION_ID"


def test_reseeding_changes_the_sequence() -> None:
    from flask_tracking import ids

    state = ids._GENERATOR.getstate()
    expected = [new_request_id() for _ in range(3)]
    ids._GENERATOR.setstate(state)
    before = new_object_id().binary[4:9]
    _reseed()
    assert [new_request_id() for _ in range(3)] != expected
    assert new_object_id().binary[4:9] != before  # new random bytes for record ids too


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_workers_never_share_ids() -> None:
    """Workers forked from one master (gunicorn --preload) each make their own ids."""
    reports = [fork_and_report(lambda: [new_request_id() for _ in range(3)]) for _ in range(2)]
    mine = [new_request_id() for _ in range(3)]
    every_id = mine + reports[0] + reports[1]
    assert len(set(every_id)) == 9, every_id


def test_a_fork_that_ran_no_at_fork_hook_reseeds_at_its_first_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uWSGI forks its workers from C: no at-fork hook runs in them. A process whose random
    state was seeded in another one (its master) seeds its own before its first id."""
    from flask_tracking import ids

    state = ids._GENERATOR.getstate()
    copied = [new_request_id() for _ in range(3)], new_object_id().binary[4:9]
    ids._GENERATOR.setstate(state)
    monkeypatch.setattr(ids, "_SEEDED_IN", [os.getpid() + 1])  # seeded in the master
    assert ([new_request_id() for _ in range(3)], new_object_id().binary[4:9]) != copied
    assert ids._SEEDED_IN[0] == os.getpid()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_with_the_process_id_its_state_was_seeded_in_reseeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Process ids are reused: a process forked from Python (os.fork, multiprocessing) may
    have the id of the long gone process that seeded the state it inherits (here both are
    made to read 4242). It makes ids of its own all the same, not that process's."""
    from flask_tracking import ids

    monkeypatch.setattr(ids, "os", types.SimpleNamespace(getpid=lambda: 4242, urandom=os.urandom))
    _reseed()
    state = ids._GENERATOR.getstate()
    child = fork_and_report(lambda: [new_request_id() for _ in range(3)])
    ids._GENERATOR.setstate(state)
    assert [new_request_id() for _ in range(3)] != child


# ---------------------------------------------------------------------------- end to end


def id_app(make_app: Callable[..., Flask], **config: Any) -> tuple[Flask, list[Any]]:
    """An app whose /rid view and before_request hook report request_id()."""
    app = make_app(**config)
    seen: list[Any] = []

    @app.before_request
    def early() -> None:
        seen.append(("hook", request_id()))

    @app.get("/rid")
    def rid() -> str:
        value = request_id()
        seen.append(("view", value))
        return value or "-"

    return app, seen


def test_an_id_is_made_stored_and_available_during_the_request(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app, seen = id_app(make_app)
    response = app.test_client().get("/rid")
    made = response.get_data(as_text=True)
    assert HEX_32.fullmatch(made)
    assert seen == [("hook", made), ("view", made)]
    assert "X-Request-ID" not in response.headers  # echo is off by default
    [doc] = stored(app, mongo)
    assert doc["request_id"] == made
    assert request_id() is None  # outside a request


def test_a_valid_incoming_id_is_kept(make_app: Callable[..., Flask], mongo: Any) -> None:
    app, _ = id_app(make_app)
    client = app.test_client()
    assert client.get("/rid", headers={"X-Request-ID": "edge-42"}).data == b"edge-42"
    assert client.get("/rid", headers={"x-request-id": "lower-case"}).data == b"lower-case"
    assert [doc["request_id"] for doc in stored(app, mongo)] == ["edge-42", "lower-case"]


@pytest.mark.parametrize("incoming", ["", "x" * 129, "two words", "a\tb", "é", "id-1, id-2"])
def test_an_invalid_incoming_id_is_replaced(
    make_app: Callable[..., Flask], mongo: Any, incoming: str
) -> None:
    app, _ = id_app(make_app)
    made = app.test_client().get("/rid", headers={"X-Request-ID": incoming}).data.decode()
    assert HEX_32.fullmatch(made)
    [doc] = stored(app, mongo)
    assert doc["request_id"] == made


def test_two_incoming_headers_are_joined_and_so_replaced(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app, _ = id_app(make_app)
    response = app.test_client().get("/rid", headers=[("X-Request-ID", "a"), ("X-Request-ID", "b")])
    assert HEX_32.fullmatch(response.get_data(as_text=True))


def test_custom_header_names_and_echo(make_app: Callable[..., Flask], mongo: Any) -> None:
    app, _ = id_app(
        make_app,
        TRACKING_REQUEST_ID_HEADER="X-Correlation-ID",
        TRACKING_REQUEST_ID_RESPONSE_HEADER="X-Trace",
    )
    client = app.test_client()
    response = client.get("/rid", headers={"X-Correlation-ID": "corr-1", "X-Request-ID": "no"})
    assert response.data == b"corr-1"
    assert response.headers["X-Trace"] == "corr-1"
    missing = client.get("/no-such-page", buffered=True)
    assert HEX_32.fullmatch(missing.headers["X-Trace"])
    docs = stored(app, mongo)
    assert [doc["request_id"] for doc in docs] == ["corr-1", missing.headers["X-Trace"]]
    assert ["X-Trace", "corr-1"] in docs[0]["response_headers"]  # stored as sent


def test_the_request_id_environ_key_of_an_app(make_app: Callable[..., Flask]) -> None:
    app, _ = id_app(make_app, TRACKING_REQUEST_ID_HEADER="X-Correlation-ID")
    tracking = app.extensions["tracking"]
    assert tracking.request_id_environ_key(app) == "HTTP_X_CORRELATION_ID"
    assert tracking.request_id_environ_key(Flask("untracked")) is None
    other, _ = id_app(make_app, TRACKING_REQUEST_ID_HEADER=None)
    assert other.extensions["tracking"].request_id_environ_key(other) is None


def test_no_incoming_header_always_makes_a_new_id(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app, _ = id_app(make_app, TRACKING_REQUEST_ID_HEADER=None)
    made = app.test_client().get("/rid", headers={"X-Request-ID": "ignored"}).data.decode()
    assert HEX_32.fullmatch(made)


def test_echo_keeps_a_header_the_app_set(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app(TRACKING_REQUEST_ID_RESPONSE_HEADER="X-Request-ID")

    @app.get("/own-id")
    def own_id() -> Response:
        return Response("own", headers={"x-request-id": "set-by-app"})

    response = app.test_client().get("/own-id", headers={"X-Request-ID": "incoming"})
    assert response.headers.getlist("X-Request-ID") == ["set-by-app"]
    [doc] = stored(app, mongo)
    assert doc["request_id"] == "incoming"


def test_echo_on_errors_and_streams(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app(testing=False, TRACKING_REQUEST_ID_RESPONSE_HEADER="X-Request-ID")
    client = app.test_client()
    for path in ("/boom", "/stream", "/file"):
        response = client.get(path, headers={"X-Request-ID": f"id{path.replace('/', '-')}"})
        assert response.headers["X-Request-ID"] == f"id{path.replace('/', '-')}", path
        response.close()
    assert [doc["request_id"] for doc in stored(app, mongo)] == ["id-boom", "id-stream", "id-file"]


def test_odd_headers_from_an_inner_app_are_passed_on_and_counted() -> None:
    from flask_tracking.capture import TrackingMiddleware
    from flask_tracking.config import load_config
    from flask_tracking.policy import Policy

    class OddHeaders(list):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            raise RuntimeError("cannot iterate")

    odd = OddHeaders()
    errors: list[Any] = []
    sent: list[Any] = []

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", odd)
        return [b"ok"]

    middleware = TrackingMiddleware(
        inner,
        Policy(load_config({})),
        100,
        finish=lambda state: None,
        on_error=lambda: errors.append(True),
        request_id_response_header="X-Request-ID",
    )
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": None}
    assert middleware(environ, lambda status, headers, *args: sent.append(headers)) == [b"ok"]
    assert sent == [odd] and sent[0] is odd
    assert errors == [True]


@pytest.mark.parametrize(
    ("config", "on_request_thread"),
    [
        ({}, False),
        ({"TRACKING_REQUEST_ID_RESPONSE_HEADER": "X-Request-ID"}, True),
        ({"TRACKING_SAMPLE_RATE": 0.999999}, True),
    ],
)
def test_the_id_is_made_where_it_is_first_needed(
    make_app: Callable[..., Flask],
    mongo: Any,
    monkeypatch: pytest.MonkeyPatch,
    config: dict[str, Any],
    on_request_thread: bool,
) -> None:
    """Nothing on the request thread needs the id by default: the writer makes it."""
    from flask_tracking import ids

    threads: list[int] = []
    real_new_request_id = ids.new_request_id

    def recording_new_request_id() -> str:
        threads.append(threading.get_ident())
        return real_new_request_id()

    monkeypatch.setattr(ids, "new_request_id", recording_new_request_id)
    app = make_app(**config)
    response = app.test_client().get("/hello")
    [doc] = stored(app, mongo)
    assert threads and (threads[0] == threading.get_ident()) is on_request_thread
    assert len(threads) == 1
    assert HEX_32.fullmatch(doc["request_id"])
    if on_request_thread and "TRACKING_REQUEST_ID_RESPONSE_HEADER" in config:
        assert response.headers["X-Request-ID"] == doc["request_id"]


# ---------------------------------------------------------------------------- record ids


def test_new_object_ids_are_unique_current_and_counted() -> None:
    from datetime import datetime, timedelta, timezone

    made = [new_object_id() for _ in range(2000)]
    assert len(set(made)) == 2000
    now = datetime.now(timezone.utc)
    assert all(now - oid.generation_time < timedelta(seconds=2) for oid in made)
    randoms = {oid.binary[4:9] for oid in made}
    assert len(randoms) == 1  # one process: the same five random bytes
    counters = [int.from_bytes(oid.binary[9:], "big") for oid in made]
    assert all((b - a) % (1 << 24) == 1 for a, b in zip(counters, counters[1:]))


def test_new_object_ids_behave_as_the_drivers_own() -> None:
    made = new_object_id()
    same = ObjectId(made.binary)
    assert made == same and hash(made) == hash(same) and str(made) == str(same)
    assert ObjectId(str(made)) == made and repr(made) == f"ObjectId('{made}')"
    assert pickle.loads(pickle.dumps(made)) == made and copy.deepcopy(made) == made
    assert bson.decode(bson.encode({"_id": made}))["_id"] == made
    assert made < new_object_id()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_object_ids_of_its_own() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send one id to the parent, then leave at once
        os.write(write, new_object_id().binary)
        os._exit(0)
    os.close(write)
    child = os.read(read, 12)
    os.close(read)
    os.waitpid(pid, 0)
    assert child[4:9] != new_object_id().binary[4:9]
