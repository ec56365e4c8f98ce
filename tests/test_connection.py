"""flask_tracking.connection: TRACKING_MONGODB_URI's alias (registered, its client made at
first use, once per process; mongodb+srv:// names looked up then) and the writer's way to
its database (one warning when the app connects the alias elsewhere)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import mongoengine
import pytest
from flask import Flask

from flask_tracking import Tracking

from .conftest import FAST_WRITER, add_routes


def test_mongodb_uri_connects_the_alias(mongo: Any) -> None:
    from mongoengine.connection import _connection_settings

    app = Flask("uri")
    app.config.update(
        TESTING=True,
        TRACKING_DB_ALIAS="from_uri",
        TRACKING_MONGODB_URI="mongodb://127.0.0.1:9/tracked",
        **FAST_WRITER,
    )
    try:
        Tracking(app)
        settings = _connection_settings["from_uri"]
        assert settings["host"] == ["mongodb://127.0.0.1:9/tracked"]
        assert settings["serverSelectionTimeoutMS"] == 2000
        app.extensions["tracking"]._apps[app].writer.shutdown(0.2)
    finally:
        mongoengine.disconnect("from_uri")


@pytest.mark.parametrize(
    ("host", "database", "warned"),
    [
        ("mongodb://localhost", "elsewhere", True),
        ("mongodb://127.0.0.1:9", "other", True),  # the same server, another database
        ("mongodb://app:other@127.0.0.1:9/tracked?w=1", "tracked", False),  # the same
    ],
)
def test_the_alias_of_the_uri_connected_again_by_the_app_is_written_to_with_a_warning(
    caplog: pytest.LogCaptureFixture, host: str, database: str, warned: bool
) -> None:
    """TRACKING_MONGODB_URI only registers the alias; MongoEngine's connect() replaces the
    settings of an alias whose client is not made yet without a word (and refuses different
    ones once it is). The records then go where the app's connection points, as the
    documents, the CLI and the dashboard read: when that is another server or database, the
    writer says so once, naming both, without the URI's password."""
    import mongomock

    caplog.set_level(logging.WARNING, "flask_tracking")
    app = Flask("reconnected")
    app.config.update(
        TESTING=True,
        TRACKING_DB_ALIAS="reconnected",
        TRACKING_MONGODB_URI="mongodb://tracker:s3cret@127.0.0.1:9/tracked?authSource=admin",
        **FAST_WRITER,
    )
    add_routes(app)
    try:
        tracking = Tracking(app)
        mongoengine.connect(
            database,
            alias="reconnected",
            host=host,
            mongo_client_class=mongomock.MongoClient,
            uuidRepresentation="standard",
        )
        app.test_client().get("/hello")
        assert tracking.flush(5)
        assert mongoengine.get_db("reconnected")["tracking"].count_documents({}) == 1
        messages = [r.getMessage() for r in caplog.records if "connected again" in r.getMessage()]
        if warned:
            [message] = messages  # once, though the rollups' writes ask for the database too
            assert "'reconnected'" in message
            assert "mongodb://127.0.0.1:9 (database 'tracked')" in message
            assert f"{host} (database {database!r})" in message
            assert "s3cret" not in message
        else:
            assert messages == []
        tracking._apps[app].writer.shutdown(0.2)
    finally:
        mongoengine.disconnect("reconnected")


