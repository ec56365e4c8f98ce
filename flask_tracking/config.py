"""Every ``TRACKING_*`` setting: its default, its unit, and its validation.

:data:`DEFAULTS` is the single source of truth. :func:`load_config` applies it to a Flask
``app.config`` with ``setdefault`` and compiles the result once, at ``init_app``, into a frozen
:class:`TrackingConfig`; a bad value raises :class:`ValueError` there, never on a request.
"""

from __future__ import annotations

import difflib
import math
import re
import warnings
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from .fields import ALWAYS_STORED_FIELDS, FIELDS
from .ids import environ_key
from .indexes import INDEX_NAMES
from .redact import (
    DEFAULT_REDACT_FIELDS,
    DEFAULT_REDACT_HEADERS,
    IP_HEADERS,
    Redactor,
    unmatchable_fields,
)
from .storage import MAX_EXPIRE_SECONDS, MAX_MEASUREMENT_BYTES, MODES, RESERVED_COLLECTION_NAMES

MiB = 1024 * 1024
#: Seconds. The longest the writer's durations may be (one day): beyond it a setting is surely a
#: mistake, and a thread cannot wait much longer (``threading.TIMEOUT_MAX``, 49 days on Windows).
MAX_WAIT_SECONDS = 86400
#: Seconds. The longest live-view interval: a browser's setTimeout runs a longer delay than
#: 2**31 - 1 ms (24.8 days) at once.
MAX_LIVE_INTERVAL_SECONDS = 2_147_483
#: The windows TRACKING_DASHBOARD_DEFAULT_WINDOW may name (``flask_tracking.dashboard.windows``).
DASHBOARD_WINDOWS = ("1h", "24h", "7d")
#: A dashboard URL prefix: one or more path segments, such as ``/tracking`` or ``/ops/traffic``.
_URL_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)+/?")
#: An HTTP header name as this library accepts it in settings (an RFC 9110 token, narrowed).
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")

