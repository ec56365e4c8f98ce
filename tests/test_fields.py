"""What is stored: TRACKING_FIELDS and TRACKING_EXCLUDE_FIELDS, validated against fields.FIELDS
at init_app and applied on the writer thread; read back through the MongoEngine document."""

from __future__ import annotations

from typing import Any, Callable

import pytest
from flask import Flask

from flask_tracking import Tracking
from flask_tracking.config import load_config
from flask_tracking.documents import Tracking as TrackingDocument
from flask_tracking.fields import ALWAYS_STORED_FIELDS, FIELDS, OPTIONAL_FIELDS

from .conftest import stored


def read_back(document: TrackingDocument, name: str) -> Any:
    """A field of a loaded document, declared or not (the document class may not declare
    request_id and sample_rate yet; strict is off, so they load into ``_data``)."""
    if name in document._fields:
        return getattr(document, name)
    return document._data.get(name)


def test_fields_include_the_request_id_and_sample_rate() -> None:
    assert "request_id" in FIELDS and "sample_rate" in FIELDS
    assert set(ALWAYS_STORED_FIELDS) <= set(FIELDS)


def test_privacy_first_selection_round_trips_through_the_document(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_FIELDS=["path", "status_code", "execution_time"])
    app.test_client().post("/echo?q=1", json={"name": "ada"}, headers={"User-Agent": "x"})
    [raw] = stored(app, mongo)
    assert set(raw) == {"_id", "path", "status_code", "execution_time", *ALWAYS_STORED_FIELDS}
    [document] = TrackingDocument.objects.all()
    assert document.id == raw["_id"]
    assert (document.path, document.status_code) == ("/echo", 200)
    assert document.execution_time == raw["execution_time"] > 0
    assert document.date_created == raw["date_created"]
    assert read_back(document, "sample_rate") == 1.0
    # what was left out reads back as the field's empty value, and str() still works
    assert document.ip is None and document.request_body is None
    assert document.request_headers == [] and document.user_agent is None
    assert "/echo" in str(document)


def test_excluded_fields_round_trip_through_the_document(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    left_out = ["ip", "user_agent", "request_headers", "request_body", "referrer"]
    app = make_app(TRACKING_EXCLUDE_FIELDS=left_out)
    app.test_client().get(
        "/custom", headers={"X-Request-ID": "rid-7", "Referer": "http://r/", "User-Agent": "x"}
    )
    [raw] = stored(app, mongo)
    assert set(raw) == {"_id", *FIELDS} - set(left_out) - set(OPTIONAL_FIELDS)
    [document] = TrackingDocument.objects(__raw__={"request_id": "rid-7"})
    assert read_back(document, "request_id") == "rid-7"
    assert read_back(document, "sample_rate") == 1.0
    assert document.custom_data == {"order": 42, "tags": ["a", "b"]}
    assert document.response_body == b"ok"
    assert document.ip is None and document.referrer is None


def test_every_field_is_stored_by_default(app: Flask, client: Any, mongo: Any) -> None:
    client.get("/hello")
    [raw] = stored(app, mongo)
    assert set(raw) == {"_id", *FIELDS} - set(OPTIONAL_FIELDS)  # these requests ran no command


def test_hooks_see_the_whole_document_and_their_keys_are_kept(
    make_app: Callable[..., Flask], mongo: Any
) -> None:
    app = make_app(TRACKING_FIELDS=["path"])
    seen: list[set[str]] = []

    @app.extensions["tracking"].before_save
    def tag(document: dict[str, Any]) -> dict[str, Any]:
        seen.append(set(document))
        document["region"] = "eu-1"
        document["status_code"] = 999  # a standard field left out stays out
        return document

    app.test_client().get("/hello")
    [raw] = stored(app, mongo)
    assert seen == [{"_id", *FIELDS} - set(OPTIONAL_FIELDS)]
    assert set(raw) == {"_id", "path", "region", *ALWAYS_STORED_FIELDS}


def test_listing_an_always_stored_field_in_tracking_fields_is_allowed() -> None:
    config = load_config({"TRACKING_FIELDS": ["date_created", "path"]})
    assert "date_created" not in config.omitted_fields
    assert "path" not in config.omitted_fields
    assert "ip" in config.omitted_fields
    assert set(config.omitted_fields) == set(FIELDS) - {"path", *ALWAYS_STORED_FIELDS}
    assert load_config({}).omitted_fields == ()
    assert load_config({"TRACKING_EXCLUDE_FIELDS": ["ip"]}).omitted_fields == ("ip",)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"TRACKING_FIELDS": ["path", "nope"]}, r"^TRACKING_FIELDS names unknown fields 'nope'"),
        ({"TRACKING_EXCLUDE_FIELDS": ["Path"]}, r"^TRACKING_EXCLUDE_FIELDS names unknown"),
        ({"TRACKING_FIELDS": ["_id"]}, r"unknown fields '_id'; the stored fields are date_"),
        ({"TRACKING_FIELDS": []}, r"^TRACKING_FIELDS must name at least one field"),
        (
            {"TRACKING_EXCLUDE_FIELDS": ["date_created", "ip"]},
            r"^TRACKING_EXCLUDE_FIELDS cannot leave out 'date_created'",
        ),
        ({"TRACKING_EXCLUDE_FIELDS": ["sample_rate"]}, r"are always stored"),
        (
            {"TRACKING_FIELDS": ["path"], "TRACKING_EXCLUDE_FIELDS": ["ip"]},
            r"^TRACKING_FIELDS and TRACKING_EXCLUDE_FIELDS cannot both be set",
        ),
        ({"TRACKING_FIELDS": "path"}, r"^TRACKING_FIELDS must be a list of strings"),
    ],
)
def test_bad_field_settings_raise_at_init_app(
    mongo: Any, settings: dict[str, Any], message: str
) -> None:
    app = Flask("bad_fields")
    app.config.update(settings)
    with pytest.raises(ValueError, match=message):
        Tracking(app)
    assert "tracking" not in app.extensions
