"""Property-based test: random requests through a real tracked app.

For random methods, paths, headers, query strings, bodies and custom data, with secrets planted
where the tracker must filter them (Authorization and Cookie headers, secret query parameters,
secret JSON / form / multipart fields, secret custom-data keys), it checks that:

- the app answers exactly as an untracked twin does (the view sees the original request);
- every request makes exactly one record, and every record encodes with BSON;
- no planted secret appears anywhere in the encoded record, whether the bodies are kept whole
  or cut at a small TRACKING_MAX_BODY_LENGTH (the cut falls anywhere, inside JSON too).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import secrets
import string
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import bson
from flask import Flask, request
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from flask_tracking import Tracking
from flask_tracking.redact import FILTERED

from .conftest import FAST_WRITER

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
SECRET_FIELDS = [
    "password",
    "access_token",
    "refreshToken",
    "api_key",
    "client_secret",
    "card_number",
    "cvv",
    "sessionid",
    "credentials",
    "userPassword",
]
SECRET_HEADERS = ["X-Api-Key", "X-Auth-Token", "Proxy-Authorization", "X-CSRF-Token"]
#: Bytes kept of each body by the "cut" app: JSON, forms and multipart get cut anywhere.
CUT_BODY_LENGTH = 96
#: A planted secret must not appear even in part: none of its first bytes may be stored.
PREFIX = 8


def new_secret() -> str:
    """A unique token (20 hex characters) that nothing else in a record can contain."""
    return secrets.token_hex(10)


# --- strategies --------------------------------------------------------------------------------

segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12
)
latin1_printable = st.characters(
    min_codepoint=0x20,
    max_codepoint=0xFF,
    blacklist_characters="\x7f",
    blacklist_categories=("Cc",),
)
header_names = st.from_regex(r"X-[A-Za-z0-9][A-Za-z0-9-]{0,15}", fullmatch=True)
header_values = st.text(alphabet=latin1_printable, max_size=40).map(str.strip)
short_text = st.text(max_size=10)
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | short_text
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(short_text, children, max_size=4)
    ),
    max_leaves=12,
)
custom_values = st.recursive(
    json_leaves | st.integers() | st.floats(allow_nan=False) | st.binary(max_size=16),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(short_text, children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=10)
#: Empty values too: werkzeug's multipart encoder writes an empty part without its blank line.
form_values = st.text(max_size=20)


def dict_nodes(value: Any) -> list[dict[Any, Any]]:
    """Every dict inside ``value`` (itself included), depth first."""
    found: list[dict[Any, Any]] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


@dataclass
class Case:
    """One random request, and the secrets planted in it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    query: list[tuple[str, str]]
    body: dict[str, Any]
    custom: Any
    planted: list[str] = field(default_factory=list)


def plant(draw: Any, tree: dict[str, Any], planted: list[str]) -> None:
    """Put 1-3 secrets under secret keys in random dicts of ``tree``: as the value, in a list,
    or deeper in a secret object (under an innocent key, after a secret-named one)."""
    for _ in range(draw(st.integers(1, 3))):
        nodes = dict_nodes(tree)
        node = nodes[draw(st.integers(0, len(nodes) - 1))]
        secret = new_secret()
        planted.append(secret)
        key = draw(st.sampled_from(SECRET_FIELDS))
        shapes = [secret, [secret, 1], {"inner": secret}, {"otp": 1, "inner": [secret]}]
        node[key] = draw(st.sampled_from(shapes))


@st.composite
def cases(draw: Any) -> Case:
    planted: list[str] = []

    method = draw(st.sampled_from(METHODS))
    segments = draw(st.lists(segment, max_size=4))
    # quoted, or with "%" left raw (then "%zz" stays as it is and "%2F" decodes to "/")
    safe = draw(st.sampled_from(["", "%"]))
    path = "/" + "/".join(quote(part, safe=safe) for part in segments)

    headers = list(draw(st.dictionaries(header_names, header_values, max_size=5)).items())
    bearer, cookie, other = new_secret(), new_secret(), new_secret()
    planted += [bearer, cookie, other]
    headers += [
        ("Authorization", f"Bearer {bearer}"),
        ("Cookie", f"theme=dark; sid={cookie}"),
        (draw(st.sampled_from(SECRET_HEADERS)), other),
    ]
    headers.insert(draw(st.integers(0, len(headers))), headers.pop())

    query = draw(st.lists(st.tuples(short_text, short_text), max_size=4))
    for _ in range(draw(st.integers(0, 2))):
        secret = new_secret()
        planted.append(secret)
        query.insert(
            draw(st.integers(0, len(query))), (draw(st.sampled_from(SECRET_FIELDS)), secret)
        )

    kind = draw(st.sampled_from(["none", "bytes", "json", "json-array", "form", "multipart"]))
    body: dict[str, Any] = {}
    if kind == "bytes":
        body = {"data": draw(st.binary(max_size=200)), "content_type": "application/octet-stream"}
    elif kind in ("json", "json-array"):
        tree = draw(st.dictionaries(short_text, json_values, max_size=5))
        plant(draw, tree, planted)
        document: Any = tree
        if kind == "json-array":
            document = draw(st.lists(json_values, max_size=3))
            document.insert(draw(st.integers(0, len(document))), tree)
        text = json.dumps(document, ensure_ascii=draw(st.booleans()))
        body = {"data": text.encode(), "content_type": "application/json"}
    elif kind in ("form", "multipart"):
        pairs = draw(st.lists(st.tuples(field_names, form_values), max_size=4))
        for _ in range(draw(st.integers(1, 2))):
            secret = new_secret()
            planted.append(secret)
            pairs.insert(
                draw(st.integers(0, len(pairs))), (draw(st.sampled_from(SECRET_FIELDS)), secret)
            )
        body = {
            "data": pairs,
            "content_type": "multipart/form-data" if kind == "multipart" else None,
        }

    custom: Any = None
    if draw(st.booleans()):
        custom = {"data": draw(custom_values)}
        plant(draw, custom, planted)
        if draw(st.booleans()):
            custom = [custom, draw(custom_values)]

    return Case(method, path, headers, query, body, custom, planted)