DEFAULTS: dict[str, Any] = {
    #: Path regexes (``re.match`` against the path, as the original). A matching request is not
    #: recorded at all and costs next to nothing.
    "TRACKING_EXCLUDE": [],
    #: Path regexes; when any is set, only requests whose path matches one of them are recorded
    #: (TRACKING_EXCLUDE still wins). Empty: every path.
    "TRACKING_INCLUDE": [],
    #: Path regexes; matching requests are recorded without request and response bodies.
    "TRACKING_EXCLUDE_BODY": [],
    #: Bytes kept of each request and of each response body. ``0`` keeps no body.
    "TRACKING_MAX_BODY_LENGTH": 65536,
    #: HTTP methods (any case) that are not recorded.
    "TRACKING_EXCLUDE_METHODS": [],
    #: Status codes not recorded, unless the request took at least TRACKING_MIN_EXECUTION_TIME.
    "TRACKING_EXCLUDE_STATUS_CODES": [],
    #: Milliseconds. A response whose status is excluded is still recorded when it took at least
    #: this long (slow errors are kept). ``0`` means excluded statuses are never recorded.
    "TRACKING_MIN_EXECUTION_TIME": 0,
    #: How records are stored (``flask_tracking.storage``): ``"capped"`` (a capped collection
    #: of TRACKING_TABLE_SIZE bytes, one server), ``"ttl"`` (a plain collection whose TTL index
    #: deletes records older than TRACKING_RETENTION_HOURS; shardable) or ``"timeseries"`` (a
    #: MongoDB 5.0+ time-series collection expiring after TRACKING_RETENTION_HOURS).
    "TRACKING_STORAGE": "capped",
    #: Hours. Age after which the server deletes a record, in the ``ttl`` and ``timeseries``
    #: storage modes (unused by ``capped``).
    "TRACKING_RETENTION_HOURS": 168,
    #: Bytes. Size of the capped collection, used when the writer creates it.
    "TRACKING_TABLE_SIZE": 100 * MiB,
    #: Documents. Document limit of the capped collection, used when the writer creates it.
    "TRACKING_MAX_DOCUMENTS": 1_000_000,
    #: The reading indexes (``flask_tracking.indexes``) the writer creates on the tracking
    #: collection when it sets it up: every one by default, none with ``[]``. Each costs every
    #: stored record a B-tree insert; leave out those you do not query, and drop them
    #: (``db.tracking.dropIndex("tracking_ip")``), and they stay dropped. In the ``ttl``
    #: storage mode ``tracking_date_created`` is the TTL index, made whatever this says.
    "TRACKING_INDEXES": list(INDEX_NAMES),
    #: The MongoEngine connection alias the writer inserts through.
    "TRACKING_DB_ALIAS": "default",
    #: A ``mongodb://`` or ``mongodb+srv://`` URI. When set and TRACKING_DB_ALIAS is not connected
    #: yet, init_app connects it to this URI with short timeouts (a URI pymongo cannot parse
    #: raises ValueError there). When unset, connect the alias yourself (``mongoengine.connect``).
    #: A ``mongodb+srv://`` name is looked up in DNS when the writer first writes, not in
    #: init_app: DNS down or slow never stops the app from starting, and a failed lookup is
    #: retried like a server that is down (with pymongo 4.12.1 or later; older versions look
    #: it up in init_app, and 4.12.0 drops the records of a failed lookup).
    "TRACKING_MONGODB_URI": None,
    #: Write per-minute rollups (counts, errors, latency histogram per endpoint and method) of
    #: every request that passes the path, method and view rules, kept or not by sampling or
    #: the outcome rules. The reports of ``flask_tracking.rollups.Rollup`` read them.
    "TRACKING_ROLLUPS": True,
    #: The collection the rollups are written to (``Rollup`` reads ``tracking_rollups``): a
    #: MongoDB collection name, without ``$`` or NUL, not starting with ``system.``, and with no
    #: empty part between dots; not one of the records' (``tracking``,
    #: ``tracking_before_migration``) nor ``tracking_migrations``.
    "TRACKING_ROLLUP_COLLECTION": "tracking_rollups",
    #: Days. Rollups older than this are deleted by a TTL index on their ``minute``.
    "TRACKING_ROLLUP_RETENTION_DAYS": 90,
    #: Records. The writer's queue refuses (and counts) records beyond this many pending.
    "TRACKING_QUEUE_MAX_RECORDS": 10_000,
    #: Bytes. The writer's queue refuses (and counts) records beyond this size pending; a record
    #: counts every byte it holds (all headers, path, query string, bodies, custom data) plus
    #: what Python adds to each string.
    "TRACKING_QUEUE_MAX_BYTES": 64 * MiB,
    #: Records per ``insert_many``.
    "TRACKING_BATCH_MAX_RECORDS": 500,
    #: Seconds, from 0.001 to 86400 (one day). The writer writes at least this often when records
    #: are pending.
    "TRACKING_FLUSH_INTERVAL_SECONDS": 1.0,
    #: Seconds, from 0.001 to 86400 (one day). One insert may take at most this long
    #: (``pymongo.timeout``), whatever the client's own socket and server-selection timeouts are.
    "TRACKING_WRITE_TIMEOUT_SECONDS": 5.0,
    #: Seconds, from 0.001 to 86400 (one day), and at most TRACKING_RETRY_MAX_BACKOFF_SECONDS.
    #: First wait before retrying a batch after a network error; it doubles per failure.
    "TRACKING_RETRY_INITIAL_BACKOFF_SECONDS": 0.5,
    #: Seconds, from 0.001 to 86400 (one day). Longest wait between retries while MongoDB is
    #: unreachable.
    "TRACKING_RETRY_MAX_BACKOFF_SECONDS": 30.0,
    #: Seconds, from 0 to 86400 (one day). At interpreter exit, pending records are written for at
    #: most this long.
    "TRACKING_SHUTDOWN_TIMEOUT_SECONDS": 5.0,
    #: Bytes. No stored document is larger: custom data, then headers, then long text fields,
    #: then bodies are cut to fit (a record that still does not fit is dropped and counted).
    "TRACKING_MAX_RECORD_BYTES": 2 * MiB,
    #: Bytes. Custom data (``request._tracking_data``) beyond this estimated size is cut.
    "TRACKING_MAX_CUSTOM_DATA_BYTES": 256 * 1024,
    #: Scrub secrets (headers, query, bodies, custom data) before storing. False stores verbatim.
    "TRACKING_REDACT": True,
    #: Extra header names to filter: a list adds to ``redact.DEFAULT_REDACT_HEADERS``;
    #: ``{"replace": [...]}`` replaces them.
    "TRACKING_REDACT_HEADERS": [],
    #: Extra field-name terms to filter in bodies, query strings and custom data: a list adds to
    #: ``redact.DEFAULT_REDACT_FIELDS``; ``{"replace": [...]}`` replaces them.
    "TRACKING_REDACT_FIELDS": [],
    #: Store ``ip`` with the last IPv4 octet (or the last 80 bits of IPv6) zeroed, and filter
    #: the headers that carry client addresses (X-Forwarded-For, X-Real-IP, Forwarded).
    "TRACKING_ANONYMIZE_IP": False,
    #: ``"include"``: every view is tracked unless excluded (``@tracking.exclude``,
    #: ``tracking.exclude_blueprint``). ``"exclude"``: only views marked ``@tracking.include`` or
    #: in a blueprint given to ``tracking.include_blueprint`` are. Requests that match no view
    #: (404, 405) follow the path rules only.
    "TRACKING_DEFAULT": "include",
    #: Requests carrying ``DNT: 1`` (Do Not Track) or ``Sec-GPC: 1`` (Global Privacy Control)
    #: are not recorded at all.
    "TRACKING_HONOR_DNT": False,
    #: Record only requests that raised an unhandled exception (``exception`` is set).
    "TRACKING_ONLY_ERRORS": False,
    #: Do not record requests that raised an unhandled exception.
    "TRACKING_SKIP_ERRORS": False,
    #: Field names (see ``fields.FIELDS``): store only these, plus ``_id``, ``date_created`` and
    #: ``sample_rate``, which are always stored. None stores every field.
    "TRACKING_FIELDS": None,
    #: Field names (see ``fields.FIELDS``) not to store; every other field is stored. Not
    #: together with TRACKING_FIELDS.
    "TRACKING_EXCLUDE_FIELDS": [],
    #: Fraction (0 to 1) of ordinary requests stored, decided by a hash of the request id.
    #: Errors (status >= 500 or an exception) and slow requests are always stored.
    "TRACKING_SAMPLE_RATE": 1.0,
    #: Milliseconds. With sampling, requests whose execution_time is above this are always
    #: stored. None: only errors are.
    "TRACKING_SAMPLE_KEEP_SLOWER_THAN_MS": 1000.0,
    #: Request header whose value (at most 128 characters of ``A-Z a-z 0-9 . _ : @ + = / -``)
    #: becomes the request id; otherwise, or when None, a new id (32 hex digits) is made.
    "TRACKING_REQUEST_ID_HEADER": "X-Request-ID",
    #: Response header that echoes the request id, e.g. ``"X-Request-ID"`` (not added when the
    #: app set it). None: responses stay exactly as the app made them.
    "TRACKING_REQUEST_ID_RESPONSE_HEADER": None,
    #: Record the database work of each request in its ``db`` sub-document: the MongoDB
    #: commands (pymongo's command monitoring) and, when the app uses SQLAlchemy, the SQL
    #: statements it ran, with counts, time and query shapes (never values). False: nothing is
    #: watched and requests pay nothing for it.
    "TRACKING_DB_ACTIVITY": True,
    #: Times. A query shape run this many times or more in one request is listed in
    #: ``db.repeated`` (the N+1 pattern).
    "TRACKING_DB_REPEAT_THRESHOLD": 5,
    #: Register the dashboard blueprint (``flask_tracking.dashboard``) at init_app. Until an
    #: access check is registered (``@tracking.dashboard_access``, before or after init_app) it
    #: answers 403 saying how to register one, unless TRACKING_DASHBOARD_PUBLIC is True.
    "TRACKING_DASHBOARD": False,
    #: URL prefix of the dashboard: its pages, live feed and static files are under it.
    "TRACKING_DASHBOARD_URL_PREFIX": "/tracking",
    #: Open the dashboard to anybody who can reach the app, without an access check: only for
    #: apps that are private already (a local tool, behind an authenticating proxy).
    "TRACKING_DASHBOARD_PUBLIC": False,
    #: The dashboard's window when none is chosen: ``"1h"``, ``"24h"`` or ``"7d"``.
    "TRACKING_DASHBOARD_DEFAULT_WINDOW": "24h",
    #: Seconds, from 0.1 to 2147483 (24.8 days, the longest delay a browser's timer takes). How
    #: often the dashboard's live view asks for new requests.
    "TRACKING_DASHBOARD_LIVE_INTERVAL_SECONDS": 2.0,
}


