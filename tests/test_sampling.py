"""Outcome rules: sampling (TRACKING_SAMPLE_RATE, TRACKING_SAMPLE_KEEP_SLOWER_THAN_MS), errors
(TRACKING_ONLY_ERRORS, TRACKING_SKIP_ERRORS) and how they combine with the status-code and
minimum-time rules; unit (Policy.kept_sample_rate) and end to end."""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from typing import Any, Callable

import pytest
from flask import Flask, abort

from flask_tracking.config import load_config
from flask_tracking.policy import Policy, sample_point

from .conftest import stored


def policy(**settings: Any) -> Policy:
    return Policy(load_config(dict(settings)))


def binomial_bounds(n: int, rate: float, sigmas: float = 5.0) -> tuple[float, float]:
    """Bounds a Binomial(n, rate) count stays within but for a ~1e-6 chance."""
    spread = sigmas * math.sqrt(n * rate * (1 - rate))
    return n * rate - spread, n * rate + spread


# ---------------------------------------------------------------------------- unit


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5, 0.9])
def test_about_the_right_fraction_of_random_ids_is_kept(rate: float) -> None:
    rules = policy(TRACKING_SAMPLE_RATE=rate)
    kept = sum(rules.sampled_in(uuid.uuid4().hex) for _ in range(10_000))
    low, high = binomial_bounds(10_000, rate)
    assert low <= kept <= high, (rate, kept)


def test_sequential_client_ids_spread_evenly_too() -> None:
    rules = policy(TRACKING_SAMPLE_RATE=0.25)
    kept = sum(rules.sampled_in(f"req-{i}") for i in range(10_000))
    low, high = binomial_bounds(10_000, 0.25)
    assert low <= kept <= high, kept


def test_the_decision_is_deterministic_per_id() -> None:
    ids = [uuid.uuid4().hex for _ in range(1000)]
    first = [policy(TRACKING_SAMPLE_RATE=0.3).sampled_in(value) for value in ids]
    again = [policy(TRACKING_SAMPLE_RATE=0.3).sampled_in(value) for value in ids]
    assert first == again
    # a larger rate keeps a superset: raising it never drops a request kept before
    wider = [policy(TRACKING_SAMPLE_RATE=0.6).sampled_in(value) for value in ids]
    assert all(w for f, w in zip(first, wider) if f)
    assert sample_point("abc") == sample_point("abc") != sample_point("abd")
    assert 0 <= sample_point("abc") < 2**64


def test_no_sampling_keeps_everything_with_rate_one() -> None:
    rules = policy()
    assert rules.filters_outcomes is False
    assert rules.sampled_in(None) is True
    assert rules.kept_sample_rate(200, 1.0, False, "x") == 1.0


def test_rate_zero_keeps_only_errors_and_slow_requests() -> None:
    rules = policy(TRACKING_SAMPLE_RATE=0, TRACKING_SAMPLE_KEEP_SLOWER_THAN_MS=100)
    assert rules.filters_outcomes is True
    assert not any(rules.sampled_in(uuid.uuid4().hex) for _ in range(1000))
    assert rules.kept_sample_rate(200, 5.0, False, "x") is None
    assert rules.kept_sample_rate(404, 5.0, False, "x") is None  # 4xx are ordinary
    assert rules.kept_sample_rate(500, 5.0, False, "x") == 1.0
    assert rules.kept_sample_rate(503, 5.0, False, "x") == 1.0
    assert rules.kept_sample_rate(200, 5.0, True, "x") == 1.0  # raised (status as sent)
    assert rules.kept_sample_rate(200, 100.0, False, "x") is None  # not slower than
    assert rules.kept_sample_rate(200, 100.5, False, "x") == 1.0


def test_sampled_in_records_carry_the_rate() -> None:
    rules = policy(TRACKING_SAMPLE_RATE=0.5)
    ids = [uuid.uuid4().hex for _ in range(200)]
    rates = Counter(rules.kept_sample_rate(200, 1.0, False, value) for value in ids)
    assert set(rates) == {0.5, None}
    assert rules.kept_sample_rate(200, 1.0, False, None) is None  # no id: not sampled in


def test_keep_slower_than_none_keeps_only_errors() -> None:
    rules = policy(TRACKING_SAMPLE_RATE=0, TRACKING_SAMPLE_KEEP_SLOWER_THAN_MS=None)
    assert rules.kept_sample_rate(200, 1e9, False, "x") is None
    assert rules.kept_sample_rate(500, 1.0, False, "x") == 1.0