@pytest.mark.parametrize(
    "uri", ["mongodb://127.0.0.1:9/tracked", "mongodb+srv://cluster0.example.com/tracked"]
)
def test_the_alias_of_the_uri_has_one_client_however_many_threads_first_use_it(
    mongo: Any, monkeypatch: pytest.MonkeyPatch, uri: str
) -> None:
    """MongoEngine makes the client of a registered alias at its first use, unlocked: the
    writer's first batch and the requests' first queries (the app's documents may share the
    alias) may all get there at once. They must share one client, not each make and keep one
    of their own (its pool and monitor threads; the srv one not even opened first)."""
    import pymongo
    from mongoengine.connection import get_db

    made: list[Any] = []
    both_making = threading.Barrier(2, timeout=2)
    real_init = pymongo.MongoClient.__init__

    def slow_init(client: Any, *args: Any, **kwargs: Any) -> None:
        made.append(client)
        real_init(client, *args, **kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_making.wait()  # both threads are making a client now

    app = Flask("one_client")
    app.config.update(
        TESTING=True, TRACKING_DB_ALIAS="one_client", TRACKING_MONGODB_URI=uri, **FAST_WRITER
    )
    try:
        if uri.startswith("mongodb+srv://"):
            monkeypatch.setattr(
                "flask_tracking.connection.srv_database_name", lambda uri, options: "tracked"
            )
        Tracking(app)
        app.extensions["tracking"]._apps[app].writer.shutdown(0.2)
        monkeypatch.setattr(pymongo.MongoClient, "__init__", slow_init)
        databases: list[Any] = []
        threads = [
            threading.Thread(target=lambda: databases.append(get_db("one_client")))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
        assert len(databases) == 2
        assert databases[0].client is databases[1].client
    finally:
        mongoengine.disconnect("one_client")
        for client in made:
            client.close()


@pytest.fixture(params=["silent", "nxdomain"])
def unreachable_dns(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """dnspython's resolver pointed at a local name server that never answers (each lookup
    waits for its whole lifetime) or that answers every query "no such name"."""
    import socket

    import dns.message
    import dns.rcode
    import dns.resolver

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    request.addfinalizer(server.close)

    def answer_nxdomain() -> None:
        while True:
            try:
                data, peer = server.recvfrom(4096)
            except OSError:  # closed: the test is over
                return
            response = dns.message.make_response(dns.message.from_wire(data))
            response.set_rcode(dns.rcode.NXDOMAIN)
            server.sendto(response.to_wire(), peer)

    if request.param == "nxdomain":
        threading.Thread(target=answer_nxdomain, daemon=True).start()
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.getsockname()[1]
    monkeypatch.setattr(dns.resolver, "default_resolver", resolver)
    return str(request.param)


def srv_app(alias: str) -> Flask:
    """An app (not tracked yet) whose TRACKING_DB_ALIAS ``alias`` is to be connected to a
    ``mongodb+srv://`` URI."""
    app = Flask(alias)
    app.config.update(
        TESTING=True,
        TRACKING_DB_ALIAS=alias,
        TRACKING_MONGODB_URI="mongodb+srv://cluster0.example.com/tracked?tls=false",
        **FAST_WRITER,
    )
    add_routes(app)
    return app


def test_an_srv_uri_is_not_looked_up_by_init_app(unreachable_dns: str) -> None:
    """A ``mongodb+srv://`` URI is resolved through DNS (SRV and TXT records). Looked up in
    init_app, an unreachable or failing name server stops the app from starting: blocked for
    20 s (pymongo's lookup lifetime), then a ValueError. The app must start at once and serve
    its requests; the records wait, queued, for the name to resolve (a failed lookup is
    retried like a server that is down, not counted as MongoDB refusing the records)."""
    app = srv_app("from_srv")
    try:
        started = time.perf_counter()
        tracking = Tracking(app)
        elapsed = time.perf_counter() - started
        assert elapsed < 1.0, f"init_app took {elapsed:.1f} s"
        assert app.test_client().get("/hello").data == b"Hello"
        assert tracking.flush(timeout=0.5) is False  # nxdomain: several lookups failed by now
        stats = tracking.stats(app)
        assert (stats["written"], stats["pending"], stats.get("dropped_db_error", 0)) == (0, 1, 0)
        assert mongoengine.get_db("from_srv").name == "tracked"
        tracking._apps[app].writer.shutdown(0.2)
    finally:
        mongoengine.disconnect("from_srv")


@pytest.mark.parametrize("unreachable_dns", ["nxdomain"], indirect=True)
def test_an_srv_alias_connected_again_elsewhere_is_written_to(unreachable_dns: str) -> None:
    """The app disconnects the alias init_app connected to a ``mongodb+srv://`` URI whose
    name does not resolve, and connects it to another server: the queued records go there,
    instead of waiting forever for the old name, which nothing uses any more."""
    import mongomock

    app = srv_app("srv_again")
    try:
        tracking = Tracking(app)
        app.test_client().get("/hello")
        assert tracking.flush(timeout=0.2) is False  # the name does not resolve
        mongoengine.disconnect("srv_again")
        mongoengine.connect(
            "elsewhere",
            alias="srv_again",
            host="mongodb://localhost",
            mongo_client_class=mongomock.MongoClient,
            uuidRepresentation="standard",
        )
        assert tracking.flush(timeout=5.0)
        assert mongoengine.get_db("srv_again")["tracking"].count_documents({}) == 1
        tracking._apps[app].writer.shutdown(0.2)
    finally:
        mongoengine.disconnect("srv_again")


@pytest.mark.usefixtures("unreachable_dns")
@pytest.mark.parametrize(
    "uri",
    [
        "mongodb+srv://cluster0.example.com:27017/tracked",  # no port in an SRV URI
        "mongodb+srv://a.example.com,b.example.com/tracked",  # one host only
        "mongodb+srv://cluster0.example.com/tracked?w=-1",
    ],
)
def test_an_srv_uri_pymongo_cannot_parse_still_raises_in_init_app(uri: str) -> None:
    app = Flask("srv")
    app.config.update(TESTING=True, TRACKING_DB_ALIAS="bad_srv", TRACKING_MONGODB_URI=uri)
    try:
        with pytest.raises(ValueError):
            Tracking(app)
    finally:
        mongoengine.disconnect("bad_srv")


@pytest.mark.parametrize(
    ("uri", "connected"),
    [
        ("mongodb://a:27017,b:27017/db?replicaSet=rs", {"host": "mongodb://b,A:27017/db"}),
        ("mongodb://u:pw@a/db", {"host": "mongodb://a:27017/db"}),
        ("mongodb://a:27018/db", {"host": "a:27018"}),
        ("mongodb://a/db", {"host": "a", "port": 27017}),
    ],
)
def test_the_alias_connected_again_to_the_same_servers_written_otherwise_is_not_warned_of(
    caplog: pytest.LogCaptureFixture, uri: str, connected: dict[str, Any]
) -> None:
    """The same servers and database as TRACKING_MONGODB_URI's, named otherwise (hosts in
    another order, default ports left out or written, in other letter cases, without the
    scheme), are no other destination: no warning."""
    from mongoengine.connection import register_connection

    from flask_tracking.connection import AliasClient, _warn_if_elsewhere

    caplog.set_level(logging.WARNING, "flask_tracking")
    alias_client = AliasClient(uri, {}, srv=uri.startswith("mongodb+srv://"))
    alias_client.database = "db"
    register_connection("same_servers", "db", uuidRepresentation="standard", **connected)
    try:
        _warn_if_elsewhere("same_servers", alias_client, "db")
    finally:
        mongoengine.disconnect("same_servers")
    assert [r.getMessage() for r in caplog.records] == []


def test_the_alias_connected_again_to_a_uri_and_another_port_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A port given beside a URI is the port of its hosts written without one: another
    server than TRACKING_MONGODB_URI's of the same name, warned of."""
    from mongoengine.connection import register_connection

    from flask_tracking.connection import AliasClient, _warn_if_elsewhere

    caplog.set_level(logging.WARNING, "flask_tracking")
    alias_client = AliasClient("mongodb://a/db", {}, srv=False)
    alias_client.database = "db"
    register_connection(
        "other_port", host="mongodb://a/db", port=27018, uuidRepresentation="standard"
    )
    try:
        _warn_if_elsewhere("other_port", alias_client, "db")
    finally:
        mongoengine.disconnect("other_port")
    [message] = [r.getMessage() for r in caplog.records if "connected again" in r.getMessage()]
    assert "to mongodb://a (port 27018) (database 'db')" in message
