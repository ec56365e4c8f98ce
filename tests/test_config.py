"""Unit tests of flask_tracking.config: defaults, validation, cross-field checks, documentation."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
import warnings
from typing import Any

import pytest
from flask import Config, Flask

from flask_tracking import Tracking
from flask_tracking import config as config_module
from flask_tracking.config import DEFAULTS, MiB, TrackingConfig, load_config
from flask_tracking.indexes import INDEX_NAMES
from flask_tracking.policy import Policy


def load(**settings: Any) -> TrackingConfig:
    return load_config(dict(settings))


def assert_names_key(error: pytest.ExceptionInfo[ValueError], key: str) -> None:
    """The message starts with the key (so ``TRACKING_EXCLUDE`` is not confused with
    ``TRACKING_EXCLUDE_BODY``)."""
    message = str(error.value)
    assert message.startswith(f"{key} "), message


# --------------------------------------------------------------------------------------------
# Defaults
# --------------------------------------------------------------------------------------------


def test_defaults_are_applied_to_an_empty_config() -> None:
    app_config: dict[str, Any] = {}
    config = load_config(app_config)
    assert app_config == DEFAULTS
    assert config.exclude == ()
    assert config.exclude_body == ()
    assert config.max_body_length == 65536
    assert config.exclude_methods == frozenset()
    assert config.exclude_status_codes == frozenset()
    assert config.min_execution_time_ms == 0
    assert config.table_size_bytes == 100 * MiB
    assert config.max_documents == 1_000_000
    assert config.db_alias == "default"
    assert config.mongodb_uri is None
    assert config.queue_max_records == 10_000
    assert config.queue_max_bytes == 64 * MiB
    assert config.batch_max_records == 500
    assert config.flush_interval_seconds == 1.0
    assert config.write_timeout_seconds == 5.0
    assert config.retry_initial_backoff_seconds == 0.5
    assert config.retry_max_backoff_seconds == 30.0
    assert config.shutdown_timeout_seconds == 5.0
    assert config.max_record_bytes == 2 * MiB
    assert config.max_custom_data_bytes == 256 * 1024
    assert config.redactor is not None
    assert config.anonymize_ip is False


def test_existing_values_are_kept() -> None:
    app_config: dict[str, Any] = {
        "TRACKING_MAX_BODY_LENGTH": 10,
        "TRACKING_EXCLUDE": ["/static"],
        "TRACKING_DB_ALIAS": "tracking",
        "UNRELATED": object(),
    }
    before = dict(app_config)
    config = load_config(app_config)
    for key, value in before.items():
        assert app_config[key] is value
    assert config.max_body_length == 10
    assert [pattern.pattern for pattern in config.exclude] == ["/static"]
    assert config.db_alias == "tracking"
    assert app_config["TRACKING_EXCLUDE_BODY"] == []  # the others were filled in


def test_defaults_work_on_a_flask_config() -> None:
    app_config = Config(".")
    app_config["TRACKING_BATCH_MAX_RECORDS"] = 7
    config = load_config(app_config)
    assert config.batch_max_records == 7
    assert app_config["TRACKING_QUEUE_MAX_RECORDS"] == 10_000


def test_list_defaults_are_copies_not_shared() -> None:
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    load_config(first)
    load_config(second)
    list_keys = [key for key, value in DEFAULTS.items() if isinstance(value, list)]
    assert list_keys  # the test means something
    for key in list_keys:
        assert first[key] is not DEFAULTS[key]
        assert first[key] is not second[key]
    first["TRACKING_EXCLUDE"].append("/mutated")
    assert DEFAULTS["TRACKING_EXCLUDE"] == []
    assert second["TRACKING_EXCLUDE"] == []
    assert load_config({}).exclude == ()


def test_config_is_frozen() -> None:
    config = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_body_length = 1  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Validation of each key
# --------------------------------------------------------------------------------------------

NAN = float("nan")

INVALID: dict[str, list[Any]] = {
    "TRACKING_EXCLUDE": ["/static", ["("], [1], None, {"/a": 1}, 5],
    "TRACKING_EXCLUDE_BODY": ["/login", ["[a-"], [None], b"/x"],
    "TRACKING_MAX_BODY_LENGTH": [-1, True, False, 1.5, "10", None],
    "TRACKING_EXCLUDE_METHODS": ["GET", ["GET", 1], None, [b"GET"]],
    "TRACKING_EXCLUDE_STATUS_CODES": [[99], [600], ["404"], "404", 404, [True], [404.0], None],
    "TRACKING_MIN_EXECUTION_TIME": [-1, -0.5, True, "5", NAN, None],
    "TRACKING_TABLE_SIZE": [4095, -1, True, 1e9, "1000000"],
    "TRACKING_STORAGE": ["TTL", "plain", None, 1, ["ttl"]],
    "TRACKING_RETENTION_HOURS": [0, -1, True, "24", NAN, None, 2**31],
    "TRACKING_MAX_DOCUMENTS": [0, 2**31, True, 10.0],
    "TRACKING_INDEXES": ["tracking_ip", ["tracking_ip", "ip"], [1], None, ["tracking_IP"]],
    "TRACKING_DB_ALIAS": ["", None, 1],
    "TRACKING_ROLLUPS": [1, "yes", None],
    "TRACKING_ROLLUP_COLLECTION": [
        "",
        None,
        5,
        "$x",
        "a$b",
        "a\0b",
        "system.x",
        ".x",
        "x.",
        "a..b",
        "tracking",
    ],
    "TRACKING_ROLLUP_RETENTION_DAYS": [0, -1, 1.5, True, "90", 30000, None],
    "TRACKING_MONGODB_URI": ["", 1, b"mongodb://x", "not a uri", "localhost:27017"],
    "TRACKING_QUEUE_MAX_RECORDS": [0, -5, True, 10.0],
    "TRACKING_QUEUE_MAX_BYTES": [0, False, "64"],
    "TRACKING_BATCH_MAX_RECORDS": [0, True, 1.0],
    "TRACKING_FLUSH_INTERVAL_SECONDS": [0, -1, 0.0009, True, "1", NAN, None, 86400.5, 1e10],
    "TRACKING_WRITE_TIMEOUT_SECONDS": [0, False, NAN, "5", 86401],
    "TRACKING_RETRY_INITIAL_BACKOFF_SECONDS": [0, True, NAN, 1e10],
    "TRACKING_RETRY_MAX_BACKOFF_SECONDS": [0, True, NAN, 1e10],
    "TRACKING_SHUTDOWN_TIMEOUT_SECONDS": [-0.1, True, NAN, "5", 86401],
    "TRACKING_MAX_RECORD_BYTES": [64 * 1024 - 1, 16 * MiB - 64 * 1024 + 1, True, 2.0 * MiB],
    "TRACKING_MAX_CUSTOM_DATA_BYTES": [-1, True, 1.5],
    "TRACKING_REDACT": [1, 0, "true", None],
    "TRACKING_REDACT_HEADERS": [
        "Authorization",
        [1],
        [""],
        None,
        {"add": ["X"]},
        {"replace": "X-Only"},
        {"replace": ["X"], "extra": []},
    ],
    "TRACKING_REDACT_FIELDS": [
        "password",
        [None],
        [""],
        {"replace": [1]},
        3,
        ["пароль"],
        {"replace": ["密码"]},
        ["--"],
    ],
    "TRACKING_ANONYMIZE_IP": [1, "yes", None],
    "TRACKING_INCLUDE": ["/api", ["("], [1], None],
    "TRACKING_DEFAULT": ["Include", "all", None, True, ["include"]],
    "TRACKING_HONOR_DNT": [1, "true", None],
    "TRACKING_ONLY_ERRORS": [1, "yes", None],
    "TRACKING_SKIP_ERRORS": [0, "no"],
    "TRACKING_FIELDS": [[], ["path", "nope"], "path", [1], ["_id", "path"], ["Path"]],
    "TRACKING_EXCLUDE_FIELDS": [
        ["nope"],
        "ip",
        None,
        ["date_created"],
        ["sample_rate"],
        ["user_agent.browser"],
    ],
    "TRACKING_SAMPLE_RATE": [-0.1, 1.01, True, NAN, "0.5", None, math.inf],
    "TRACKING_SAMPLE_KEEP_SLOWER_THAN_MS": [-1, True, NAN, "1000", math.inf],
    "TRACKING_REQUEST_ID_HEADER": ["", "X Request", "X-Id:", 1, b"X-Id", "Ä-Id", "x" * 129],
    "TRACKING_REQUEST_ID_RESPONSE_HEADER": ["", "X-Id\r\nSet-Cookie: a=b", 5, "-X"],
    "TRACKING_DB_ACTIVITY": [1, "yes", None],
    "TRACKING_DB_REPEAT_THRESHOLD": [1, 0, True, 2.5, "5", None],
    "TRACKING_DASHBOARD": [1, "yes", None],
    "TRACKING_DASHBOARD_URL_PREFIX": ["", "/", "tracking", "//evil", "/a b", "/x?y", None, 5],
    "TRACKING_DASHBOARD_PUBLIC": [1, "true", None],
    "TRACKING_DASHBOARD_DEFAULT_WINDOW": ["2h", "", "24H", None, 24],
    "TRACKING_DASHBOARD_LIVE_INTERVAL_SECONDS": [
        0,
        0.05,
        -1,
        True,
        NAN,
        "2",
        None,
        math.inf,
        2_147_483.5,
    ],
}


def test_tracking_indexes_names_the_reading_indexes() -> None:
    assert load().indexes == INDEX_NAMES
    assert load(TRACKING_INDEXES=[]).indexes == ()
    assert load(TRACKING_INDEXES=("tracking_path",)).indexes == ("tracking_path",)
    with pytest.raises(ValueError, match=r"unknown indexes 'ip'; the reading indexes are "):
        load(TRACKING_INDEXES=["tracking_path", "ip"])


def test_a_redact_field_no_name_can_match_is_an_error_naming_it() -> None:
    # Names are compared by their ASCII words: one written in another script would filter
    # nothing, silently.
    with pytest.raises(ValueError, match="'пароль', which no field name can match"):
        load_config({"TRACKING_REDACT_FIELDS": ["pin", "пароль"]})
    assert load_config({"TRACKING_REDACT_FIELDS": ["contraseña"]}).redactor is not None


def test_the_invalid_table_covers_every_key() -> None:
    assert set(INVALID) == set(DEFAULTS)


@pytest.mark.parametrize(
    ("key", "value"),
    [(key, value) for key, values in INVALID.items() for value in values],
    ids=lambda item: repr(item)[:40],
)
def test_invalid_value_raises_naming_the_key(key: str, value: Any) -> None:
    with pytest.raises(ValueError) as error:
        load_config({key: value})
    assert_names_key(error, key)


@pytest.mark.parametrize(
    "key",
    [
        "TRACKING_FLUSH_INTERVAL_SECONDS",
        "TRACKING_WRITE_TIMEOUT_SECONDS",
        "TRACKING_RETRY_MAX_BACKOFF_SECONDS",
        "TRACKING_SHUTDOWN_TIMEOUT_SECONDS",
    ],
)
def test_infinite_seconds_are_rejected(key: str) -> None:
    with pytest.raises(ValueError) as error:
        load_config({key: math.inf})
    assert_names_key(error, key)


@pytest.mark.parametrize("key", ["TRACKING_REDACT_HEADERS", "TRACKING_REDACT_FIELDS"])
def test_deny_lists_are_validated_when_redaction_is_off(key: str) -> None:
    with pytest.raises(ValueError) as error:
        load_config({"TRACKING_REDACT": False, key: "not a list"})
    assert_names_key(error, key)


def test_the_message_shows_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"got -3\.$"):
        load(TRACKING_MAX_BODY_LENGTH=-3)
    with pytest.raises(ValueError, match=r"invalid regular expression '\('"):
        load(TRACKING_EXCLUDE_BODY=["/ok", "("])


def test_boundary_values_are_accepted() -> None:
    config = load(
        TRACKING_MAX_BODY_LENGTH=0,
        TRACKING_EXCLUDE_STATUS_CODES=(100, 599),
        TRACKING_MIN_EXECUTION_TIME=2.5,
        TRACKING_TABLE_SIZE=4096,
        TRACKING_MAX_DOCUMENTS=2**31 - 1,
        TRACKING_MONGODB_URI="mongodb://localhost:27017/db",
        TRACKING_QUEUE_MAX_RECORDS=1,
        TRACKING_QUEUE_MAX_BYTES=1,
        TRACKING_BATCH_MAX_RECORDS=1,
        TRACKING_FLUSH_INTERVAL_SECONDS=0.001,
        TRACKING_WRITE_TIMEOUT_SECONDS=2,
        TRACKING_RETRY_INITIAL_BACKOFF_SECONDS=0.001,
        TRACKING_RETRY_MAX_BACKOFF_SECONDS=0.001,
        TRACKING_SHUTDOWN_TIMEOUT_SECONDS=0,
        TRACKING_MAX_RECORD_BYTES=64 * 1024,
        TRACKING_MAX_CUSTOM_DATA_BYTES=0,
        TRACKING_EXCLUDE_METHODS=("get",),
        TRACKING_EXCLUDE=frozenset({"/a"}),
    )
    assert config.max_body_length == 0
    assert config.exclude_status_codes == frozenset({100, 599})
    assert config.min_execution_time_ms == 2.5
    assert config.table_size_bytes == 4096
    assert config.max_documents == 2**31 - 1
    assert config.mongodb_uri == "mongodb://localhost:27017/db"
    assert config.write_timeout_seconds == 2.0
    assert isinstance(config.write_timeout_seconds, float)
    assert config.shutdown_timeout_seconds == 0.0
    assert config.max_record_bytes == 64 * 1024
    assert config.exclude_methods == frozenset({"GET"})
    assert [pattern.pattern for pattern in config.exclude] == ["/a"]
    assert load(TRACKING_MAX_RECORD_BYTES=16 * MiB - 64 * 1024).max_record_bytes == 16 * MiB - (
        64 * 1024
    )


# --------------------------------------------------------------------------------------------
# Cross-field checks
# --------------------------------------------------------------------------------------------


def test_batch_larger_than_queue_is_rejected() -> None:
    with pytest.raises(ValueError) as error:
        load(TRACKING_QUEUE_MAX_RECORDS=10, TRACKING_BATCH_MAX_RECORDS=11)
    assert "TRACKING_BATCH_MAX_RECORDS" in str(error.value)
    assert "TRACKING_QUEUE_MAX_RECORDS" in str(error.value)
    assert (
        load(TRACKING_QUEUE_MAX_RECORDS=10, TRACKING_BATCH_MAX_RECORDS=10).batch_max_records == 10
    )


def test_default_batch_larger_than_a_small_queue_is_rejected() -> None:
    with pytest.raises(ValueError, match="TRACKING_BATCH_MAX_RECORDS"):
        load(TRACKING_QUEUE_MAX_RECORDS=100)  # default batch is 500


def test_initial_backoff_larger_than_max_is_rejected() -> None:
    with pytest.raises(ValueError) as error:
        load(TRACKING_RETRY_INITIAL_BACKOFF_SECONDS=2, TRACKING_RETRY_MAX_BACKOFF_SECONDS=1)
    assert "TRACKING_RETRY_INITIAL_BACKOFF_SECONDS" in str(error.value)
    assert "TRACKING_RETRY_MAX_BACKOFF_SECONDS" in str(error.value)
    config = load(TRACKING_RETRY_INITIAL_BACKOFF_SECONDS=1, TRACKING_RETRY_MAX_BACKOFF_SECONDS=1)
    assert config.retry_initial_backoff_seconds == config.retry_max_backoff_seconds == 1.0


def test_record_bytes_must_hold_two_bodies_and_64_kib() -> None:
    record = 128 * 1024
    fits = (record - 64 * 1024) // 2
    assert load(TRACKING_MAX_RECORD_BYTES=record, TRACKING_MAX_BODY_LENGTH=fits).max_body_length
    with pytest.raises(ValueError) as error:
        load(TRACKING_MAX_RECORD_BYTES=record, TRACKING_MAX_BODY_LENGTH=fits + 1)
    assert str(error.value).startswith("TRACKING_MAX_RECORD_BYTES ")
    assert "TRACKING_MAX_BODY_LENGTH" in str(error.value)
    with pytest.raises(ValueError, match="TRACKING_MAX_RECORD_BYTES"):
        load(TRACKING_MAX_BODY_LENGTH=MiB)  # against the default 2 MiB record


# --------------------------------------------------------------------------------------------
# Compilation
# --------------------------------------------------------------------------------------------


def test_methods_are_upper_cased() -> None:
    config = load(TRACKING_EXCLUDE_METHODS=["get", "Post", "OPTIONS"])
    assert config.exclude_methods == frozenset({"GET", "POST", "OPTIONS"})


def test_status_codes_become_a_frozenset() -> None:
    config = load(TRACKING_EXCLUDE_STATUS_CODES=[404, 404, 500])
    assert config.exclude_status_codes == frozenset({404, 500})


def test_regexes_are_compiled_once_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[str] = []
    real_compile = re.compile

    def counting_compile(pattern: Any, flags: int = 0) -> re.Pattern[Any]:
        compiled.append(pattern)
        return real_compile(pattern, flags)

    monkeypatch.setattr(config_module.re, "compile", counting_compile)
    config = load(TRACKING_EXCLUDE=["/static", "/health$"], TRACKING_EXCLUDE_BODY=["/login"])
    monkeypatch.undo()
    path_patterns = [pattern for pattern in compiled if isinstance(pattern, str)]
    assert sorted(path_patterns) == ["/health$", "/login", "/static"]  # (the redactor's: bytes)
    assert all(isinstance(pattern, re.Pattern) for pattern in config.exclude + config.exclude_body)

    def no_compiling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a regex was compiled on a request")

    policy = Policy(config)
    for name in ("compile", "match", "search", "fullmatch"):
        monkeypatch.setattr(re, name, no_compiling)
    assert policy.should_track({"PATH_INFO": "/static/app.js"}) is False
    assert policy.should_track({"PATH_INFO": "/api"}) is True
    assert policy.should_keep_bodies({"PATH_INFO": "/login"}) is False


def test_redaction_lists_extend_or_replace_the_defaults() -> None:
    default = load().redactor
    assert default is not None
    assert default.is_secret_header("Authorization")
    assert not default.is_secret_header("X-Forwarded-For")
    extended = load(TRACKING_REDACT_HEADERS=["X-Tenant"]).redactor
    assert extended is not None
    assert extended.is_secret_header("X-Tenant")
    assert extended.is_secret_header("Authorization")
    replaced = load(
        TRACKING_REDACT_HEADERS={"replace": ["X-Tenant"]}, TRACKING_REDACT_FIELDS={"replace": []}
    ).redactor
    assert replaced is not None
    assert replaced.is_secret_header("X-Tenant")
    assert not replaced.is_secret_header("Authorization")
    assert load(TRACKING_REDACT=False).redactor is None


def test_anonymize_ip_filters_the_address_headers_too() -> None:
    config = load(TRACKING_ANONYMIZE_IP=True)
    assert config.anonymize_ip is True
    assert config.redactor is not None
    assert config.redactor.is_secret_header("X-Forwarded-For")
    assert config.redactor.is_secret_header("X-Real-IP")


# --------------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------------


def test_every_default_has_a_doc_comment() -> None:
    source = inspect.getsource(config_module)
    lines = source.splitlines()
    tree = ast.parse(source)
    [defaults_node] = [
        node.value
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        and isinstance(node.value, ast.Dict)
        and any(
            isinstance(target, ast.Name) and target.id == "DEFAULTS"
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
    ]
    documented: dict[str, list[str]] = {}
    for key_node in defaults_node.keys:
        assert isinstance(key_node, ast.Constant) and isinstance(key_node.value, str)
        index = key_node.lineno - 2  # the line above the key (0-based)
        comment: list[str] = []
        while index >= 0 and lines[index].strip().startswith("#"):
            comment.insert(0, lines[index].strip())
            index -= 1
        documented[key_node.value] = comment
    assert set(documented) == set(DEFAULTS)
    for key, comment in documented.items():
        assert comment, f"{key} has no comment above it"
        assert all(line.startswith("#: ") for line in comment), (key, comment)
        assert sum(len(line) for line in comment) > 15, (key, comment)


@pytest.mark.parametrize(
    ("hours", "seconds"), [(168, 604_800), (0.5, 1800), (1 / 3600, 1), (1e-3, 4)]
)
def test_retention_hours_become_whole_seconds(hours: float, seconds: int) -> None:
    config = load(TRACKING_STORAGE="ttl", TRACKING_RETENTION_HOURS=hours)
    assert (config.storage, config.retention_seconds) == ("ttl", seconds)


def test_storage_defaults_to_capped_with_a_week_of_retention() -> None:
    config = load()
    assert (config.storage, config.retention_seconds) == ("capped", 7 * 24 * 3600)


def test_timeseries_refuses_records_above_four_mebibytes() -> None:
    with pytest.raises(ValueError, match="4 MB"):
        load(TRACKING_STORAGE="timeseries", TRACKING_MAX_RECORD_BYTES=5 * 1024 * 1024)
    assert load(TRACKING_STORAGE="timeseries").max_record_bytes == 2 * 1024 * 1024


def test_an_unknown_tracking_key_warns_naming_the_closest_setting() -> None:
    app = Flask("typo")
    app.config["TRACKING_MAX_BODY_LENGHT"] = 10
    with pytest.warns(UserWarning, match="TRACKING_MAX_BODY_LENGHT .*TRACKING_MAX_BODY_LENGTH"):
        Tracking(app)
    assert app.extensions["tracking"] is not None  # a warning, not an error


def test_an_unknown_tracking_key_with_nothing_close_warns_without_a_guess() -> None:
    with pytest.warns(UserWarning, match=r"TRACKING_COFFEE is not a setting and is ignored\.$"):
        load_config({"TRACKING_COFFEE": "black"})


def test_known_keys_and_other_keys_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config({"TRACKING_MAX_BODY_LENGTH": 10, "SECRET_KEY": "x", "TRACKINGX": 1})


def test_the_request_id_header_as_an_environ_key() -> None:
    assert load().request_id_environ_key == "HTTP_X_REQUEST_ID"
    custom = load(TRACKING_REQUEST_ID_HEADER="X-Correlation-ID")
    assert custom.request_id_environ_key == "HTTP_X_CORRELATION_ID"
    assert load(TRACKING_REQUEST_ID_HEADER=None).request_id_environ_key is None


@pytest.mark.parametrize(
    "key",
    ["TRACKING_SAMPLE_RATE", "TRACKING_MIN_EXECUTION_TIME", "TRACKING_FLUSH_INTERVAL_SECONDS"],
)
def test_a_huge_integer_for_a_number_setting_raises_value_error_naming_the_key(key: str) -> None:
    # README.md and docs/reference/configuration.md: "a bad value raises ValueError naming the
    # key". An int too large for a float raises OverflowError from math.isfinite instead.
    with pytest.raises(ValueError) as error:
        load_config({key: 10**400})
    assert_names_key(error, key)


def test_a_flush_interval_beyond_what_a_thread_can_wait_is_refused_or_works(
    make_app: Any,
) -> None:
    # docs/reference/configuration.md: settings are "read once at init_app ... a bad value
    # raises ValueError naming the key, never on a request". 1e10 s (above threading.TIMEOUT_MAX)
    # is accepted, then the writer thread dies on cond.wait() with OverflowError and no record
    # is ever written: flush() returns False and the record is lost at exit (dropped_shutdown).
    try:
        app = make_app(TRACKING_FLUSH_INTERVAL_SECONDS=1e10)
    except ValueError as error:
        assert str(error).startswith("TRACKING_FLUSH_INTERVAL_SECONDS ")
        return
    app.test_client().get("/ok")
    assert app.extensions["tracking"].flush(5)


def test_a_retry_backoff_beyond_what_a_thread_can_wait_is_refused_or_keeps_the_writer() -> None:
    # Same as the flush interval: TRACKING_RETRY_*_BACKOFF_SECONDS = 1e10 is accepted, and the
    # first failed write makes the writer wait 1e10 s on a Condition, which raises OverflowError
    # and ends the writer thread: the pending record stays pending for good (flush() is False).
    import threading
    import time

    import mongoengine

    app = Flask("long_backoff")
    app.config.update(
        TRACKING_MONGODB_URI="mongodb://127.0.0.1:9/nothing_listens",
        TRACKING_DB_ALIAS="review_long_backoff",
        TRACKING_ROLLUPS=False,
        TRACKING_RETRY_INITIAL_BACKOFF_SECONDS=1e10,
        TRACKING_RETRY_MAX_BACKOFF_SECONDS=1e10,
        TRACKING_WRITE_TIMEOUT_SECONDS=0.2,
        TRACKING_FLUSH_INTERVAL_SECONDS=0.02,
        TRACKING_SHUTDOWN_TIMEOUT_SECONDS=0.5,
    )
    app.add_url_rule("/", "index", lambda: "ok")
    try:
        try:
            tracking = Tracking(app)
        except ValueError as error:
            assert str(error).startswith("TRACKING_RETRY_")
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the thread's OverflowError, if it dies
            app.test_client().get("/")
            time.sleep(1.5)
            names = [thread.name for thread in threading.enumerate()]
            writers = [name for name in names if name.startswith("flask-tracking-writer")]
            tracking.close(0.5)
        assert writers, "the writer thread died"
    finally:
        mongoengine.disconnect("review_long_backoff")


@pytest.mark.parametrize("uri", ["mongodb://", "mongodb://localhost/?noSuchOption=1"])
def test_a_bad_mongodb_uri_raises_value_error_naming_the_key(uri: str) -> None:
    # README.md: "Every setting is read once at init_app; a bad value raises ValueError naming
    # it." A malformed TRACKING_MONGODB_URI raises pymongo's InvalidURI / ConfigurationError
    # (not ValueError) from MongoEngine's connect, without naming the setting.
    import mongoengine

    app = Flask("bad_uri")
    app.config.update(TRACKING_MONGODB_URI=uri, TRACKING_DB_ALIAS="review_bad_uri")
    try:
        with pytest.raises(ValueError) as error:
            Tracking(app)
        assert_names_key(error, "TRACKING_MONGODB_URI")
    finally:
        mongoengine.disconnect("review_bad_uri")


@pytest.mark.parametrize("name", ["tracking", "tracking_before_migration", "tracking_migrations"])
def test_a_rollup_collection_may_not_name_another_collection_of_the_package(name: str) -> None:
    """Rollups written into the records' collection, the one ``flask tracking migrate`` keeps
    the old records in (it would refuse to run, and ask for it to be dropped), or the one
    holding its checkpoints, would mix with what is there."""
    with pytest.raises(ValueError) as error:
        load_config({"TRACKING_ROLLUP_COLLECTION": name})
    assert_names_key(error, "TRACKING_ROLLUP_COLLECTION")
    assert load_config({"TRACKING_ROLLUP_COLLECTION": "tracking_rollups_2"})


def test_a_rollup_collection_name_mongodb_refuses_is_refused_at_init_app(make_app: Any) -> None:
    # "$x" was accepted, and every rollup write was then dropped by the server.
    with pytest.raises(ValueError) as error:
        make_app(TRACKING_ROLLUP_COLLECTION="$x")
    assert_names_key(error, "TRACKING_ROLLUP_COLLECTION")
    config = load_config({"TRACKING_ROLLUP_COLLECTION": "ops.rollups-2"})
    assert config.rollup_collection == "ops.rollups-2"