# --- apps --------------------------------------------------------------------------------------


def build(name: str, tracked: bool, **config: Any) -> Flask:
    app = Flask(name)
    app.config.update(TESTING=True, **FAST_WRITER)
    app.config.update(config)

    @app.route("/", defaults={"rest": ""}, methods=METHODS)
    @app.route("/<path:rest>", methods=METHODS)
    def catch_all(rest: str) -> str:
        request._tracking_data = app.config["FUZZ_CUSTOM_DATA"]
        received = (
            request.method,
            request.path,
            rest,
            sorted(request.args.items(multi=True)),
            sorted(request.headers.items()),
            request.get_data(),
            sorted(request.form.items(multi=True)),
            sorted((name, file.read()) for name, file in request.files.items(multi=True)),
        )
        return hashlib.sha256(repr(received).encode("utf-8", "backslashreplace")).hexdigest()

    if tracked:
        Tracking(app)
    return app


def send(app: Flask, case: Case) -> tuple[int, bytes, list[tuple[str, str]]]:
    app.config["FUZZ_CUSTOM_DATA"] = case.custom
    kwargs: dict[str, Any] = {}
    if case.body:
        data = case.body["data"]
        content_type = case.body["content_type"]
        if isinstance(data, list):
            data = MultiDict(data)
        if content_type == "multipart/form-data":  # a fixed boundary: the same bytes each time
            data.add("upload", FileStorage(io.BytesIO(b"file bytes"), "f.txt", "upload"))
            boundary, data = encode_multipart(data, boundary="fuzz-b0undary")
            content_type = f"multipart/form-data; boundary={boundary}"
        kwargs["data"] = data
        if content_type:
            kwargs["content_type"] = content_type
    response = app.test_client(use_cookies=False).open(
        case.path,
        method=case.method,
        headers=case.headers,
        query_string=case.query,
        buffered=True,
        **kwargs,
    )
    return response.status_code, response.data, sorted(response.headers.items())


def latest(app: Flask, mongo: Any, count_before: int) -> dict[str, Any]:
    assert app.extensions["tracking"].flush(5), "the writer did not finish in time"
    collection = mongo["tracking"]
    assert collection.count_documents({}) == count_before + 1, "not exactly one record"
    document = collection.find_one(sort=[("_id", -1)])
    assert document is not None
    return document


# --- the property ------------------------------------------------------------------------------


def test_random_requests_store_one_clean_record_each(mongo: Any) -> None:
    twin = build("fuzz_twin", tracked=False)
    tracked = {
        "whole": build("fuzz_whole", tracked=True),
        "cut": build("fuzz_cut", tracked=True, TRACKING_MAX_BODY_LENGTH=CUT_BODY_LENGTH),
    }

    @settings(max_examples=150, deadline=None, database=None)
    @given(case=cases())
    def check(case: Case) -> None:
        for app in tracked.values():  # settle whatever an earlier failing example left
            assert app.extensions["tracking"].flush(5)
        mongo["tracking"].delete_many({})  # keeps every example as cheap as the first
        custom_before = copy.deepcopy(case.custom)
        expected = send(twin, case)
        for name, app in tracked.items():
            count_before = mongo["tracking"].count_documents({})
            assert send(app, case) == expected, f"{name}: the response changed"
            assert case.custom == custom_before, f"{name}: the app's custom data was changed"
            document = latest(app, mongo, count_before)
            encoded = bson.encode(document)
            assert document["method"] == case.method
            assert document["status_code"] == expected[0]
            for secret in case.planted:
                assert secret[:PREFIX].encode() not in encoded, f"{name}: {secret!r} stored"
            headers = {key.lower(): value for key, value in document["request_headers"]}
            assert headers["authorization"] == headers["cookie"] == FILTERED

    try:
        check()
    finally:
        for app in tracked.values():
            app.extensions["tracking"]._apps[app].writer.shutdown(1.0)