@dataclass(frozen=True)
class TrackingConfig:
    """The validated, compiled settings of one app (built once by :func:`load_config`)."""

    exclude: tuple[re.Pattern[str], ...]
    exclude_body: tuple[re.Pattern[str], ...]
    max_body_length: int
    exclude_methods: frozenset[str]
    exclude_status_codes: frozenset[int]
    min_execution_time_ms: float
    storage: str
    #: TRACKING_RETENTION_HOURS in whole seconds (at least 1).
    retention_seconds: int
    table_size_bytes: int
    max_documents: int
    #: The reading indexes the writer creates (TRACKING_INDEXES).
    indexes: tuple[str, ...]
    rollups: bool
    rollup_collection: str
    rollup_retention_days: int
    db_alias: str
    mongodb_uri: str | None
    queue_max_records: int
    queue_max_bytes: int
    batch_max_records: int
    flush_interval_seconds: float
    write_timeout_seconds: float
    retry_initial_backoff_seconds: float
    retry_max_backoff_seconds: float
    shutdown_timeout_seconds: float
    max_record_bytes: int
    max_custom_data_bytes: int
    redactor: Redactor | None
    anonymize_ip: bool
    include: tuple[re.Pattern[str], ...]
    track_by_default: bool
    honor_dnt: bool
    only_errors: bool
    skip_errors: bool
    #: The stored fields removed from every document (from TRACKING_FIELDS or
    #: TRACKING_EXCLUDE_FIELDS).
    omitted_fields: tuple[str, ...]
    sample_rate: float
    sample_keep_slower_than_ms: float | None
    request_id_header: str | None
    request_id_response_header: str | None
    dashboard: bool
    dashboard_url_prefix: str
    dashboard_public: bool
    dashboard_default_window: str
    dashboard_live_interval_seconds: float
    db_activity: bool
    db_repeat_threshold: int

    @property
    def request_id_environ_key(self) -> str | None:
        """The WSGI environ key of ``request_id_header`` (``HTTP_X_REQUEST_ID``), or None."""
        header = self.request_id_header
        return None if header is None else environ_key(header)


