"""The tracker's own connection: the MongoEngine alias of TRACKING_MONGODB_URI, and the
writer's way to the database of its alias.

:func:`connect_if_configured` only registers the alias (MongoEngine makes its client at first
use, in the process that serves requests: none is inherited across a fork or made before
gevent patches ``threading``); :func:`database_getter` is what the writer asks for the
database before it sets a collection up. No Flask.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pymongo import MongoClient
    from pymongo.database import Database

    from .config import TrackingConfig


def database_getter(alias: str, alias_client: AliasClient | None = None) -> Any:
    """The writer's way to the database of ``alias``, asked for before it sets a collection
    up. ``alias_client`` makes the client of the alias init_app connected to
    TRACKING_MONGODB_URI. For a ``mongodb+srv://`` URI, which looks its name up in DNS when
    first used, that client is opened first, and a failed lookup raised as
    :class:`~pymongo.errors.AutoReconnect` (pymongo raises a ConfigurationError), so the
    batch is retried as when the server is down, instead of being dropped, and no
    collection is set up by half (its indexes left out).

    The app may connect ``alias`` again: MongoEngine's ``connect()`` takes new settings for an
    alias whose client is not made yet (it refuses different ones afterwards), and after
    ``disconnect()`` at any time. That client is used as it is: the records go where the app's
    documents, the CLI and the dashboard read. When it names another server or database, one
    warning names both."""
    warned = False

    def get_database() -> Database[Any]:
        nonlocal warned
        from mongoengine.connection import get_db

        database: Database[Any] = get_db(alias)
        if alias_client is None:
            return database
        if database.client is alias_client.made:
            if alias_client.srv:
                _open(database.client)
        elif not warned:
            warned = True
            _warn_if_elsewhere(alias, alias_client, database.name)
        return database

    return get_database


def _warn_if_elsewhere(alias: str, alias_client: AliasClient, name: str) -> None:
    """Warn that the app connected ``alias`` again, now to database ``name`` of its settings'
    hosts, unless that is where TRACKING_MONGODB_URI points."""
    from mongoengine.connection import _connection_settings

    settings = _connection_settings.get(alias, {})
    port = settings.get("port") or 27017
    given = list(settings.get("host") or ())
    ours = _where([alias_client.uri], alias_client.database)
    theirs = _where([_with_port(host, port) for host in given], name)
    ours_servers = _servers([alias_client.uri])
    theirs_servers = _servers(given, port)
    if ours_servers is None or theirs_servers is None:
        elsewhere = theirs != ours  # as written
    else:
        elsewhere = name != alias_client.database or theirs_servers != ours_servers
    if elsewhere:
        logging.getLogger("flask_tracking").warning(
            "flask_tracking: the MongoEngine alias %r, which TRACKING_MONGODB_URI connected to "
            "%s, was connected again by the app, to %s: the records are written there. Leave "
            "TRACKING_MONGODB_URI out to write through the app's connection, or give the "
            "tracker an alias of its own (TRACKING_DB_ALIAS).",
            alias,
            ours,
            theirs,
        )


def _where(hosts: list[str], database: str) -> str:
    """``hosts`` (of a URI only the scheme and hosts: no user name, password, database or
    options) and ``database``."""
    return f"{', '.join(map(_shown, hosts))} (database {database!r})"


def _with_port(host: str, port: int) -> str:
    """A host of MongoEngine's settings (a URI, or a host name) as it is shown, with the
    ``port`` given beside it: after a host name, or after a URI when it is not the default."""
    if "://" not in host:
        return f"{host}:{port}"
    return f"{_shown(host)} (port {port})" if port != 27017 else host


def _shown(host: str) -> str:
    """Of a URI, only the scheme and hosts (no user name, password, database or options)."""
    return re.sub(r"^(\w[\w+.-]*://)?(?:[^@/]*@)?([^/?]*).*", r"\1\2", host)


def _servers(hosts: list[str], port: int = 27017) -> frozenset[tuple[str, Any]] | None:
    """The servers ``hosts`` name (URIs, or host names), ``port`` the port of those written
    without one, as pymongo reads them: names in lower case, ports filled in. A
    ``mongodb+srv://`` URI stands for the servers its name is looked up to: that name. None
    when pymongo cannot read them."""
    from pymongo.uri_parser import parse_uri, split_hosts

    servers: set[tuple[str, Any]] = set()
    try:
        for host in hosts:
            if host.startswith("mongodb+srv://"):
                servers.add((_shown(host).lower(), 0))
            elif "://" in host:
                servers.update(parse_uri(host, port, validate=False)["nodelist"])
            else:
                servers.update(split_hosts(host, port))
    except Exception:
        return None
    return frozenset(servers)


def _open(client: MongoClient[Any]) -> None:
    """Open ``client`` (reading ``primary`` does, without waiting for a server): for a
    ``mongodb+srv://`` URI that is when the name is looked up. A failed lookup raises
    :class:`~pymongo.errors.AutoReconnect`."""
    from dns.exception import DNSException
    from pymongo.errors import AutoReconnect, ConfigurationError

    try:
        client.primary  # noqa: B018
    except ConfigurationError as error:
        if isinstance(error.__cause__, DNSException):
            raise AutoReconnect(f"could not look the server up in DNS: {error}") from error
        raise


def connect_if_configured(config: TrackingConfig) -> AliasClient | None:
    """Connect TRACKING_DB_ALIAS to TRACKING_MONGODB_URI unless it is connected already;
    return what makes the alias's client then (see :class:`AliasClient`).

    The alias is registered only: MongoEngine makes its client when it is first used, which
    is in the process that serves requests, and the client opens no connection and starts no
    monitoring thread before either (``connect=False``). A master that loads the app before
    forking its workers (gunicorn ``--preload``) hands them no client, as pymongo requires of
    a client used after a fork; nor one whose locks were made before gevent's worker
    monkey-patched ``threading`` (``-k gevent``), on which its first use would block the
    whole worker. A ``mongodb+srv://`` name is looked up in DNS at that first use too (see
    :func:`srv_database_name`)."""
    uri = config.mongodb_uri
    if uri is None:
        return None
    from mongoengine.connection import _connection_settings, register_connection
    from pymongo.errors import ConfigurationError

    if config.db_alias in _connection_settings:
        return None
    options: dict[str, Any] = {
        "uuidRepresentation": "standard",
        "serverSelectionTimeoutMS": 2000,
        "connectTimeoutMS": 2000,  # also the DNS lookup's lifetime (mongodb+srv://)
        "socketTimeoutMS": int(config.write_timeout_seconds * 1000),
        "tz_aware": False,
        "connect": False,
    }
    srv = uri.startswith("mongodb+srv://")
    alias_client = AliasClient(uri, options, srv=srv)
    try:
        if srv:
            name = srv_database_name(uri, options)
            register_connection(config.db_alias, name, mongo_client_class=alias_client, **options)
        else:
            register_connection(
                config.db_alias, host=uri, mongo_client_class=alias_client, **options
            )
    except ConfigurationError as error:  # InvalidURI too: pymongo's reason, under the key
        raise ValueError(f"TRACKING_MONGODB_URI is not a usable MongoDB URI: {error}") from None
    alias_client.database = _connection_settings[config.db_alias]["name"]
    return alias_client


class AliasClient:
    """MongoEngine's ``mongo_client_class`` for the alias of TRACKING_MONGODB_URI (``uri``,
    whose database is ``database``): makes pymongo's client when the alias is first used (of a
    ``mongodb+srv://`` ``uri`` and ``options``, see :func:`srv_database_name`; of
    MongoEngine's settings otherwise), and remembers it in :attr:`made`. MongoEngine makes it
    without a lock: threads that use the alias first at once all get the client made first (no
    lock here either: one made before gevent patched ``threading`` would be a real one, which
    a greenlet waiting for it blocks the worker on)."""

    def __init__(self, uri: str, options: dict[str, Any], *, srv: bool) -> None:
        self.uri = uri
        self.options = options
        self.srv = srv
        self.database = ""
        self._made: dict[str, MongoClient[Any]] = {}

    @property
    def made(self) -> MongoClient[Any] | None:
        return self._made.get("client")

    def __call__(self, **settings: Any) -> MongoClient[Any]:
        from pymongo import MongoClient

        if self.srv:
            client: MongoClient[Any] = MongoClient(self.uri, **self.options)
        else:
            client = MongoClient(**settings)
        made = self._made.setdefault("client", client)  # atomic: the first one made wins
        if made is not client:
            client.close()  # never used: it opened nothing
        return made


def srv_database_name(uri: str, options: dict[str, Any]) -> str:
    """The name of the database of the ``mongodb+srv://`` ``uri``, checked with ``options``
    by a client that is closed at once (:class:`AliasClient` makes the one used).

    MongoEngine parses a URI it is given with pymongo's ``parse_uri``, which looks the SRV and
    TXT records up at once: with DNS failing, init_app would raise, and with a name server
    that does not answer it would wait 20 s first (the lookup's default lifetime), so the app
    would not start. pymongo's own client (4.12.1 and later) checks the URI without DNS and
    looks the name up on its first operation, on the writer thread, where a failed lookup is
    retried like a server that is down."""
    from mongoengine.connection import DEFAULT_DATABASE_NAME
    from pymongo import MongoClient
    from pymongo.uri_parser import split_options

    query = uri.partition("?")[2]
    if query:  # refused, as MongoEngine's parse refuses them; the client would only warn
        split_options(query, validate=True, warn=False)
    client: MongoClient[Any] = MongoClient(uri, **options)
    try:
        return client.get_default_database(DEFAULT_DATABASE_NAME).name
    finally:
        client.close()
