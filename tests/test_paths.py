"""SecretPaths: an app's rules with secret variables, learnt, and the paths naming them.

The redactor's use of it (request paths, URL headers, pages, query values) is tested through
:class:`flask_tracking.redact.Redactor` in test_redact.py and end to end in test_privacy.py.
"""

from __future__ import annotations

import threading

import pytest

from flask_tracking.paths import SecretPaths

SECRET_NAMES = {"token", "key"}


def paths_of(*rules: str) -> SecretPaths:
    paths = SecretPaths(SECRET_NAMES.__contains__, "*")
    paths.learn_rules(rules)
    return paths


def test_nothing_is_filtered_before_a_rule_with_secret_variables_is_known() -> None:
    paths = paths_of("/about", "/items/<int:id>")
    assert paths.rules is None
    assert paths.url_path("/reset/abc") == "/reset/abc"
    assert paths.path_of_no_rule("/reset/abc") == "/reset/abc"
    assert paths.url_value("%2Freset%2Fabc") == "%2Freset%2Fabc"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/reset/abc", "/reset/*"),
        ("https://h.example/reset/abc?step=2#top", "https://h.example/reset/*?step=2#top"),
        ("//h.example/reset/abc/", "//h.example/reset/*/"),
        ("/reset/abc/more", "/reset/abc/more"),
        ("reset/abc", "reset/abc"),  # a relative URL: whose page, is not known
        ("/about", "/about"),
        ("/abc", "/*"),
    ],
)
def test_a_url_naming_a_page_with_secret_variables_has_its_path_filtered(
    url: str, expected: str
) -> None:
    assert paths_of("/reset/<token>", "/<key>", "/about").url_path(url) == expected


def test_a_request_path_no_rule_matched_is_read_as_the_router_reads_it() -> None:
    paths = paths_of("/reset/<token>", "/confirm/<token>/")
    assert paths.path_of_no_rule("/reset//abc") == "/reset/*"
    assert paths.path_of_no_rule("/confirm/abc") == "/confirm/*"
    assert paths.path_of_no_rule("/reset/abc/") == "/reset/*/"
    assert paths.path_of_no_rule("/elsewhere/abc") == "/elsewhere/abc"


def test_a_query_value_naming_such_a_page_is_written_back_percent_encoded() -> None:
    paths = paths_of("/confirm/<token>")
    assert paths.url_value("%2Fconfirm%2Fabc") == "/confirm/*"
    # Its own query stays inside the value: ? and = encoded, as a browser sends them.
    assert paths.url_value("/confirm/abc?next=%C3%A9") == "/confirm/*%3Fnext%3D%C3%A9"
    assert paths.url_value("/account") == "/account"  # kept as sent


def test_urls_under_a_prefix_the_app_is_mounted_at() -> None:
    paths = paths_of("/reset/<token>")
    assert paths.url_path("/app/reset/abc") == "/app/reset/abc"  # no prefix known yet
    paths.learn_script_name("/app")
    paths.learn_script_name("/app")
    assert paths.script_names == ("/app",)
    assert paths.url_path("/app/reset/abc") == "/app/reset/*"
    for index in range(20):  # a few prefixes at most (a client can send any)
        paths.learn_script_name(f"/p{index}")
    assert len(paths.script_names) == 8


def test_a_rule_met_by_a_request_is_learnt_once_whatever_the_threads() -> None:
    paths = paths_of("/about")
    found = []

    def ask() -> None:
        found.append(paths.variables_of("/reset/<token>"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(variables) for variables in found}) == 1 and found[0] is not None
    assert paths.variables["/reset/<token>"] is found[0]
    assert paths.url_path("/reset/abc") == "/reset/*"
    assert paths.variables_of("/about") is None


def test_a_query_value_keeps_its_bytes_that_are_not_utf_8() -> None:
    paths = paths_of("/reset/<token>")
    assert paths.url_value("%2Freset%2Fabc%3Fx%3D%FF") == "/reset/*%3Fx%3D%FF"
    assert paths.url_value("/caf%E9") == "/caf%E9"


def test_a_query_value_naming_no_such_page_is_not_read_as_a_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a value holding what a rule's paths begin with is read as a URL: a query of many
    path-like values (on the request thread) costs a search each."""
    paths = paths_of("/reset/<token>")
    read: list[str] = []
    url_path = paths.url_path
    monkeypatch.setattr(paths, "url_path", lambda url: read.append(url) or url_path(url))
    for value in ("/x", "%2F", "h", "/elsewhere/abc", "https://h/other"):
        assert paths.url_value(value) == value
    assert read == []
    assert paths.url_value("%2Fapp%2Freset%2Fabc") == "%2Fapp%2Freset%2Fabc"  # no mount known
    paths.learn_script_name("/app")
    assert paths.url_value("%2Fapp%2Freset%2Fabc") == "/app/reset/*"
    assert read == ["/app/reset/abc", "/app/reset/abc"]