def _warn_about_unknown_keys(app_config: Mapping[str, Any]) -> None:
    """A UserWarning for each ``TRACKING_*`` key that is no setting (a typo is silently
    ignored otherwise), naming the closest known key."""
    for key in app_config:
        if isinstance(key, str) and key.startswith("TRACKING_") and key not in DEFAULTS:
            prefix = len("TRACKING_")  # compared without it: every key shares it
            closest = difflib.get_close_matches(key[prefix:], [k[prefix:] for k in DEFAULTS], n=1)
            hint = f"; did you mean TRACKING_{closest[0]}?" if closest else "."
            warnings.warn(
                f"flask_tracking: {key} is not a setting and is ignored{hint}",
                UserWarning,
                stacklevel=4,
            )


def load_config(app_config: MutableMapping[str, Any]) -> TrackingConfig:
    """Apply :data:`DEFAULTS` to ``app_config`` and return the validated settings.

    Raises :class:`ValueError` naming the key for any value of the wrong type or range.
    """
    _warn_about_unknown_keys(app_config)
    for key, value in DEFAULTS.items():
        app_config.setdefault(key, value.copy() if isinstance(value, list) else value)
    get = _Reader(app_config)
    max_body_length = get.integer("TRACKING_MAX_BODY_LENGTH", minimum=0)
    config = TrackingConfig(
        exclude=get.patterns("TRACKING_EXCLUDE"),
        exclude_body=get.patterns("TRACKING_EXCLUDE_BODY"),
        max_body_length=max_body_length,
        exclude_methods=frozenset(m.upper() for m in get.strings("TRACKING_EXCLUDE_METHODS")),
        exclude_status_codes=get.status_codes("TRACKING_EXCLUDE_STATUS_CODES"),
        min_execution_time_ms=get.number("TRACKING_MIN_EXECUTION_TIME", minimum=0),
        storage=get.choice("TRACKING_STORAGE", MODES),
        retention_seconds=_retention_seconds(get),
        table_size_bytes=get.integer("TRACKING_TABLE_SIZE", minimum=4096),
        max_documents=get.integer("TRACKING_MAX_DOCUMENTS", minimum=1, maximum=2**31 - 1),
        indexes=get.known_names("TRACKING_INDEXES", INDEX_NAMES, "reading indexes"),
        rollups=get.flag("TRACKING_ROLLUPS"),
        rollup_collection=get.collection_name(
            "TRACKING_ROLLUP_COLLECTION", RESERVED_COLLECTION_NAMES
        ),
        rollup_retention_days=get.integer(
            "TRACKING_ROLLUP_RETENTION_DAYS", minimum=1, maximum=2147483647 // 86400
        ),
        db_alias=get.text("TRACKING_DB_ALIAS"),
        mongodb_uri=get.optional_mongodb_uri("TRACKING_MONGODB_URI"),
        queue_max_records=get.integer("TRACKING_QUEUE_MAX_RECORDS", minimum=1),
        queue_max_bytes=get.integer("TRACKING_QUEUE_MAX_BYTES", minimum=1),
        batch_max_records=get.integer("TRACKING_BATCH_MAX_RECORDS", minimum=1),
        flush_interval_seconds=get.seconds("TRACKING_FLUSH_INTERVAL_SECONDS", minimum=0.001),
        write_timeout_seconds=get.seconds("TRACKING_WRITE_TIMEOUT_SECONDS", minimum=0.001),
        retry_initial_backoff_seconds=get.seconds(
            "TRACKING_RETRY_INITIAL_BACKOFF_SECONDS", minimum=0.001
        ),
        retry_max_backoff_seconds=get.seconds("TRACKING_RETRY_MAX_BACKOFF_SECONDS", minimum=0.001),
        shutdown_timeout_seconds=get.seconds("TRACKING_SHUTDOWN_TIMEOUT_SECONDS", minimum=0),
        max_record_bytes=get.integer(
            "TRACKING_MAX_RECORD_BYTES", minimum=64 * 1024, maximum=16 * MiB - 64 * 1024
        ),
        max_custom_data_bytes=get.integer("TRACKING_MAX_CUSTOM_DATA_BYTES", minimum=0),
        redactor=_redactor(get),
        anonymize_ip=get.flag("TRACKING_ANONYMIZE_IP"),
        include=get.patterns("TRACKING_INCLUDE"),
        track_by_default=get.choice("TRACKING_DEFAULT", ("include", "exclude")) == "include",
        honor_dnt=get.flag("TRACKING_HONOR_DNT"),
        only_errors=get.flag("TRACKING_ONLY_ERRORS"),
        skip_errors=get.flag("TRACKING_SKIP_ERRORS"),
        omitted_fields=_omitted_fields(get),
        sample_rate=get.number("TRACKING_SAMPLE_RATE", minimum=0, maximum=1),
        sample_keep_slower_than_ms=get.optional_number(
            "TRACKING_SAMPLE_KEEP_SLOWER_THAN_MS", minimum=0
        ),
        request_id_header=get.optional_header_name("TRACKING_REQUEST_ID_HEADER"),
        request_id_response_header=get.optional_header_name("TRACKING_REQUEST_ID_RESPONSE_HEADER"),
        dashboard=get.flag("TRACKING_DASHBOARD"),
        dashboard_url_prefix=get.url_prefix("TRACKING_DASHBOARD_URL_PREFIX"),
        dashboard_public=get.flag("TRACKING_DASHBOARD_PUBLIC"),
        dashboard_default_window=get.choice("TRACKING_DASHBOARD_DEFAULT_WINDOW", DASHBOARD_WINDOWS),
        dashboard_live_interval_seconds=get.number(
            "TRACKING_DASHBOARD_LIVE_INTERVAL_SECONDS",
            minimum=0.1,
            maximum=MAX_LIVE_INTERVAL_SECONDS,
        ),
        db_activity=get.flag("TRACKING_DB_ACTIVITY"),
        db_repeat_threshold=get.integer("TRACKING_DB_REPEAT_THRESHOLD", minimum=2),
    )
    _check_relations(config)
    return config