def test_only_errors_and_skip_errors() -> None:
    only = policy(TRACKING_ONLY_ERRORS=True)
    assert only.filters_outcomes is True
    assert only.kept_sample_rate(200, 1.0, True, "x") == 1.0
    assert only.kept_sample_rate(500, 1.0, False, "x") is None  # a 500 without exception
    assert only.kept_sample_rate(200, 1.0, False, "x") is None
    skipping = policy(TRACKING_SKIP_ERRORS=True)
    assert skipping.kept_sample_rate(500, 1.0, True, "x") is None
    assert skipping.kept_sample_rate(500, 1.0, False, "x") == 1.0
    assert skipping.kept_sample_rate(404, 1.0, False, "x") == 1.0
    with pytest.raises(ValueError, match="TRACKING_ONLY_ERRORS and TRACKING_SKIP_ERRORS"):
        policy(TRACKING_ONLY_ERRORS=True, TRACKING_SKIP_ERRORS=True)


def test_a_request_without_a_response_is_an_error_never_sampled_out() -> None:
    """No status (a SystemExit or KeyboardInterrupt ended it before the app answered): it
    raised, so it is kept at rate 1.0, whatever the status rules say."""
    rules = policy(TRACKING_SAMPLE_RATE=0.0, TRACKING_EXCLUDE_STATUS_CODES=[500])
    assert rules.kept_sample_rate(None, 1.0, True, "x") == 1.0
    assert policy(TRACKING_ONLY_ERRORS=True).kept_sample_rate(None, 1.0, True, "x") == 1.0
    assert policy(TRACKING_SKIP_ERRORS=True).kept_sample_rate(None, 1.0, True, "x") is None


def test_every_rule_must_agree() -> None:
    rules = policy(
        TRACKING_ONLY_ERRORS=True,
        TRACKING_EXCLUDE_STATUS_CODES=[500],
        TRACKING_MIN_EXECUTION_TIME=50,
        TRACKING_SAMPLE_RATE=0.0,
    )
    assert rules.kept_sample_rate(500, 10.0, True, "x") is None  # excluded status, fast
    assert rules.kept_sample_rate(500, 60.0, True, "x") == 1.0  # slow: the status rule yields
    assert rules.kept_sample_rate(200, 60.0, False, "x") is None  # not an error
    assert rules.should_keep_record(500, 10.0) is False


# ---------------------------------------------------------------------------- end to end


def sampling_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    app = make_app(testing=False, **config)

    @app.get("/unavailable")
    def unavailable() -> tuple[str, int]:
        return "busy", 503

    @app.get("/gone")
    def gone() -> str:
        abort(410)

    return app


def call(app: Flask, path: str, request_id: str) -> str:
    """One request the way a server sends it; returns the status line."""
    statuses: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": None,
        "wsgi.errors": None,
        "HTTP_X_REQUEST_ID": request_id,
    }
    result = app.wsgi_app(environ, lambda status, headers, *args: statuses.append(status))
    try:
        for _ in result:
            pass
    finally:
        getattr(result, "close", lambda: None)()
    return statuses[0]


