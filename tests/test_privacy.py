"""End-to-end privacy: secrets never reach the database, the app always sees the originals.

Every test drives a real Flask app through the test client and reads the raw stored documents
back from mongomock (``stored`` also checks each one encodes with BSON).
"""

from __future__ import annotations

import io
import json
import sys
import uuid
from typing import Any, Callable
from urllib.parse import quote, urlencode

import bson
import pytest
from flask import Flask, jsonify, redirect, request, url_for
from flask.testing import FlaskClient
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_tracking import Tracking
from flask_tracking.documents import Tracking as TrackingDocument
from flask_tracking.redact import DEFAULT_REDACT_HEADERS, FILTERED

from .conftest import FAST_WRITER, add_routes, stored
from .test_credentials import PREFIXED_TOKENS


@pytest.fixture(autouse=True)
def buffered_test_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test-client request closes its response (``buffered=True``): a record is finished
    when the response is closed, at once or after reading a body the view left unread."""
    original = FlaskClient.open

    def open_buffered(self: FlaskClient, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("buffered", True)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FlaskClient, "open", open_buffered)


def token(label: str) -> str:
    """A unique secret, easy to search for in the encoded document. Its hex digits come in
    groups of six split by a letter: a random run of 13 or more digits could pass for a card
    number (Luhn-valid with a network's prefix) and be filtered by its look wherever it stands."""
    digits = uuid.uuid4().hex
    return f"{label}-" + "g".join(digits[start : start + 6] for start in range(0, 32, 6))


def assert_absent(document: dict[str, Any], *secrets: str) -> None:
    encoded = bson.encode(document)
    for secret in secrets:
        assert secret.encode() not in encoded, f"{secret!r} was stored"


def assert_present(document: dict[str, Any], *values: str) -> None:
    encoded = bson.encode(document)
    for value in values:
        assert value.encode() in encoded, f"{value!r} was not stored"


def headers_of(document: dict[str, Any], key: str = "request_headers") -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in document[key]:
        found.setdefault(name.lower(), []).append(value)
    return found


def build_app(mongo: Any, name: str, **config: Any) -> tuple[Flask, Tracking]:
    """An app not made by ``make_app`` (for wrapping order tests); shut it down yourself."""
    app = Flask(name)
    app.config.update(TESTING=True, **FAST_WRITER)
    app.config.update(config)
    add_routes(app)
    return app, Tracking(app)


def shutdown(app: Flask) -> None:
    app.extensions["tracking"]._apps[app].writer.shutdown(1.0)


# --- headers -----------------------------------------------------------------------------------


def test_every_default_request_header_is_filtered_and_the_view_sees_it(
    app: Flask, mongo: Any
) -> None:
    sent = {name: token(name) for name in DEFAULT_REDACT_HEADERS if name != "Set-Cookie"}
    seen: dict[str, str | None] = {}

    @app.get("/see")
    def see() -> str:
        seen.update({name: request.headers.get(name) for name in sent})
        return "ok"

    assert app.test_client(use_cookies=False).get("/see", headers=sent).data == b"ok"
    assert seen == sent
    [doc] = stored(app, mongo)
    found = headers_of(doc)
    for name in sent:
        assert found[name.lower()] == [FILTERED], name
    assert_absent(doc, *sent.values())


@pytest.mark.parametrize(
    "name", ["X-Auth-Token", "X-Session-Id", "X-Refresh-Token", "X-Client-Secret", "Api-Key"]
)
def test_headers_named_like_secret_fields_are_filtered(app: Flask, mongo: Any, name: str) -> None:
    secret = token("hdr")
    app.test_client().get("/hello", headers={name: secret, "X-Plain": "visible"})
    [doc] = stored(app, mongo)
    assert headers_of(doc)[name.lower()] == [FILTERED]
    assert headers_of(doc)["x-plain"] == ["visible"]
    assert_absent(doc, secret)


def test_set_cookie_is_filtered_but_the_client_gets_it(app: Flask, mongo: Any) -> None:
    session_value, remember_value = token("sess"), token("remember")

    @app.get("/set")
    def set_cookies() -> Any:
        response = app.make_response("set")
        response.set_cookie("session", session_value)
        response.set_cookie("remember", remember_value, httponly=True)
        return response

    seen: list[dict[str, str]] = []

    @app.get("/get")
    def get_cookies() -> str:
        seen.append(dict(request.cookies))
        return "got"

    client = app.test_client()
    response = client.get("/set")
    cookies = response.headers.getlist("Set-Cookie")
    assert any(session_value in cookie for cookie in cookies)
    assert any(remember_value in cookie for cookie in cookies)
    assert client.get("/get").data == b"got"
    assert seen == [{"session": session_value, "remember": remember_value}]
    set_doc, get_doc = stored(app, mongo)
    assert headers_of(set_doc, "response_headers")["set-cookie"] == [FILTERED, FILTERED]
    assert headers_of(get_doc)["cookie"] == [FILTERED]
    assert_absent(set_doc, session_value, remember_value)
    assert_absent(get_doc, session_value, remember_value)


# --- the view sees the original request --------------------------------------------------------


def test_view_sees_original_headers_query_body_and_keeps_its_custom_data(
    app: Flask, mongo: Any
) -> None:
    password, api_key, bearer, access = token("pw"), token("key"), token("bearer"), token("at")
    custom = {"login": {"password": password, "user": "ada"}}
    checked: list[bool] = []

    @app.post("/login")
    def login() -> Any:
        assert request.headers["Authorization"] == f"Bearer {bearer}"
        assert request.args["api_key"] == api_key
        assert request.args["next"] == "/home"
        assert request.get_json() == {"username": "ada", "password": password}
        assert json.loads(request.get_data()) == {"username": "ada", "password": password}
        request._tracking_data = custom
        checked.append(True)
        return jsonify(access_token=access, expires_in=3600, user="ada")

    response = app.test_client().post(
        f"/login?api_key={api_key}&next=/home",
        json={"username": "ada", "password": password},
        headers={"Authorization": f"Bearer {bearer}"},
    )
    assert checked == [True]
    assert response.get_json() == {"access_token": access, "expires_in": 3600, "user": "ada"}
    [doc] = stored(app, mongo)
    assert custom == {"login": {"password": password, "user": "ada"}}, "custom data was changed"
    assert_absent(doc, password, api_key, bearer, access)
    assert doc["query_params"] == f"api_key={FILTERED}&next=/home"
    assert json.loads(doc["request_body"]) == {"username": "ada", "password": FILTERED}
    assert json.loads(doc["response_body"]) == {
        "access_token": FILTERED,
        "expires_in": 3600,
        "user": "ada",
    }
    assert doc["custom_data"] == {"login": {"password": FILTERED, "user": "ada"}}


# --- query strings and URLs --------------------------------------------------------------------


def test_query_string_secrets_including_encoded_names(app: Flask, mongo: Any) -> None:
    s1, s2, s3, s4 = token("q1"), token("q2"), token("q3"), token("q4")
    seen: dict[str, str] = {}

    @app.get("/q")
    def q() -> str:
        seen.update(request.args.to_dict())
        return "ok"

    query = f"token={s1}&pass%77ord={s2}&card+number={s3}&user%5Bapi_key%5D={s4}&q=find+me"
    app.test_client().get(f"/q?{query}")
    assert seen == {
        "token": s1,
        "password": s2,
        "card number": s3,
        "user[api_key]": s4,
        "q": "find me",
    }
    [doc] = stored(app, mongo)
    assert doc["query_params"] == (
        f"token={FILTERED}&pass%77ord={FILTERED}&card+number={FILTERED}"
        f"&user%5Bapi_key%5D={FILTERED}&q=find+me"
    )
    assert_absent(doc, s1, s2, s3, s4)


def test_referer_and_location_query_secrets(app: Flask, mongo: Any) -> None:
    referer_secret, location_secret = token("ref"), token("loc")

    @app.get("/go")
    def go() -> Any:
        return redirect(f"/next?code=1&access_token={location_secret}&state=s")

    response = app.test_client().get(
        "/go", headers={"Referer": f"https://site.example/p?sessionid={referer_secret}&page=2"}
    )
    assert response.status_code in (302, 303)  # redirect(): 303 from Flask 3.2
    assert location_secret in response.headers["Location"]
    [doc] = stored(app, mongo)
    expected_referer = f"https://site.example/p?sessionid={FILTERED}&page=2"
    assert doc["referrer"] == expected_referer
    assert headers_of(doc)["referer"] == [expected_referer]
    assert headers_of(doc, "response_headers")["location"] == [
        f"/next?code={FILTERED}&access_token={FILTERED}&state=s"
    ]
    assert_absent(doc, referer_secret)
    doc["response_body"] = None  # the HTML page of redirect(): see the next test
    assert_absent(doc, location_secret)


def test_redirect_page_does_not_keep_the_location_secret(app: Flask, mongo: Any) -> None:
    secret = token("loc")

    @app.get("/go")
    def go() -> Any:
        return redirect(f"/next?access_token={secret}")

    assert app.test_client().get("/go").status_code in (302, 303)
    [doc] = stored(app, mongo)
    assert_absent(doc, secret)


# --- bodies ------------------------------------------------------------------------------------


def test_json_nested_dicts_and_lists(app: Flask, client: Any, mongo: Any) -> None:
    secrets = [token(f"j{i}") for i in range(4)]
    payload = {
        "user": {"name": "ada", "password": secrets[0]},
        "devices": [{"id": 1, "push_token": secrets[1]}, {"id": 2}],
        "credentials": {"anything": secrets[2]},
        "deep": [[{"x": {"creditCardNumber": secrets[3]}}]],
    }
    assert client.post("/echo", json=payload).get_json() == payload
    [doc] = stored(app, mongo)
    assert_absent(doc, *secrets)
    assert json.loads(doc["request_body"]) == {
        "user": {"name": "ada", "password": FILTERED},
        "devices": [{"id": 1, "push_token": FILTERED}, {"id": 2}],
        "credentials": FILTERED,
        "deep": [[{"x": {"creditCardNumber": FILTERED}}]],
    }
    assert json.loads(doc["response_body"]) == json.loads(doc["request_body"])


def test_json_top_level_array(app: Flask, client: Any, mongo: Any) -> None:
    s1, s2 = token("a1"), token("a2")
    payload = [{"api_key": s1}, {"ok": True}, [{"otp": s2}]]
    assert client.post("/echo", json=payload).get_json() == payload
    [doc] = stored(app, mongo)
    assert_absent(doc, s1, s2)
    assert json.loads(doc["request_body"]) == [
        {"api_key": FILTERED},
        {"ok": True},
        [{"otp": FILTERED}],
    ]


def cut_inside(body: bytes, secret: str, keep: int = 10) -> int:
    """A body limit that cuts ``body`` ``keep`` bytes into ``secret``."""
    return body.index(secret.encode()) + keep


def test_truncated_json_cut_inside_a_secret_value(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    secret = token("cut") * 3
    body = json.dumps({"user": "ada", "password": secret, "more": "x" * 50}).encode()
    limit = cut_inside(body, secret)
    app = make_app(TRACKING_MAX_BODY_LENGTH=limit)
    response = app.test_client().post("/echo", data=body, content_type="application/json")
    assert response.get_json()["password"] == secret
    [doc] = stored(app, mongo)
    assert doc["request_body_truncated"] is True
    assert doc["response_body_truncated"] is True
    assert_absent(doc, secret[:10])
    assert doc["request_body"].startswith(b'{"user": "ada", "password": "[Filtered]"')


def test_truncated_json_cut_inside_a_nested_secret_object(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    secret = token("nested") * 3
    body = json.dumps(
        {"a": 1, "credentials": {"user": "u", "key": secret, "other": "x" * 40}}
    ).encode()
    app = make_app(TRACKING_MAX_BODY_LENGTH=cut_inside(body, secret))
    app.test_client().post("/count", data=body, content_type="application/json")
    [doc] = stored(app, mongo)
    assert doc["request_body_truncated"] is True
    assert_absent(doc, secret[:10])
    assert doc["request_body"] == b'{"a": 1, "credentials": "[Filtered]"'


def test_truncated_json_cut_inside_a_nested_secret_object_with_secret_keys(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    secret = token("nested") * 3
    body = json.dumps(
        {"a": 1, "credentials": {"token": "t", "private": secret, "other": "x" * 40}}
    ).encode()
    app = make_app(TRACKING_MAX_BODY_LENGTH=cut_inside(body, secret))
    app.test_client().post("/count", data=body, content_type="application/json")
    [doc] = stored(app, mongo)
    assert doc["request_body_truncated"] is True
    assert_absent(doc, secret[:10])


def test_invalid_json_body(app: Flask, client: Any, mongo: Any) -> None:
    secret = token("inv")
    body = f'{{"user": "ada", "password": "{secret}",}}'
    assert client.post("/ignore", data=body, content_type="application/json").data == b"ignored"
    [doc] = stored(app, mongo)
    assert_absent(doc, secret)
    assert doc["request_body"] == b'{"user": "ada", "password": "[Filtered]",}'


def test_form_urlencoded_body(app: Flask, client: Any, mongo: Any) -> None:
    secret = token("form")
    seen: dict[str, str] = {}

    @app.post("/signin")
    def signin() -> str:
        seen.update(request.form.to_dict())
        return "welcome"

    assert client.post("/signin", data={"user": "ada", "password": secret}).data == b"welcome"
    assert seen == {"user": "ada", "password": secret}
    [doc] = stored(app, mongo)
    assert_absent(doc, secret)
    assert doc["request_body"] == f"user=ada&password={FILTERED}".encode()


def test_json_sent_with_a_form_content_type_is_filtered(
    app: Flask, client: Any, mongo: Any
) -> None:
    # jQuery's $.ajax sends a string body as application/x-www-form-urlencoded unless told
    # otherwise; the view reads it with get_json(force=True). A body that is JSON is read as
    # JSON, as one declared text/plain (or nothing) is.
    secret = token("pw")
    seen: list[Any] = []

    @app.post("/api/login")
    def api_login() -> str:
        seen.append(request.get_json(force=True))
        return "ok"

    body = json.dumps({"user": "ada", "password": secret})
    client.post(
        "/api/login", data=body, content_type="application/x-www-form-urlencoded; charset=UTF-8"
    )
    assert seen == [{"user": "ada", "password": secret}]
    [doc] = stored(app, mongo)
    assert_absent(doc, secret)


def test_a_form_body_that_parses_as_json_keeps_no_pair_the_form_reads(
    app: Flask, client: Any, mongo: Any
) -> None:
    # A form body may also parse as JSON: Werkzeug's request.form still reads its key=value
    # pairs, and the password the view reads there is not kept because the JSON names none.
    secret = token("pw")
    seen: list[Any] = []

    @app.post("/login")
    def login() -> str:
        seen.append(request.form["password"])
        return "ok"

    body = '{"note": "x", "y&password=' + secret + '&z": 1}'
    client.post("/login", data=body, content_type="application/x-www-form-urlencoded")
    assert seen == [secret]
    [doc] = stored(app, mongo)
    assert_absent(doc, secret)


def test_credentials_in_a_form_and_a_query_string_as_a_browser_encodes_them(
    app: Flask, client: Any, mongo: Any
) -> None:
    """A form sends a card number's spaces as ``+`` and a URL's ``:``, ``/`` and ``@``
    percent-encoded; JavaScript's ``encodeURIComponent`` writes spaces as ``%20``."""
    password = "hunter2" + token("pw")[-6:]
    url = f"https://ada:{password}@db.example/x"
    seen: list[dict[str, str]] = []

    @app.route("/checkout", methods=["GET", "POST"])
    def checkout() -> str:
        seen.append({**request.args.to_dict(), **request.form.to_dict()})
        return "ok"

    browser = f"card=4111+1111+1111+1111&next={quote(url, safe='')}"  # as browsers encode
    client.post("/checkout", data=browser, content_type="application/x-www-form-urlencoded")
    client.get(f"/checkout?{browser}", headers={"Referer": f"https://shop.example/?{browser}"})
    client.get("/checkout?card=4111%201111%201111%201111&pin=1")
    assert seen[:2] == [{"card": "4111 1111 1111 1111", "next": url}] * 2
    assert seen[2]["card"] == "4111 1111 1111 1111"
    post, get, script = sorted(stored(app, mongo), key=lambda doc: doc["date_created"])
    encoded_url = f"https%3A%2F%2Fada%3A{FILTERED}%40db.example%2Fx"
    assert post["request_body"] == f"card={FILTERED}&next={encoded_url}".encode()
    assert get["query_params"] == f"card={FILTERED}&next={encoded_url}"
    assert get["referrer"] == f"https://shop.example/?card={FILTERED}&next={encoded_url}"
    assert script["query_params"] == f"card={FILTERED}&pin={FILTERED}"
    for doc in (post, get, script):
        assert_absent(doc, password, "4111")


def test_a_url_encoded_twice_in_a_body_is_filtered(app: Flask, client: Any, mongo: Any) -> None:
    """A value encoded twice (``%253A%252F%252F``, a URL in a parameter of a URL in a
    parameter once the outer one is decoded): the body holds no other hint of a credential,
    and is still looked at."""
    password = "hunter2" + token("pw")[-6:]
    body = "next=" + quote(quote(f"https://ada:{password}@db.example/x", safe=""), safe="")
    client.post("/echo", data=body, content_type="application/x-www-form-urlencoded")
    client.post("/echo", data=body, content_type="text/plain")
    for doc in stored(app, mongo):
        assert_absent(doc, password)
        assert FILTERED.encode() in doc["request_body"]


def test_escapes_inside_escapes_do_not_hide_a_credential(
    app: Flask, client: Any, mongo: Any
) -> None:
    """JSON sent in a form's field (its slashes escaped, then URL-encoded), a tab written as
    JSON's ``\\t`` after ``Bearer``, a card number after JSON's ``\\u0009``: each body holds
    no other hint of a credential, and is still looked at; a JSON body stays JSON."""
    password = "hunter2" + token("pw")[-6:]
    inner = json.dumps({"url": f"https://ada:{password}@db.example/x"}).replace("/", "\\/")
    form = "data=" + quote(inner, safe="")
    assert "%5C%2F" in form
    client.post("/echo", data=form, content_type="application/x-www-form-urlencoded")
    tab = b'{"h": "Bearer\\t' + password.encode() + b'"}'
    client.post("/echo", data=tab, content_type="application/json")
    card = b'{"n": "\\u00094111111111111111"}'
    client.post("/echo", data=card, content_type="application/json")
    docs = sorted(stored(app, mongo), key=lambda doc: doc["date_created"])
    assert len(docs) == 3
    for doc in docs:
        assert_absent(doc, password, "4111")
        assert FILTERED.encode() in doc["request_body"]
    assert json.loads(docs[1]["request_body"]) == {"h": f"Bearer\t{FILTERED}"}
    assert json.loads(docs[2]["request_body"]) == {"n": f"\t{FILTERED}"}


def test_form_urlencoded_response_body(app: Flask, client: Any, mongo: Any) -> None:
    secret = token("form")

    @app.get("/form-out")
    def form_out() -> Any:
        body = f"session_key={secret}&next=/home"
        return app.response_class(body, mimetype="application/x-www-form-urlencoded")

    client.get("/form-out")
    [doc] = stored(app, mongo)
    assert_absent(doc, secret)
    assert doc["response_body"] == f"session_key={FILTERED}&next=/home".encode()


def test_multipart_text_and_file_parts(app: Flask, client: Any, mongo: Any) -> None:
    password, key_material = token("mp"), token("pem")
    pem = f"-----BEGIN PRIVATE KEY-----\n{key_material}\n-----END PRIVATE KEY-----\n"
    seen: dict[str, Any] = {}

    @app.post("/upload")
    def upload() -> str:
        seen["password"] = request.form["password"]
        seen["key"] = request.files["private_key"].read().decode()
        seen["avatar"] = request.files["avatar"].read()
        return "uploaded"

    data = {
        "user": "ada",
        "password": password,
        "private_key": (io.BytesIO(pem.encode()), "id_rsa.pem"),
        "avatar": (io.BytesIO(b"PNG-bytes"), "a.png"),
    }
    assert client.post("/upload", data=data, content_type="multipart/form-data").status_code == 200
    assert seen == {"password": password, "key": pem, "avatar": b"PNG-bytes"}
    [doc] = stored(app, mongo)
    assert_absent(doc, password, key_material)
    assert_present(doc, "ada", "PNG-bytes", 'filename="id_rsa.pem"')
    assert doc["request_body"].count(FILTERED.encode()) == 2


def test_multipart_empty_field_before_a_secret_field(app: Flask, client: Any, mongo: Any) -> None:
    password = token("mp")
    data = {"note": "", "password": password}
    response = client.post("/form", data=data, content_type="multipart/form-data")
    assert response.data.decode() == f"note=,password={password}"
    [doc] = stored(app, mongo)
    assert_absent(doc, password)


@pytest.mark.parametrize(
    "body",
    [
        # lines ending in CR alone, which Werkzeug reads as line breaks (a blank line: CR CR)
        b'--b0\rContent-Disposition: form-data; name="password"\r\r{secret}\r--b0--\r',
    ],
)
def test_multipart_parts_with_lines_ending_in_cr_alone_are_read_as_werkzeug_reads_them(
    app: Flask, client: Any, mongo: Any, body: bytes
) -> None:
    password = token("mp")
    body = body.replace(b"{secret}", password.encode())
    response = client.post("/form", data=body, content_type="multipart/form-data; boundary=b0")
    assert response.data.decode() == f"password={password}"  # the view reads it so
    [doc] = stored(app, mongo)
    assert_absent(doc, password)


@pytest.mark.parametrize(
    ("content_type", "disposition"),
    [
        # RFC 2231 continuations: Werkzeug joins name*0 and name*1 into "password"
        ("multipart/form-data; boundary=b0", b"form-data; name*0=pass; name*1=word"),
        # a folded header line (obs-fold), which Werkzeug unfolds
        ("multipart/form-data; boundary=b0", b'form-data;\r\n\tname="password"'),
        # another parameter ending in "boundary": Werkzeug reads the boundary parameter itself
        ("multipart/form-data; x-boundary=zz; boundary=b0", b'form-data; name="password"'),
        # a boundary given twice: Werkzeug keeps the last
        ("multipart/form-data; boundary=zz; boundary=b0", b'form-data; name="password"'),
    ],
)
def test_multipart_secret_parts_are_named_as_werkzeug_reads_them(
    app: Flask, client: Any, mongo: Any, content_type: str, disposition: bytes
) -> None:
    password = token("mp")
    body = (
        b"--b0\r\nContent-Disposition: "
        + disposition
        + b"\r\n\r\n"
        + password.encode()
        + b"\r\n--b0--\r\n"
    )
    response = client.post("/form", data=body, content_type=content_type)
    assert response.data.decode() == f"password={password}"  # the view reads it so
    [doc] = stored(app, mongo)
    assert_absent(doc, password)


def test_text_plain_body(app: Flask, client: Any, mongo: Any) -> None:
    secret = token("plain")
    client.post("/ignore", data=f"user=ada\npassword={secret}\n", content_type="text/plain")
    [doc] = stored(app, mongo)
    assert_absent(doc, secret)
    assert doc["request_body"] == f"user=ada\npassword={FILTERED}\n".encode()


def test_text_plain_values_with_spaces(app: Flask, client: Any, mongo: Any) -> None:
    secret, bearer = token("words"), token("bearer")
    body = f"passphrase: correct horse {secret}\nAuthorization: Bearer {bearer}\n"
    client.post("/ignore", data=body, content_type="text/plain")
    [doc] = stored(app, mongo)
    assert_absent(doc, secret, bearer)


def test_prose_after_basic_or_bearer_is_kept_in_a_page(app: Flask, mongo: Any) -> None:
    bearer = token("bearer")
    page = (
        "<h2>Basic features</h2><p>Bearer tokens expire.</p>"
        f"<pre>curl -H 'Authorization: Bearer {bearer}'</pre>"
    )

    @app.get("/pricing")
    def pricing() -> str:
        return page

    assert app.test_client().get("/pricing").get_data(as_text=True) == page
    [doc] = stored(app, mongo)
    assert_absent(doc, bearer)
    assert doc["response_body"] == page.replace(bearer, FILTERED).encode()


def stored_page(app: Flask, mongo: Any, page: str) -> dict[str, Any]:
    """The record of a GET of ``page``, served by the app unchanged."""
    app.add_url_rule("/settings", "settings", lambda: page)
    assert app.test_client().get("/settings").get_data(as_text=True) == page
    [doc] = stored(app, mongo)
    return doc


def test_form_fields_and_script_values_named_secret_in_a_page_are_filtered(
    app: Flask, mongo: Any
) -> None:
    csrf, key = token("csrf"), token("key")
    page = (
        f'<head><meta name="csrf-token" content="{csrf}"></head><form method="post">'
        f'<input id="csrf_token" name="csrf_token" type="hidden" value="{csrf}">'
        f'<input name="api_key" value="{key}" readonly><input name="email" value="ada@x.org">'
        f'</form><script>const csrfToken = "{csrf}"; fetch("/x", {{method: "POST"}});</script>'
        f'<div hx-headers=\'{{"X-CSRFToken": "{csrf}"}}\'></div>'
        '<meta name="twitter:card" content="summary">'
    )

    doc = stored_page(app, mongo, page)
    assert_absent(doc, csrf, key)
    assert doc["response_body"] == page.replace(csrf, FILTERED).replace(key, FILTERED).encode()


def test_a_secret_field_with_a_comparison_in_another_attribute_is_filtered(
    app: Flask, mongo: Any
) -> None:
    # Alpine.js and Vue write expressions into attributes, and a template leaves the text it
    # was given as it is: a "<" in one is no reason to keep the field's value.
    key = token("key")
    page = (
        '<form x-data="{ left: 3 }">'
        f'<input name="api_key" value="{key}" readonly x-bind:disabled="left < 1">'
        "</form>"
    )

    assert_absent(stored_page(app, mongo, page), key)


def test_a_secret_field_after_an_attribute_holding_a_comparison_is_filtered(
    app: Flask, mongo: Any
) -> None:
    # The "<" in quotes comes before the field's name (Vue's :disabled, Alpine's x-bind): the
    # tag is read from its own "<", not from the one inside the quoted expression.
    key, pin = token("key"), token("pin")
    page = (
        '<form x-data="{ left: 3 }">'
        f'<input x-bind:disabled="left < 1" name="api_key" value="{key}" readonly>'
        f"<input :class=\"{{ short: pin.length<4 }}\" name='pin' value='{pin}'>"
        "</form>"
    )

    @app.get("/settings")
    def settings() -> str:
        return page

    assert app.test_client().get("/settings").get_data(as_text=True) == page
    [doc] = stored(app, mongo)
    assert_absent(doc, key, pin)
    assert doc["response_body"] == page.replace(key, FILTERED).replace(pin, FILTERED).encode()


def test_a_path_segment_bound_to_a_secret_variable_is_filtered(app: Flask, mongo: Any) -> None:
    reset, item = token("reset"), token("item")

    @app.get("/reset/<token>")
    def reset_password(token: str) -> str:
        return f"reset {len(token)}"

    @app.get("/items/<name>/<uuid:access_key>")
    def item_page(name: str, access_key: Any) -> str:
        return name

    client = app.test_client()
    assert client.get(f"/reset/{reset}").get_data(as_text=True) == f"reset {len(reset)}"
    key = "5f0c9c9e-8c6a-4c0e-9d0e-1b2c3d4e5f60"
    assert client.get(f"/items/{item}/{key}?page=2").get_data(as_text=True) == item
    first, second = stored(app, mongo)
    assert first["path"] == f"/reset/{FILTERED}"
    assert first["url_rule"] == "/reset/<token>"
    assert second["path"] == f"/items/{item}/{FILTERED}"
    assert second["query_params"] == "page=2"
    assert_absent(first, reset)
    assert key not in str(second)


def test_a_reset_page_s_form_keeps_no_token_in_its_action(app: Flask, mongo: Any) -> None:
    reset = token("reset")

    @app.get("/reset/<token>")
    def reset_page(token: str) -> str:
        return (
            f'<form action="/reset/{token}" method="post">'
            '<input type="password" name="password"><button>Save</button></form>'
            f'<script>const again = "/reset/{token}?step=2";</script>'
        )

    page = app.test_client().get(f"/reset/{reset}").get_data(as_text=True)
    assert reset in page  # the client got its link
    [record] = stored(app, mongo)
    assert_absent(record, reset)
    assert record["response_body"] == page.replace(reset, FILTERED).encode()


def test_a_path_no_rule_matched_is_filtered_by_the_rule_it_looks_like(
    app: Flask, mongo: Any
) -> None:
    reset = token("reset")

    @app.get("/reset/<token>")
    def reset_password(token: str) -> str:
        return "form"

    @app.get("/cards/<int:card_id>")
    def card(card_id: int) -> str:
        return "card"

    client = app.test_client()
    client.get("/cards/7")  # an id, kept; the rules are learnt
    assert client.put(f"/reset/{reset}").status_code == 405
    assert client.get(f"/reset//{reset}").status_code in (308, 404)
    assert client.get(f"/reset/{reset}/").status_code == 404
    cards, put, merged, slash = stored(app, mongo)
    assert cards["path"] == "/cards/7"
    assert [record["path"] for record in (put, merged, slash)] == [
        f"/reset/{FILTERED}",
        f"/reset/{FILTERED}",
        f"/reset/{FILTERED}/",
    ]
    assert_absent(put, reset)
    assert_absent(slash, reset)
    assert_absent(merged, reset)  # a redirect's Location, and the link of its page


def add_reset_and_its_redirect(app: Flask, reset: str) -> None:
    """A password-reset page (``/reset/<token>``) and ``POST /forgot``, which redirects to it
    with the ``reset`` token in its path."""

    @app.get("/reset/<token>")
    def reset_password(token: str) -> str:
        return "form"

    @app.post("/forgot")
    def forgot() -> Any:
        return redirect(url_for("reset_password", token=reset))


def test_a_redirect_to_a_page_with_a_secret_variable_keeps_no_token_in_its_page(
    app: Flask, mongo: Any
) -> None:
    """Werkzeug's redirect page names no secret field, but its link names the page."""
    reset, confirm = token("reset"), token("confirm")

    add_reset_and_its_redirect(app, reset)

    @app.get("/confirm/<token>/")  # a request without the last slash is redirected
    def confirm_email(token: str) -> str:
        return "confirmed"

    client = app.test_client()
    response = client.post("/forgot")
    assert response.status_code in (302, 303)
    assert f'href="/reset/{reset}"' in response.get_data(True)
    assert client.get(f"/confirm/{confirm}").status_code == 308
    forgot_record, slash_record = stored(app, mongo)
    assert_absent(forgot_record, reset)
    assert_absent(slash_record, confirm)
    assert f'href="/reset/{FILTERED}"'.encode() in forgot_record["response_body"]
    assert slash_record["path"] == f"/confirm/{FILTERED}"


def test_a_page_redirecting_by_a_refresh_or_a_script_keeps_no_token(app: Flask, mongo: Any) -> None:
    """A page naming no secret field that sends the browser on to a page with a secret
    variable, without Werkzeug's redirect."""
    reset = token("reset")

    @app.get("/reset/<token>")
    def reset_password(token: str) -> str:
        return "form"

    @app.post("/forgot")
    def forgot() -> str:
        url = url_for("reset_password", token=reset)
        return (
            f'<meta http-equiv="refresh" content="3; url={url}"><p>Sent!</p>'
            f'<script>setTimeout(() => location.assign("{url}"), 3000)</script>'
        )

    page = app.test_client().post("/forgot").get_data(as_text=True)
    [record] = stored(app, mongo)
    assert_absent(record, reset)
    assert record["response_body"] == page.replace(reset, FILTERED).encode()


def test_a_sign_in_page_s_next_url_keeps_no_token(app: Flask, mongo: Any) -> None:
    """A page with a secret variable that asks to sign in first sends the browser on with
    its own URL in ``next`` (as Flask-Login does): the query of the redirect, of its page's
    link, of the sign-in page's request and form (its action, a hidden field), of a
    Referer."""
    confirm = token("confirm")

    @app.get("/confirm/<token>")
    def confirm_email(token: str) -> Any:
        return redirect(url_for("login", next=request.full_path))

    @app.get("/login")
    def login() -> str:
        back = request.args["next"]
        return (
            f'<form method=post action="{url_for("login", next=back)}">'
            f'<input type=hidden name=next value="{back}"><input type=password name=password>'
        )

    client = app.test_client()
    location = client.get(f"/confirm/{confirm}").headers["Location"]
    assert confirm in location
    client.get(location)
    client.get("/hello", headers={"Referer": f"http://localhost{location}"})
    records = stored(app, mongo)
    for record in records:
        assert_absent(record, confirm)
    assert headers_of(records[0], "response_headers")["location"] == [
        f"/login?next=/confirm/{FILTERED}%3F"
    ]
    assert records[1]["query_params"] == f"next=/confirm/{FILTERED}%3F"
    assert f'action="/login?next=/confirm/{FILTERED}%3F"'.encode() in records[1]["response_body"]
    assert records[2]["referrer"] == f"http://localhost/login?next=/confirm/{FILTERED}%3F"


def test_a_return_url_s_own_query_keeps_no_token(app: Flask, mongo: Any) -> None:
    """A parameter whose value is a URL with a query of its own (a sign-in page's ``next``
    holding the page's token, an OAuth ``redirect_uri``), raw or percent-encoded: in the
    request's query, a redirect's Location, a page's link and a Referer."""
    reset, code = token("reset"), token("code")
    back = f"/account/reset?token={reset}"
    callback = f"https://app.example/cb?code={code}&state=1"

    @app.get("/login")
    def login() -> Any:
        return redirect(url_for("signin", next=request.args["next"]))

    @app.get("/signin")
    def signin() -> str:
        return f'<a href="{url_for("signin", next=request.args["next"])}">again</a>'

    client = app.test_client()
    client.get(f"/login?next={back}")  # raw
    client.get("/login", query_string={"next": back})  # percent-encoded
    client.get("/signin", query_string={"redirect_uri": callback, "next": back})
    client.get("/hello", headers={"Referer": f"http://localhost/login?next={quote(back)}"})
    records = stored(app, mongo)
    assert len(records) == 4
    for record in records:
        assert_absent(record, reset, code)
    assert records[0]["query_params"] == f"next=/account/reset?token={FILTERED}"
    assert_present(records[0], f"token%3D{FILTERED}")  # the Location url_for wrote, encoded
    assert records[1]["query_params"] == f"next=/account/reset?token%3D{FILTERED}"  # as it came
    # Werkzeug wrote it https://app.example/cb?code%3D...%26state%3D1: a raw query, whose one
    # parameter's value runs to the end.
    assert_present(records[2], f"/cb?code%3D{FILTERED}")
    assert records[3]["referrer"] == (
        f"http://localhost/login?next=/account/reset%3Ftoken%3D{FILTERED}"
    )


def test_a_redirect_s_page_with_a_percent_encoded_next_url_keeps_no_token(
    app: Flask, mongo: Any
) -> None:
    """Flask-Login writes ``next`` with its slashes percent-encoded: the redirect's page,
    naming no secret field, holds the page's path only so."""
    confirm = token("confirm")

    @app.get("/confirm/<token>")
    def confirm_email(token: str) -> Any:
        return redirect("/login?" + urlencode({"next": request.full_path}))

    client = app.test_client()
    assert "%2Fconfirm%2F" in client.get(f"/confirm/{confirm}").get_data(as_text=True)
    [record] = stored(app, mongo)
    assert_absent(record, confirm)
    assert f"/login?next=/confirm/{FILTERED}%3F".encode() in record["response_body"]


@pytest.mark.parametrize("kept", [20, 70])  # cut in the link, or in its text
def test_a_redirect_s_page_cut_inside_its_link_keeps_no_part_of_the_token(
    make_app: Callable[..., Flask], mongo: Any, kept: int
) -> None:
    reset = token("reset")
    page = redirect(f"/reset/{reset}").get_data()
    app = make_app(TRACKING_MAX_BODY_LENGTH=page.index(reset.encode()) + kept)

    add_reset_and_its_redirect(app, reset)

    assert app.test_client().post("/forgot").get_data() == page
    [record] = stored(app, mongo)
    assert_absent(record, reset[:12])
    assert f"/reset/{FILTERED}".encode() in record["response_body"]


def test_a_url_naming_a_page_with_a_secret_variable_is_filtered(app: Flask, mongo: Any) -> None:
    """The page's form posts back to its own URL, the browser naming it in Referer; the
    app then redirects to another page of the same kind."""
    reset, other = token("reset"), token("other")

    @app.route("/reset/<token>", methods=["GET", "POST"])
    def reset_password(token: str) -> Any:
        if request.method == "GET":
            return "form"
        return redirect(f"/reset/{other}?step=2", 303)

    client = app.test_client()
    client.get("/about")  # the first request: no page with a secret variable seen yet
    page = f"http://localhost/reset/{reset}"
    response = client.post(f"/reset/{reset}", headers={"Referer": f"{page}?from=mail#top"})
    assert response.headers["Location"] == f"/reset/{other}?step=2"
    client.get("/about", headers={"Referer": page})
    client.get("/about", headers={"Referer": "https://elsewhere.example/reset"})
    _, posted, about, elsewhere = stored(app, mongo)
    assert_absent(posted, reset, other)
    assert posted["referrer"] == f"http://localhost/reset/{FILTERED}?from=mail#top"
    assert headers_of(posted, "response_headers")["location"] == [f"/reset/{FILTERED}?step=2"]
    assert about["referrer"] == f"http://localhost/reset/{FILTERED}"
    assert elsewhere["referrer"] == "https://elsewhere.example/reset"


def test_streamed_response_body_with_secrets(app: Flask, mongo: Any) -> None:
    secret = token("stream")

    @app.get("/tokens")
    def tokens() -> Any:
        def generate() -> Any:
            yield '{"refresh_token": "'
            yield secret
            yield '", "ok": 1}'

        return app.response_class(generate(), mimetype="application/json")

    response = app.test_client().get("/tokens", buffered=True)
    assert secret in response.get_data(as_text=True)
    [doc] = stored(app, mongo)
    assert_absent(doc, secret)
    assert json.loads(doc["response_body"]) == {"refresh_token": FILTERED, "ok": 1}


def test_error_page_is_recorded_scrubbed(app: Flask, mongo: Any) -> None:
    secret = token("err")
    response = app.test_client(use_cookies=False).get(
        f"/no-such-page?token={secret}", headers={"Cookie": f"sid={secret}"}, buffered=True
    )
    assert response.status_code == 404
    [doc] = stored(app, mongo)
    assert doc["status_code"] == 404
    assert_absent(doc, secret)


def test_an_exception_s_message_is_scrubbed(app: Flask, mongo: Any) -> None:
    # Messages quote what failed: a client library's URL with its query, a connection URL
    # with its password, a header it sent.
    api_key, password = token("key"), token("pw")

    @app.get("/charge")
    def charge() -> str:
        raise ConnectionError(
            f"Max retries exceeded with url: /v1/charges?api_key={api_key} "
            f"(via https://ada:{password}@proxy.example:3128, Authorization: Bearer {JWT})"
        )

    with pytest.raises(ConnectionError):
        app.test_client().get("/charge")
    [doc] = stored(app, mongo)
    assert doc["exception"].startswith("ConnectionError: Max retries exceeded")
    assert_absent(doc, api_key, password, JWT)


def test_an_exception_named_with_a_secret_word_keeps_its_message(app: Flask, mongo: Any) -> None:
    # "Type: message" is the record's own format: the type is no key whose value is secret
    # (PyJWT's ExpiredSignatureError, Flask-WTF's CSRFError, an app's TokenExpired).
    class TokenExpired(Exception):
        pass

    @app.get("/reset")
    def reset() -> str:
        raise TokenExpired("the reset link is older than a day")

    with pytest.raises(TokenExpired):
        app.test_client().get("/reset")
    [doc] = stored(app, mongo)
    assert doc["exception"] == "TokenExpired: the reset link is older than a day"


# --- custom data -------------------------------------------------------------------------------


def test_custom_data_with_nested_secret_keys(app: Flask, mongo: Any) -> None:
    secrets = [token(f"c{i}") for i in range(4)]
    data = {
        "order": 42,
        "payment": {"card_number": secrets[0], "cvv": secrets[1], "amount": 9.5},
        "items": [{"sku": "a", "api_key": secrets[2]}, ["x", {"session": {"id": secrets[3]}}]],
        "connect.sid": "also-a-secret",
    }

    @app.get("/custom-secrets")
    def custom_secrets() -> str:
        request._tracking_data = data
        return "ok"

    app.test_client().get("/custom-secrets")
    [doc] = stored(app, mongo)
    assert_absent(doc, *secrets, "also-a-secret")
    assert data["payment"]["cvv"] == secrets[1], "the app's own object was changed"
    assert doc["custom_data"]["order"] == 42
    assert doc["custom_data"]["payment"] == {
        "card_number": FILTERED,
        "cvv": FILTERED,
        "amount": 9.5,
    }
    assert doc["custom_data"]["items"] == [
        {"sku": "a", "api_key": FILTERED},
        ["x", {"session": FILTERED}],
    ]


def test_custom_data_named_tuples_keep_their_secret_fields_filtered(app: Flask, mongo: Any) -> None:
    # A named tuple names its fields as a dict does; stored as a list, its names are lost
    # before they are read, and a dataclass (stored as its repr) keeps them.
    from collections import namedtuple

    Login = namedtuple("Login", ["user", "password"])
    password = token("pw")

    @app.get("/named")
    def named() -> str:
        request._tracking_data = {"login": Login("ada", password)}
        return "ok"

    app.test_client().get("/named")
    [doc] = stored(app, mongo)
    assert_absent(doc, password)


# --- word-wise matching end to end -------------------------------------------------------------


def test_word_wise_matching(app: Flask, client: Any, mongo: Any) -> None:
    secrets = {name: token(name) for name in ("userPassword", "card_number", "creditCardNumber")}
    innocent = {"author": "Ada Lovelace", "spinner": "on", "bypass": "yes"}
    client.post("/ignore", json={**secrets, **innocent})
    [doc] = stored(app, mongo)
    assert_absent(doc, *secrets.values())
    assert json.loads(doc["request_body"]) == {**dict.fromkeys(secrets, FILTERED), **innocent}


def test_short_and_two_word_secret_names(app: Flask, client: Any, mongo: Any) -> None:
    names = ("pw", "new_pw", "security_answer", "securityAnswer2", "recovery_codes", "backupCode")
    secrets = {name: token(name.replace("_", "")) for name in names}
    innocent = {"power": "on", "answer": "42", "security_question": "first pet?", "backup": "no"}
    client.post(f"/ignore?{urlencode(secrets)}", json={**secrets, **innocent})
    client.post("/form", data={**secrets, **innocent})
    json_doc, form_doc = stored(app, mongo)
    for doc in (json_doc, form_doc):
        assert_absent(doc, *secrets.values())
        assert_present(doc, *innocent.values())
    assert json.loads(json_doc["request_body"]) == {**dict.fromkeys(secrets, FILTERED), **innocent}
    assert json_doc["query_params"] == "&".join(f"{name}={FILTERED}" for name in secrets)


# --- configuration -----------------------------------------------------------------------------


def test_redact_false_stores_everything_verbatim(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_REDACT=False)
    secret = token("verbatim")

    @app.post("/all")
    def everything() -> Any:
        request._tracking_data = {"password": secret}
        response = jsonify(access_token=secret)
        response.set_cookie("session", secret)
        return response

    app.test_client(use_cookies=False).post(
        f"/all?token={secret}",
        json={"password": secret},
        headers={"Authorization": secret, "Cookie": f"sid={secret}"},
    )
    [doc] = stored(app, mongo)
    assert doc["query_params"] == f"token={secret}"
    assert headers_of(doc)["authorization"] == [secret]
    assert headers_of(doc)["cookie"] == [f"sid={secret}"]
    assert secret in headers_of(doc, "response_headers")["set-cookie"][0]
    assert json.loads(doc["request_body"]) == {"password": secret}
    assert json.loads(doc["response_body"]) == {"access_token": secret}
    assert doc["custom_data"] == {"password": secret}
    assert FILTERED.encode() not in bson.encode(doc)


def test_redact_fields_list_extends_the_defaults(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_REDACT_FIELDS=["email", "date of birth"])
    email, password, dob = token("mail"), token("pw"), token("dob")
    app.test_client().post(
        f"/ignore?email={email}",
        json={"email": email, "password": password, "dateOfBirth": dob, "name": "ada"},
    )
    [doc] = stored(app, mongo)
    assert_absent(doc, email, password, dob)
    assert json.loads(doc["request_body"])["name"] == "ada"


def test_redact_fields_replace_drops_the_defaults(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_REDACT_FIELDS={"replace": ["email"]})
    email, password, bearer = token("mail"), token("pw"), token("bearer")
    app.test_client().post(
        f"/ignore?password={password}",
        json={"email": email, "password": password},
        headers={"Authorization": bearer},
    )
    [doc] = stored(app, mongo)
    assert_absent(doc, email, bearer)  # the header list still has its defaults
    assert json.loads(doc["request_body"]) == {"email": FILTERED, "password": password}
    assert doc["query_params"] == f"password={password}"


def test_redact_headers_list_extends_the_defaults(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_REDACT_HEADERS=["X-Tenant-Signature"])
    signature, bearer = token("sig"), token("bearer")
    app.test_client().get(
        "/hello", headers={"X-Tenant-Signature": signature, "Authorization": bearer}
    )
    [doc] = stored(app, mongo)
    assert headers_of(doc)["x-tenant-signature"] == [FILTERED]
    assert headers_of(doc)["authorization"] == [FILTERED]
    assert_absent(doc, signature, bearer)


def test_redact_headers_replace_alone_still_filters_secret_field_names(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    """A header whose name is a secret field (Cookie, Authorization, X-Api-Key) stays filtered
    while TRACKING_REDACT_FIELDS keeps its defaults: replacing the header list alone only
    drops the header names that are not field names."""
    app = make_app(TRACKING_REDACT_HEADERS={"replace": ["X-Mine"]})
    values = {"X-Mine": token("mine"), "Cookie": token("c"), "Authorization": token("a")}
    app.test_client(use_cookies=False).get("/hello", headers=values)
    [doc] = stored(app, mongo)
    assert_absent(doc, *values.values())


def test_redact_headers_and_fields_replaced_store_default_headers(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(
        TRACKING_REDACT_HEADERS={"replace": ["X-Mine"]},
        TRACKING_REDACT_FIELDS={"replace": ["ssn"]},
    )
    mine, cookie, bearer, api_key = token("mine"), token("c"), token("a"), token("k")
    app.test_client(use_cookies=False).get(
        "/hello",
        headers={"X-Mine": mine, "Cookie": cookie, "Authorization": bearer, "X-Api-Key": api_key},
    )
    [doc] = stored(app, mongo)
    found = headers_of(doc)
    assert found["x-mine"] == [FILTERED]
    assert found["cookie"] == [cookie]
    assert found["authorization"] == [bearer]
    assert found["x-api-key"] == [api_key]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("TRACKING_REDACT", "yes"),
        ("TRACKING_REDACT", 1),
        ("TRACKING_REDACT", None),
        ("TRACKING_ANONYMIZE_IP", "true"),
        ("TRACKING_ANONYMIZE_IP", 0),
        ("TRACKING_REDACT_FIELDS", "password"),
        ("TRACKING_REDACT_FIELDS", None),
        ("TRACKING_REDACT_FIELDS", [""]),
        ("TRACKING_REDACT_FIELDS", ["ok", 3]),
        ("TRACKING_REDACT_FIELDS", {"replace": "password"}),
        ("TRACKING_REDACT_FIELDS", {"extend": ["password"]}),
        ("TRACKING_REDACT_FIELDS", {"replace": ["a"], "extra": []}),
        ("TRACKING_REDACT_FIELDS", {}),
        ("TRACKING_REDACT_HEADERS", "Authorization"),
        ("TRACKING_REDACT_HEADERS", [None]),
        ("TRACKING_REDACT_HEADERS", {"replace": None}),
        ("TRACKING_REDACT_HEADERS", {"Replace": []}),
    ],
)
def test_invalid_redaction_settings_raise_at_init(
    make_app: Callable[..., Flask], key: str, value: Any
) -> None:
    with pytest.raises(ValueError, match=key):
        make_app(**{key: value})


def test_invalid_deny_lists_raise_even_with_redaction_off(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ValueError, match="TRACKING_REDACT_FIELDS"):
        make_app(TRACKING_REDACT=False, TRACKING_REDACT_FIELDS="password")
    with pytest.raises(ValueError, match="TRACKING_REDACT_HEADERS"):
        make_app(TRACKING_REDACT=False, TRACKING_REDACT_HEADERS={"add": ["X-A"]})


def test_valid_redaction_settings_are_accepted(make_app: Callable[..., Flask]) -> None:
    make_app(TRACKING_REDACT_FIELDS=("a", "b"), TRACKING_REDACT_HEADERS={"replace": []})
    make_app(TRACKING_REDACT_FIELDS={"replace": {"x"}}, TRACKING_ANONYMIZE_IP=True)


# --- before_save -------------------------------------------------------------------------------


def test_before_save_changes_are_stored(app: Flask, mongo: Any) -> None:
    tracking = app.extensions["tracking"]

    @tracking.before_save
    def tag(document: dict[str, Any]) -> dict[str, Any]:
        document["custom_data"] = {"tagged": True}
        document["request_headers"] = []
        return document

    app.test_client().get("/hello", headers={"X-Anything": "x"})
    [doc] = stored(app, mongo)
    assert doc["custom_data"] == {"tagged": True}
    assert doc["request_headers"] == []


def test_before_save_none_drops_and_counts(app: Flask, mongo: Any) -> None:
    tracking = app.extensions["tracking"]
    tracking.before_save(lambda doc: None if doc["path"] == "/hello" else doc)
    client = app.test_client()
    client.get("/hello")
    client.get("/custom")
    client.get("/hello")
    docs = stored(app, mongo)
    assert [doc["path"] for doc in docs] == ["/custom"]
    stats = tracking.stats(app)
    assert stats["dropped_by_hook"] == 2
    assert stats["written"] == 1


def test_before_save_raising_drops_the_record_and_counts(app: Flask, mongo: Any) -> None:
    tracking = app.extensions["tracking"]
    secret = token("hook")

    @tracking.before_save
    def fragile(document: dict[str, Any]) -> dict[str, Any]:
        if document["path"] == "/boom-hook":
            raise RuntimeError("hook failed")
        return document

    @app.get("/boom-hook")
    def boom_hook() -> str:
        return "fine"

    client = app.test_client()
    assert client.get("/boom-hook", headers={"Authorization": secret}).data == b"fine"
    client.get("/hello")
    docs = stored(app, mongo)
    assert [doc["path"] for doc in docs] == ["/hello"]
    assert tracking.stats(app)["dropped_hook_error"] == 1
    assert mongo["tracking"].count_documents({"path": "/boom-hook"}) == 0


def test_before_save_calling_sys_exit_ends_only_the_writer_thread(app: Flask, mongo: Any) -> None:
    """A SystemExit from a hook ends the writer thread, not the app: the batch being written
    counts as dropped_write_error and the next flush starts another thread."""
    tracking = app.extensions["tracking"]

    @tracking.before_save
    def leaving(document: dict[str, Any]) -> dict[str, Any]:
        if document["path"] == "/custom":
            sys.exit(3)
        return document

    client = app.test_client()
    client.get("/custom")
    assert tracking.flush(5)
    client.get("/hello")
    assert [doc["path"] for doc in stored(app, mongo)] == ["/hello"]
    stats = tracking.stats(app)
    assert (stats["dropped_write_error"], stats["written"], stats["pending"]) == (1, 1, 0)


def test_before_save_sees_an_already_scrubbed_document(app: Flask, mongo: Any) -> None:
    tracking = app.extensions["tracking"]
    seen: list[bytes] = []
    tracking.before_save(lambda document: seen.append(bson.encode(document)) or document)
    secrets = [token(f"h{i}") for i in range(6)]

    @app.post("/hooked")
    def hooked() -> Any:
        request._tracking_data = {"secret": secrets[0]}
        response = jsonify(refresh_token=secrets[1])
        response.set_cookie("sid", secrets[2])
        return response

    app.test_client().post(
        f"/hooked?token={secrets[3]}",
        json={"password": secrets[4]},
        headers={"Authorization": secrets[5]},
    )
    [doc] = stored(app, mongo)
    assert len(seen) == 1
    for secret in secrets:
        assert secret.encode() not in seen[0]
    assert_absent(doc, *secrets)


def test_several_hooks_run_in_registration_order(app: Flask, mongo: Any) -> None:
    tracking = app.extensions["tracking"]
    order: list[str] = []

    @tracking.before_save
    def first(document: dict[str, Any]) -> dict[str, Any]:
        order.append("first")
        document["custom_data"] = ["first"]
        return document

    @tracking.before_save
    def second(document: dict[str, Any]) -> dict[str, Any]:
        order.append("second")
        assert document["custom_data"] == ["first"]
        return {**document, "custom_data": [*document["custom_data"], "second"]}

    app.test_client().get("/hello")
    [doc] = stored(app, mongo)
    assert order == ["first", "second"]
    assert doc["custom_data"] == ["first", "second"]


def test_a_dropping_hook_stops_the_later_hooks(app: Flask, mongo: Any) -> None:
    tracking = app.extensions["tracking"]
    later: list[str] = []
    tracking.before_save(lambda document: None)
    tracking.before_save(lambda document: later.append("ran") or document)
    app.test_client().get("/hello")
    assert stored(app, mongo) == []
    assert later == []


def test_a_hook_returning_a_non_dict_drops_only_its_record(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_FLUSH_INTERVAL_SECONDS=30)  # both records in one batch
    tracking = app.extensions["tracking"]
    tracking.before_save(lambda document: ["oops"] if document["path"] == "/hello" else document)
    client = app.test_client()
    client.get("/hello")
    client.get("/custom")
    docs = stored(app, mongo)
    assert [doc["path"] for doc in docs] == ["/custom"]
    assert tracking.stats(app)["dropped_hook_error"] == 1


# --- client IP ---------------------------------------------------------------------------------


def test_spoofed_forwarding_headers_never_change_ip(app: Flask, mongo: Any) -> None:
    client = app.test_client()
    client.get(
        "/hello",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "X-Real-IP": "7.7.7.7",
            "Forwarded": "for=8.8.8.8",
            "True-Client-IP": "9.9.9.9",
        },
    )
    client.get(
        "/hello",
        headers={"X-Forwarded-For": "6.6.6.6"},
        environ_base={"REMOTE_ADDR": "198.51.100.7"},
    )
    first, second = stored(app, mongo)
    assert first["ip"] == "127.0.0.1"
    assert second["ip"] == "198.51.100.7"
    assert headers_of(first)["x-forwarded-for"] == ["6.6.6.6"]  # kept: not anonymizing


@pytest.mark.parametrize("order", ["proxyfix_before_tracking", "proxyfix_after_tracking"])
def test_proxyfix_in_either_order_gives_the_proxied_client(mongo: Any, order: str) -> None:
    """ProxyFix rewrites the environ in place, and the tracker reads REMOTE_ADDR when the
    request ends: so the wrapping order does not matter, ``ip`` is the client ProxyFix trusts
    (the last X-Forwarded-For entry with x_for=1)."""
    app = Flask(order)
    app.config.update(TESTING=True, **FAST_WRITER)
    add_routes(app)

    @app.get("/remote")
    def remote() -> str:
        return request.remote_addr or "-"

    if order == "proxyfix_before_tracking":
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
        Tracking(app)
    else:
        Tracking(app)
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    try:
        response = app.test_client().get(
            "/remote",
            headers={"X-Forwarded-For": "6.6.6.6, 1.2.3.4"},
            environ_base={"REMOTE_ADDR": "10.0.0.2"},
        )
        assert response.data == b"1.2.3.4"
        # with no X-Forwarded-For, ProxyFix leaves REMOTE_ADDR alone
        app.test_client().get("/remote", environ_base={"REMOTE_ADDR": "10.0.0.2"})
        # a 404 page (no view ran) and a view that raises get the same address
        app.test_client().get(
            "/no-such-page",
            headers={"X-Forwarded-For": "6.6.6.6, 1.2.3.4"},
            environ_base={"REMOTE_ADDR": "10.0.0.2"},
        )
        with pytest.raises(ValueError):
            app.test_client().get(
                "/boom",
                headers={"X-Forwarded-For": "6.6.6.6, 1.2.3.4"},
                environ_base={"REMOTE_ADDR": "10.0.0.2"},
            )
        with_proxy, without, not_found, raised = stored(app, mongo)
        assert with_proxy["ip"] == "1.2.3.4"
        assert headers_of(with_proxy)["x-forwarded-for"] == ["6.6.6.6, 1.2.3.4"]
        assert without["ip"] == "10.0.0.2"
        assert (not_found["status_code"], not_found["ip"]) == (404, "1.2.3.4")
        assert (raised["status_code"], raised["ip"]) == (500, "1.2.3.4")
    finally:
        shutdown(app)


@pytest.mark.parametrize(
    ("remote", "expected"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("2001:db8:85a3:8d3:1319:8a2e:370:7348", "2001:db8:85a3::"),
    ],
)
def test_anonymize_ip(
    make_app: Callable[..., Flask], mongo: Any, remote: str, expected: str
) -> None:
    app = make_app(TRACKING_ANONYMIZE_IP=True)
    forwarded = {
        "X-Forwarded-For": "198.51.100.23, 203.0.113.77",
        "X-Real-IP": "198.51.100.23",
        "Forwarded": "for=198.51.100.23",
        "True-Client-IP": "198.51.100.23",
    }
    app.test_client().get("/hello", headers=forwarded, environ_base={"REMOTE_ADDR": remote})
    [doc] = stored(app, mongo)
    assert doc["ip"] == expected
    found = headers_of(doc)
    for name in forwarded:
        assert found[name.lower()] == [FILTERED], name
    assert_absent(doc, "198.51.100.23", remote)


def test_anonymize_ip_after_proxyfix(mongo: Any) -> None:
    app, _ = build_app(mongo, "anon_proxy", TRACKING_ANONYMIZE_IP=True)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    try:
        app.test_client().get("/hello", headers={"X-Forwarded-For": "6.6.6.6, 1.2.3.4"})
        [doc] = stored(app, mongo)
        assert doc["ip"] == "1.2.3.0"
        assert headers_of(doc)["x-forwarded-for"] == [FILTERED]
    finally:
        shutdown(app)


def test_anonymize_ip_without_redaction_still_filters_forwarding_headers(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_REDACT=False, TRACKING_ANONYMIZE_IP=True)
    app.test_client().get("/hello", headers={"X-Forwarded-For": "198.51.100.23"})
    [doc] = stored(app, mongo)
    assert doc["ip"] == "127.0.0.0"
    assert_absent(doc, "198.51.100.23")


# --- log injection -----------------------------------------------------------------------------


def test_str_and_debug_escape_injected_path_query_and_headers(app: Flask, mongo: Any) -> None:
    client = app.test_client()
    client.get("/hello%0d%0aForged-Line: 1?q=%0d%0a", buffered=True)
    client.get(
        "/hello",
        environ_overrides={
            "HTTP_X_EVIL": "ok\r\nForged-Header: yes\x1b[2J\x00\u2028",
            "QUERY_STRING": "a=1\r\nForged-Query: yes",
            "HTTP_USER_AGENT": "Mozilla\nForged-UA: yes",
        },
    )
    path_raw, header_raw = stored(app, mongo)
    assert path_raw["status_code"] == 404
    assert "\r\n" in path_raw["path"]
    for raw in (path_raw, header_raw):
        doc = TrackingDocument.objects.get(id=raw["_id"])
        line = str(doc)
        assert "\n" not in line and "\r" not in line and "\x1b" not in line
        assert len(line.splitlines()) == 1
        debug = doc.debug()
        for forged in ("Forged-Line", "Forged-Header", "Forged-Query", "Forged-UA"):
            assert not any(row.lstrip().startswith(forged) for row in debug.splitlines())
        assert "\x1b" not in debug and "\x00" not in debug and "\u2028" not in debug
    assert "\\r\\nForged-Line" in str(TrackingDocument.objects.get(id=path_raw["_id"]))
    header_debug = TrackingDocument.objects.get(id=header_raw["_id"]).debug()
    assert "X-Evil: ok\\r\\nForged-Header: yes\\x1b[2J\\x00\\u2028" in header_debug


# --- replay ------------------------------------------------------------------------------------


def test_replay_does_not_resend_filtered_headers_and_is_not_tracked(app: Flask, mongo: Any) -> None:
    received: list[dict[str, str]] = []

    @app.post("/replayable")
    def replayable() -> str:
        received.append(dict(request.headers))
        return "done"

    secrets = {
        "Authorization": token("a"),
        "Cookie": f"sid={token('c')}",
        "X-Api-Key": token("k"),
        "X-Auth-Token": token("t"),
    }
    client = app.test_client(use_cookies=False)
    client.post("/replayable?page=1", json={"x": 1}, headers={**secrets, "X-Trace": "keep"})
    [raw] = stored(app, mongo)
    tracking = app.extensions["tracking"]
    enqueued = tracking.stats(app)["enqueued"]
    with app.app_context():
        response = TrackingDocument.objects.get(id=raw["_id"]).replay()
    assert response.data == b"done"
    assert len(received) == 2
    replayed = received[1]
    assert replayed["X-Trace"] == "keep"
    assert replayed["Content-Type"] == "application/json"
    for name in secrets:
        assert name not in replayed, name
    assert FILTERED not in json.dumps(replayed)
    assert len(stored(app, mongo)) == 1
    assert tracking.stats(app)["enqueued"] == enqueued


def test_headers_query_and_custom_data_are_filtered_before_leaving_the_request_thread(
    app: Flask, mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, cookie, query_secret, data_secret = token("auth"), token("ck"), token("q"), token("d")
    queued: list[Any] = []
    writer = app.extensions["tracking"]._apps[app].writer
    submit = writer.submit

    def spy(state: Any, size: int) -> bool:
        queued.append(state)
        return submit(state, size)

    monkeypatch.setattr(writer, "submit", spy)

    @app.get("/login-cookie")
    def login_cookie() -> Any:
        request._tracking_data = {"api_key": data_secret, "plain": 1}
        response = jsonify(ok=True)
        response.set_cookie("session", cookie)
        return response

    app.test_client().get(
        f"/login-cookie?token={query_secret}&page=2", headers={"Authorization": f"Bearer {secret}"}
    )
    [state] = queued
    assert state.environ["HTTP_AUTHORIZATION"] == FILTERED
    assert state.environ["QUERY_STRING"] == f"token={FILTERED}&page=2"
    assert ("Set-Cookie", FILTERED) in list(state.response_headers)
    assert state.custom_data == {"api_key": FILTERED, "plain": 1}
    [doc] = stored(app, mongo)
    assert_absent(doc, secret, cookie, query_secret, data_secret)


# --- encodings, formats, credentials by their look ---------------------------------------------

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"


def add_raw_route(app: Flask) -> None:
    """POST /raw: reads the body as bytes, answers its length."""
    app.add_url_rule("/raw", "raw", lambda: str(len(request.get_data())), methods=["POST"])


def test_gzip_request_body_is_stored_decoded_and_scrubbed(
    app: Flask, client: Any, mongo: Any
) -> None:
    import gzip

    secret = token("gz")

    add_raw_route(app)

    body = gzip.compress(json.dumps({"user": "ada", "password": secret}).encode())
    client.post(
        "/raw",
        data=body,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    [doc] = stored(app, mongo)
    assert_absent(doc, secret)
    assert json.loads(doc["request_body"]) == {"user": "ada", "password": FILTERED}


def test_unreadable_bodies_are_omitted_with_the_reason(
    app: Flask, client: Any, mongo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = token("yaml")
    # As on a machine without brotli nor brotlicffi (the test extra brings brotli along with
    # Flask-Compress).
    monkeypatch.setattr("flask_tracking.content._brotli_decompressor", lambda: None)

    add_raw_route(app)

    client.post("/raw", data=f"password: {secret}\n", content_type="application/yaml")
    client.post("/raw", data=b"\x1b\x00 password", headers={"Content-Encoding": "br"})
    yaml_doc, br_doc = stored(app, mongo)
    assert_absent(yaml_doc, secret)
    assert yaml_doc["request_body"] is None
    assert yaml_doc["request_body_omitted"] == "format not scrubbable (application/yaml)"
    assert br_doc["request_body"] is None
    assert br_doc["request_body_omitted"] == "content-encoding br: no Brotli decoder installed"


def test_a_utf16_file_holding_a_url_password_is_not_kept_as_it_is(
    app: Flask, client: Any, mongo: Any
) -> None:
    # Excel's "Unicode text" export: UTF-16 with a byte-order mark, no charset declared. A
    # format that is not scrubbed is kept only when nothing in it can look like a credential.
    password = token("pw")

    add_raw_route(app)

    text = f"name\tdsn\nshop\tpostgres://ada:{password}@db.example/shop\n"
    client.post("/raw", data=text.encode("utf-16"), content_type="text/csv")
    [doc] = stored(app, mongo)
    kept = doc["request_body"]
    assert kept is None or password not in kept.decode("utf-16", "replace")


def test_credentials_by_their_look_in_headers_query_and_custom_data(app: Flask, mongo: Any) -> None:
    password = token("pw")

    @app.get("/look")
    def look() -> Any:
        request._tracking_data = {"note": f"Bearer {password}", "n": 1}
        response = redirect(f"https://ada:{password}@files.example/next")
        response.headers["Link"] = f"<https://bob:{password}@cdn.example/a>; rel=preload"
        response.headers["Refresh"] = f"5; url=https://eve:{password}@x.example/"
        return response

    app.test_client().get(
        f"/look?next={JWT}&q=1",
        headers={
            "X-Debug-Context": JWT,
            "Referer": f"https://carol:{password}@intranet.example/page",
            "Cf-Access-Jwt-Assertion": "anything",
            "X-Hub-Signature-256": "sha256=abc",
        },
    )
    [doc] = stored(app, mongo)
    assert_absent(doc, password, JWT)
    request_headers = headers_of(doc)
    assert request_headers["x-debug-context"] == [FILTERED]
    assert request_headers["cf-access-jwt-assertion"] == [FILTERED]
    assert request_headers["x-hub-signature-256"] == [FILTERED]
    assert doc["referrer"] == f"https://carol:{FILTERED}@intranet.example/page"
    response_headers = headers_of(doc, "response_headers")
    assert response_headers["location"] == [f"https://ada:{FILTERED}@files.example/next"]
    assert doc["query_params"] == f"next={FILTERED}&q=1"
    assert doc["custom_data"] == {"note": f"Bearer {FILTERED}", "n": 1}


@pytest.mark.parametrize("secret", PREFIXED_TOKENS.values(), ids=PREFIXED_TOKENS)
def test_a_service_s_token_is_stored_nowhere(app: Flask, mongo: Any, secret: str) -> None:
    # A GitHub, Stripe, Slack, Google, npm or OpenAI token under names that are no secret's:
    # in every place a record keeps, it is filtered by its look.
    @app.route("/deploy/<path:target>", methods=["GET", "POST"])
    def deploy(target: str) -> Any:
        request._tracking_data = {"note": f"deployed with {secret}", "raw": secret.encode()}
        if request.args.get("fail"):
            raise RuntimeError(f"upstream refused {secret}")
        response = app.make_response(jsonify(echo=secret, target=target))
        response.headers["X-Upstream-Note"] = f"used {secret}"
        return response

    client = app.test_client()
    headers = {"X-Debug-Context": secret, "Referer": f"https://app.example/?from={secret}"}
    client.get(f"/deploy/{secret}?note={secret}&q=1", headers=headers)
    client.post("/deploy/x", json={"note": secret, "list": [secret]})
    client.post("/deploy/x", data={"note": secret, "n": "1"})
    client.post("/deploy/x", data={"note": secret, "file": (io.BytesIO(secret.encode()), "a.txt")})
    client.post("/deploy/x", data=f"<r><note>{secret}</note></r>", content_type="application/xml")
    client.post("/deploy/x", data=f"deploy {secret}\n", content_type="text/plain")
    with pytest.raises(RuntimeError):
        client.get("/deploy/x?fail=1")
    documents = stored(app, mongo)
    assert len(documents) == 7
    for document in documents:
        assert_absent(document, secret)
    first = documents[0]
    assert first["path"] == f"/deploy/{FILTERED}"
    assert first["query_params"] == f"note={FILTERED}&q=1"
    assert first["referrer"] == f"https://app.example/?from={FILTERED}"
    assert headers_of(first)["x-debug-context"] == [FILTERED]
    assert headers_of(first, "response_headers")["x-upstream-note"] == [f"used {FILTERED}"]
    assert first["custom_data"] == {"note": f"deployed with {FILTERED}", "raw": FILTERED.encode()}
    assert json.loads(documents[1]["request_body"]) == {"note": FILTERED, "list": [FILTERED]}
    assert documents[-1]["exception"] == f"RuntimeError: upstream refused {FILTERED}"


def test_a_credential_in_the_user_agent_is_filtered_in_its_parsed_copy_too(
    app: Flask, mongo: Any
) -> None:
    # "every header value" is scrubbed by its look: the User-Agent's copy in user_agent.string
    # too (a CLI or SDK that appends its token, a JWT pasted into a test tool's agent field).
    password = token("pw")
    agent = f"deploy-bot/2.1 (Bearer {password}) {JWT}"
    app.test_client().get("/hello", headers={"User-Agent": agent})
    [doc] = stored(app, mongo)
    assert headers_of(doc)["user-agent"] == [f"deploy-bot/2.1 (Bearer {FILTERED}) {FILTERED}"]
    assert_absent(doc, password, JWT)


@pytest.mark.parametrize("separator", ["; ", " "])
def test_a_refresh_header_without_url_equals_keeps_no_token(
    app: Flask, mongo: Any, separator: str
) -> None:
    # Refresh is one of the URL headers; browsers follow "3; /path" and "3 /path" (the HTML
    # standard's refresh parsing takes ";", "," or whitespace alone after the delay) as they
    # follow "3; url=/path", and a page's <meta> refresh of that form is filtered already.
    reset, session = token("reset"), token("sess")

    @app.get("/reset/<token>")
    def reset_password(token: str) -> str:
        return "form"

    @app.post("/forgot")
    def forgot() -> Any:
        response = app.make_response("Sent!")
        response.headers.add("Refresh", f"3{separator}{url_for('reset_password', token=reset)}")
        response.headers.add("Refresh", f"0{separator}/welcome?session_token={session}")
        return response

    assert app.test_client().post("/forgot").headers.getlist("Refresh")
    [record] = stored(app, mongo)
    assert headers_of(record, "response_headers")["refresh"] == [
        f"3{separator}/reset/{FILTERED}",
        f"0{separator}/welcome?session_token={FILTERED}",
    ]
    assert_absent(record, reset, session)


def test_custom_data_bytes_are_scrubbed_like_its_strings(app: Flask, mongo: Any) -> None:
    # Custom data keeps bytes as bytes (a webhook's raw payload, request.get_data()); a string
    # with the same text has its secret pair and its credentials filtered, bytes must too.
    password = token("pw")

    @app.post("/webhook")
    def webhook() -> str:
        request._tracking_data = {
            "text": request.get_data(as_text=True),
            "raw": request.get_data(),
            "auth": request.headers["Authorization"].encode(),
        }
        return "ok"

    payload = f"password={password}&card=4111111111111111"
    app.test_client().post(
        "/webhook",
        data=payload,
        headers={"Authorization": f"Bearer {JWT}", "Content-Type": "text/plain"},
    )
    [doc] = stored(app, mongo)
    assert doc["custom_data"]["text"] == f"password={FILTERED}&card={FILTERED}"
    assert_absent(doc, password, JWT, "4111111111111111")


def test_command_line_options_are_key_value_pairs(app: Flask, client: Any, mongo: Any) -> None:
    # A job's command line, in plain text, in a JSON string and in custom data: an option
    # written --name=value is a key=value pair like any other.
    secrets = [token(f"opt{i}") for i in range(3)]

    @app.post("/jobs")
    def jobs() -> str:
        request._tracking_data = {"argv": f"pg_dump --db-password={secrets[2]} shop"}
        return "queued"

    command = f"mysql --user=ada --password={secrets[0]} shop\n"
    client.post("/ignore", data=command, content_type="text/plain")
    client.post("/jobs", json={"command": f"deploy --api-key={secrets[1]} --env=prod"})
    plain, job = stored(app, mongo)
    assert_absent(plain, secrets[0])
    assert_absent(job, secrets[1], secrets[2])