def _retention_seconds(get: _Reader) -> int:
    limit = MAX_EXPIRE_SECONDS / 3600
    hours = get.number("TRACKING_RETENTION_HOURS", minimum=1 / 3600, maximum=limit)
    return max(1, round(hours * 3600))


def _redactor(get: _Reader) -> Redactor | None:
    headers = get.deny_list("TRACKING_REDACT_HEADERS", DEFAULT_REDACT_HEADERS)
    fields = get.deny_list("TRACKING_REDACT_FIELDS", DEFAULT_REDACT_FIELDS)
    unmatchable = unmatchable_fields(fields)
    if unmatchable:  # accepted, it would filter nothing
        raise ValueError(
            f"TRACKING_REDACT_FIELDS names {unmatchable[0]!r}, which no field name can match: "
            "names are matched by their ASCII letters and digits, and it has none."
        )
    anonymize = get.flag("TRACKING_ANONYMIZE_IP")
    if not get.flag("TRACKING_REDACT"):
        # Storing verbatim still must not keep the addresses anonymizing promised to cut.
        return Redactor(IP_HEADERS, ()) if anonymize else None
    return Redactor(headers + IP_HEADERS if anonymize else headers, fields)


def _omitted_fields(get: _Reader) -> tuple[str, ...]:
    """The stored fields to remove from every document, from TRACKING_FIELDS (keep only
    these) or TRACKING_EXCLUDE_FIELDS (remove these)."""
    excluded = get.field_names("TRACKING_EXCLUDE_FIELDS", allow_always_stored=False)
    if get.is_none("TRACKING_FIELDS"):
        return excluded
    if excluded:
        raise ValueError(
            "TRACKING_FIELDS and TRACKING_EXCLUDE_FIELDS cannot both be set: list the fields "
            "to store in TRACKING_FIELDS, or the fields to leave out in TRACKING_EXCLUDE_FIELDS."
        )
    kept = get.field_names("TRACKING_FIELDS", allow_always_stored=True)
    if not kept:
        raise ValueError(
            "TRACKING_FIELDS must name at least one field (None stores every field), got []."
        )
    return tuple(name for name in FIELDS if name not in kept and name not in ALWAYS_STORED_FIELDS)