def test_10000_requests_keep_about_the_rate_and_every_error_and_slow_one(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    rate = 0.2
    app = sampling_app(
        make_app,
        TRACKING_SAMPLE_RATE=rate,
        TRACKING_SAMPLE_KEEP_SLOWER_THAN_MS=20,
        TRACKING_QUEUE_MAX_RECORDS=20_000,
    )
    rules = Policy(load_config({"TRACKING_SAMPLE_RATE": rate}))
    plan = (
        ["/hello"] * 9_000
        + ["/missing"] * 500  # 404: ordinary, sampled
        + ["/boom"] * 200  # exception: always kept
        + ["/unavailable"] * 200  # 503 without exception: always kept
        + ["/gone"] * 80  # 410: ordinary
        + ["/sleep/0.03"] * 20  # slower than 20 ms: always kept
    )
    sent: dict[str, str] = {}
    for index, path in enumerate(plan):
        request_id = f"req-{index}"
        sent[request_id] = path
        call(app, path, request_id)
    docs = stored(app, mongo, timeout=30)
    by_id = {doc["request_id"]: doc for doc in docs}
    assert len(by_id) == len(docs)
    always = {value for value, path in sent.items() if path in ("/boom", "/unavailable")}
    slow = {value for value, path in sent.items() if path.startswith("/sleep")}
    assert always | slow <= set(by_id), "an error or a slow request was sampled out"
    for value in always | slow:
        assert by_id[value]["sample_rate"] == 1.0
    ordinary = [value for value, path in sent.items() if value not in always | slow]
    # An ordinary request slower than 20 ms on a loaded machine is kept as slow (rate 1.0):
    # it is not part of the sample.
    kept_as_slow = {value for value in ordinary if by_id.get(value, {}).get("sample_rate") == 1.0}
    assert all(by_id[value]["execution_time"] > 20 for value in kept_as_slow)
    sampled = [value for value in ordinary if value not in kept_as_slow]
    kept = [value for value in sampled if value in by_id]
    low, high = binomial_bounds(len(sampled), rate)
    assert low <= len(kept) <= high, (len(kept), len(sampled))
    # Deterministic: exactly the ids the hash says, nothing else.
    assert set(kept) == {value for value in sampled if rules.sampled_in(value)}
    assert {by_id[value]["sample_rate"] for value in kept} == {rate}


def test_records_say_their_sample_rate(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = make_app()
    app.test_client().get("/hello")
    [doc] = stored(app, mongo)
    assert doc["sample_rate"] == 1.0


def test_sampling_uses_the_generated_id_when_none_came_in(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_SAMPLE_RATE=0.5, TRACKING_QUEUE_MAX_RECORDS=1000)
    rules = Policy(load_config({"TRACKING_SAMPLE_RATE": 0.5}))
    client = app.test_client()
    for _ in range(400):
        client.get("/hello")
    docs = stored(app, mongo)
    assert 100 <= len(docs) <= 300
    assert all(rules.sampled_in(doc["request_id"]) for doc in docs)


def test_only_errors_end_to_end(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = sampling_app(make_app, TRACKING_ONLY_ERRORS=True)
    client = app.test_client()
    for path in ("/hello", "/boom", "/unavailable", "/gone", "/missing"):
        client.get(path, buffered=True)
    [doc] = stored(app, mongo)
    assert (doc["path"], doc["status_code"], doc["exception"]) == (
        "/boom",
        500,
        "ValueError: kaboom",
    )


def test_only_errors_in_testing_mode_where_the_exception_propagates(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_ONLY_ERRORS=True)
    client = app.test_client()
    client.get("/hello")
    with pytest.raises(ValueError, match="kaboom"):
        client.get("/boom")
    [doc] = stored(app, mongo)
    assert doc["path"] == "/boom"


def test_skip_errors_end_to_end(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = sampling_app(make_app, TRACKING_SKIP_ERRORS=True)

    @app.get("/stream-boom")
    def stream_boom() -> Any:
        def generate() -> Any:
            yield b"part"
            raise RuntimeError("mid-stream")

        return app.response_class(generate())

    client = app.test_client()
    for path in ("/hello", "/boom", "/unavailable", "/gone"):
        client.get(path, buffered=True)
    with pytest.raises(RuntimeError, match="mid-stream"):
        client.get("/stream-boom", buffered=True)
    assert [doc["path"] for doc in stored(app, mongo)] == ["/hello", "/unavailable", "/gone"]


def test_error_rules_with_status_codes_and_minimum_time(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = sampling_app(
        make_app,
        TRACKING_ONLY_ERRORS=True,
        TRACKING_EXCLUDE_STATUS_CODES=[500],
        TRACKING_MIN_EXECUTION_TIME=25,
    )

    @app.get("/slow-boom")
    def slow_boom() -> str:
        time.sleep(0.03)
        raise RuntimeError("slow failure")

    client = app.test_client()
    for path in ("/boom", "/slow-boom", "/sleep/0.03", "/unavailable"):
        client.get(path, buffered=True)
    assert [doc["path"] for doc in stored(app, mongo)] == ["/slow-boom"]


def test_sampling_with_excluded_status_codes(make_app: Callable[..., Flask], mongo: Any) -> None:
    app = sampling_app(
        make_app,
        TRACKING_SAMPLE_RATE=0.0,
        TRACKING_EXCLUDE_STATUS_CODES=[503],
    )
    client = app.test_client()
    for path in ("/hello", "/boom", "/unavailable", "/missing"):
        client.get(path, buffered=True)
    # 503 is excluded before sampling could keep it as an error; the exception is kept
    assert [doc["path"] for doc in stored(app, mongo)] == ["/boom"]


def test_sampling_config_is_validated() -> None:
    for rate in (0, 0.5, 1):
        assert load_config({"TRACKING_SAMPLE_RATE": rate}).sample_rate == float(rate)
    with pytest.raises(ValueError, match=r"^TRACKING_SAMPLE_RATE must be a finite number of at"):
        load_config({"TRACKING_SAMPLE_RATE": 2})
    config = load_config({"TRACKING_SAMPLE_KEEP_SLOWER_THAN_MS": None})
    assert config.sample_keep_slower_than_ms is None
    assert load_config({}).sample_keep_slower_than_ms == 1000.0
