"""The example app's own pages: its record pages are behind its login, like the dashboard."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from example_app.app import DEMO_PASSWORD, DEMO_USERNAME, create_app


@pytest.fixture
def client(mongo: Any) -> Iterator[Any]:
    app = create_app({"SECRET_KEY": "example-test", "TESTING": True})
    yield app.test_client()
    app.extensions["tracking"]._apps[app].writer.shutdown(1.0)


@pytest.mark.parametrize("path", ["/requests", "/requests/0123456789abcdef01234567"])
def test_record_pages_need_a_login(client: Any, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_record_pages_open_after_logging_in(client: Any) -> None:
    client.post("/login", data={"username": DEMO_USERNAME, "password": DEMO_PASSWORD})
    assert client.get("/requests").status_code == 200