def _check_relations(config: TrackingConfig) -> None:
    if config.batch_max_records > config.queue_max_records:
        raise ValueError(
            "TRACKING_BATCH_MAX_RECORDS must not exceed TRACKING_QUEUE_MAX_RECORDS "
            f"({config.batch_max_records} > {config.queue_max_records})."
        )
    if config.retry_initial_backoff_seconds > config.retry_max_backoff_seconds:
        raise ValueError(
            "TRACKING_RETRY_INITIAL_BACKOFF_SECONDS must not exceed "
            "TRACKING_RETRY_MAX_BACKOFF_SECONDS."
        )
    if config.only_errors and config.skip_errors:
        raise ValueError(
            "TRACKING_ONLY_ERRORS and TRACKING_SKIP_ERRORS cannot both be True: together they "
            "would record nothing."
        )
    if config.storage == "timeseries" and config.max_record_bytes > MAX_MEASUREMENT_BYTES:
        raise ValueError(
            "TRACKING_MAX_RECORD_BYTES must be at most 4 MiB with TRACKING_STORAGE = "
            f'"timeseries" (a time-series measurement is at most 4 MB), got '
            f"{config.max_record_bytes}."
        )
    if 2 * config.max_body_length + 64 * 1024 > config.max_record_bytes:
        raise ValueError(
            "TRACKING_MAX_RECORD_BYTES must leave room for two bodies of "
            f"TRACKING_MAX_BODY_LENGTH ({config.max_body_length} bytes) plus 64 KiB; "
            "raise it or lower TRACKING_MAX_BODY_LENGTH."
        )


class _Reader:
    """Reads one key of the app config, raising a ValueError that names the key."""

    def __init__(self, app_config: Mapping[str, Any]) -> None:
        self._config = app_config

    def _fail(self, key: str, expected: str) -> ValueError:
        return ValueError(f"{key} must be {expected}, got {self._config[key]!r}.")

    def integer(self, key: str, *, minimum: int, maximum: int | None = None) -> int:
        value = self._config[key]
        in_range = isinstance(value, int) and value >= minimum
        if isinstance(value, bool) or not in_range or (maximum is not None and value > maximum):
            bound = f" and at most {maximum}" if maximum is not None else ""
            raise self._fail(key, f"an integer of at least {minimum}{bound}")
        return int(value)

    def number(self, key: str, *, minimum: float, maximum: float | None = None) -> float:
        value = self._config[key]
        if (
            not _is_finite_number(value)
            or not value >= minimum
            or (maximum is not None and value > maximum)
        ):
            bound = f" and at most {maximum}" if maximum is not None else ""
            raise self._fail(key, f"a finite number of at least {minimum}{bound}")
        return float(value)

    def seconds(self, key: str, *, minimum: float) -> float:
        """A duration of the writer, at most :data:`MAX_WAIT_SECONDS`."""
        return self.number(key, minimum=minimum, maximum=MAX_WAIT_SECONDS)

    def optional_number(self, key: str, *, minimum: float) -> float | None:
        return None if self._config[key] is None else self.number(key, minimum=minimum)

    def is_none(self, key: str) -> bool:
        return self._config[key] is None

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self._config[key]
        if value not in choices:
            raise self._fail(key, " or ".join(repr(choice) for choice in choices))
        return str(value)

    def optional_header_name(self, key: str) -> str | None:
        value = self._config[key]
        if value is None:
            return None
        if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
            raise self._fail(key, "None or an HTTP header name (letters, digits, - and _)")
        return value

    def url_prefix(self, key: str) -> str:
        """A URL path of one or more segments, without its trailing slash."""
        value = self._config[key]
        if not isinstance(value, str) or not _URL_PREFIX.fullmatch(value):
            raise self._fail(key, 'a URL path such as "/tracking"')
        return value.rstrip("/")

    def known_names(self, key: str, known: tuple[str, ...], what: str) -> tuple[str, ...]:
        """A list of names, each one of ``known``: the ``what`` (such as "stored fields")."""
        names = self.strings(key)
        unknown = [name for name in names if name not in known]
        if unknown:
            kind = what.split()[-1]
            raise ValueError(
                f"{key} names unknown {kind} {', '.join(map(repr, unknown))}; the {what} "
                f"are {', '.join(known)}."
            )
        return names

    def field_names(self, key: str, *, allow_always_stored: bool) -> tuple[str, ...]:
        """A list of stored field names (``fields.FIELDS``), each checked."""
        names = self.known_names(key, FIELDS, "stored fields")
        if not allow_always_stored:
            fixed = [name for name in names if name in ALWAYS_STORED_FIELDS]
            if fixed:
                raise ValueError(
                    f"{key} cannot leave out {', '.join(map(repr, fixed))}: "
                    f"{', '.join(ALWAYS_STORED_FIELDS)} are always stored."
                )
        return names

    def text(self, key: str) -> str:
        value = self._config[key]
        if not isinstance(value, str) or not value:
            raise self._fail(key, "a non-empty string")
        return value

    def flag(self, key: str) -> bool:
        value = self._config[key]
        if not isinstance(value, bool):
            raise self._fail(key, "True or False")
        return value

    def deny_list(self, key: str, defaults: tuple[str, ...]) -> tuple[str, ...]:
        """A list extends ``defaults``; ``{"replace": [...]}`` replaces them."""
        value = self._config[key]
        if isinstance(value, Mapping):
            if set(value) != {"replace"}:
                raise self._fail(key, 'a list of names, or {"replace": [names]}')
            return self._names(key, value["replace"])
        return defaults + self._names(key, value)

    def _names(self, key: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
            raise self._fail(key, 'a list of names, or {"replace": [names]}')
        if not all(isinstance(item, str) and item for item in value):
            raise self._fail(key, 'a list of names, or {"replace": [names]}')
        return tuple(value)

    def optional_text(self, key: str) -> str | None:
        return None if self._config[key] is None else self.text(key)

    def collection_name(self, key: str, taken: Sequence[str]) -> str:
        """A name MongoDB takes for a collection (else every write to it would fail), other
        than those ``taken`` by other collections of the package in the same database."""
        value = self.text(key)
        if "$" in value or "\0" in value or value.startswith("system.") or "" in value.split("."):
            raise self._fail(
                key, "a collection name (no $ or NUL, not system.*, no empty part between dots)"
            )
        if value in taken:
            names = ", ".join(map(repr, taken))
            raise self._fail(
                key, f"a collection name other than {names} (the records' and migrations')"
            )
        return value

    def optional_mongodb_uri(self, key: str) -> str | None:
        """None, or a string in one of the schemes pymongo takes (it parses the rest)."""
        value = self.optional_text(key)
        if value is not None and not value.startswith(("mongodb://", "mongodb+srv://")):
            raise self._fail(key, 'None or a URI starting with "mongodb://" or "mongodb+srv://"')
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._config[key]
        if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
            raise self._fail(key, "a list of strings")
        if not all(isinstance(item, str) for item in value):
            raise self._fail(key, "a list of strings")
        return tuple(value)

    def patterns(self, key: str) -> tuple[re.Pattern[str], ...]:
        return tuple(_compile(key, source) for source in self.strings(key))

    def status_codes(self, key: str) -> frozenset[int]:
        value = self._config[key]
        if not isinstance(value, (list, tuple, set, frozenset)) or not all(
            isinstance(code, int) and not isinstance(code, bool) and 100 <= code <= 599
            for code in value
        ):
            raise self._fail(key, "a list of HTTP status codes (integers 100-599)")
        return frozenset(value)


def _is_finite_number(value: object) -> bool:
    """True for an int or float that a float can hold (not a bool, NaN, infinity or 10**400)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond a float's range
        return False


def _compile(key: str, source: str) -> re.Pattern[str]:
    try:
        return re.compile(source)
    except re.error as error:
        raise ValueError(f"{key} holds an invalid regular expression {source!r}: {error}") from None
