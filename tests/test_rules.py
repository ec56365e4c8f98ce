"""Unit tests of :mod:`flask_tracking.rules`: where a URL rule's variables are in a path."""

from __future__ import annotations

import time

import pytest

from flask_tracking.rules import (
    MAX_MULTI_PATH_LENGTH,
    MAX_PATH_LENGTH,
    SecretRules,
    secret_variables,
)


def secret(name: str) -> bool:
    return name in ("token", "key")


@pytest.mark.parametrize(
    ("rule", "path", "expected"),
    [
        ("/reset/<token>", "/reset/abc123", "/reset/*"),
        ("/reset/<string(length=6):token>/done", "/reset/abc123/done", "/reset/*/done"),
        ("/u/<int:id>/keys/<key>", "/u/7/keys/k-1", "/u/7/keys/*"),
        ("/k/<int:key>/<key2>/<key>", "/k/7/a/b", "/k/7/a/*"),  # a number is no secret
        ("/f/<path:key>", "/f/a/b/c.txt", "/f/*"),
        ("/t/<uuid:token>.json", "/t/5f0c9c9e-8c6a-4c0e-9d0e-1b2c3d4e5f60.json", "/t/*.json"),
        ("/<token>/<token2>", "/a/b", "/*/b"),
        # The path does not follow the rule (merged slashes): filtered from the first secret.
        ("/reset/<token>", "/reset//abc", "/reset/*"),
        ("/reset/<token>", "/other", "*"),
        # Text of a rule's static parts is matched as written, UTF-8 as WSGI carries it.
        ("/é/<token>", "/\u00c3\u00a9/abc", "/\u00c3\u00a9/*"),
    ],
)
def test_a_path_keeps_no_value_of_a_secret_variable(rule: str, path: str, expected: str) -> None:
    variables = secret_variables(rule, secret)
    assert variables is not None
    assert variables.filter(path, "*") == expected


@pytest.mark.parametrize(
    "rule", ["/items/<int:id>", "/static/<path:filename>", "/about", "", "/k/<float:key>"]
)
def test_a_rule_without_a_secret_variable_needs_no_filter(rule: str) -> None:
    assert secret_variables(rule, secret) is None


def rules_of(*rules: str) -> SecretRules:
    found = [secret_variables(rule, secret) for rule in rules]
    return SecretRules([variables for variables in found if variables is not None])


def test_any_path_is_filtered_only_when_it_has_the_rule_s_shape() -> None:
    rules = rules_of("/reset/<token>/<int:step>")
    assert rules.filter_if_matching("/reset/abc/2", "*") == "/reset/*/2"
    assert rules.filter_if_matching("/reset/abc", "*") is None
    assert rules.filter_if_matching("/other/abc/2", "*") is None


def test_several_rules_are_matched_together() -> None:
    rules = rules_of("/reset/<token>", "/files/<path:key>/raw", "/t/<token>/<int:step>")
    assert rules.filter_if_matching("/reset/abc", "*") == "/reset/*"
    assert rules.filter_if_matching("/files/a/b/raw", "*") == "/files/*/raw"
    assert rules.filter_if_matching("/t/abc/2", "*") == "/t/*/2"
    assert rules.filter_if_matching("/t/abc", "*") is None


def test_every_rule_a_path_has_the_shape_of_filters_it() -> None:
    rules = rules_of("/invite/<team>/<token>", "/invite/<token>/accept", "/u/<key>/<key2>")
    assert rules.filter_if_matching("/invite/abc/accept", "*") == "/invite/*/*"
    assert rules.filter_if_matching("/invite/team/xyz", "*") == "/invite/team/*"


def test_a_path_too_long_to_read_is_not_matched_but_the_rule_s_own_is_cut() -> None:
    long = "/reset/" + "a" * MAX_PATH_LENGTH
    assert rules_of("/reset/<token>").filter_if_matching(long, "*") is None
    variables = secret_variables("/reset/<token>", secret)
    assert variables is not None
    assert variables.filter(long, "*") == "/reset/*"


def test_a_rule_with_two_path_variables_reads_short_paths_only() -> None:
    """Two path variables make a match cost the square of the path's length."""
    rules = rules_of("/<path:a>/s/<path:key>/e")
    assert rules.filter_if_matching("/x/y/s/k1/k2/e", "*") == "/x/y/s/*/e"
    long = "/" + "x/" * MAX_MULTI_PATH_LENGTH + "s/k/e"
    assert rules.filter_if_matching(long, "*") is None


@pytest.mark.parametrize(
    ("rule", "path", "expected"),
    [
        # Variables side by side in one segment are filtered together, as one value: where
        # one ends is not known without the router's choice.
        ("/confirm/<uid>-<token>", "/confirm/ab-cd-ef", "/confirm/*"),
        ("/confirm/<token>-<uid>/done", "/confirm/ab-cd-ef/done", "/confirm/*/done"),
        ("/t/<token>.<fmt>", "/t/abc.json", "/t/*"),
        ("/t/<a>.<b>.<token>/x", "/t/a.b.c.d/x", "/t/*/x"),
        ("/t/<a>.<b>/<token>", "/t/a.b/c", "/t/a.b/*"),  # no secret side by side: kept
        ("/t/<a><token>", "/t/abc", "/t/*"),
    ],
)
def test_variables_side_by_side_are_filtered_together(rule: str, path: str, expected: str) -> None:
    assert rules_of(rule).filter_if_matching(path, "*") == expected
    variables = secret_variables(rule, secret)
    assert variables is not None
    assert variables.filter(path, "*") == expected


@pytest.mark.parametrize("path", ["/confirm/abcdef", "/confirm/ab-/x", "/confirm/-ab", "/other"])
def test_a_path_without_the_shape_of_variables_side_by_side_is_not_matched(path: str) -> None:
    assert rules_of("/confirm/<uid>-<token>").filter_if_matching(path, "*") is None


def _cost(rules: SecretRules, path: str) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        rules.filter_if_matching(path, "*")
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize(
    ("rule", "unit"),
    [
        ("/c/<uid>-<token>/y", "-"),
        ("/c/<a>.<b>.<token>/y", "."),
        ("/c/<a>.<b>/<c>.<token>/y", "./."),
        ("/c/<path:a>-<token>", "-"),
        ("/c/<a>-<path:token>/y", "-"),
    ],
)
def test_a_path_is_read_for_variables_side_by_side_in_linear_time(rule: str, unit: str) -> None:
    """Each split of a segment between variables side by side was tried with every split of
    the rest: a 4 KB path (a Referer) cost 50 ms against /<uid>-<token>/y, seconds against
    three variables in one segment."""
    rules = rules_of(rule)
    small = _cost(rules, "/c/" + unit * (1000 // len(unit)) + "/z")
    large = _cost(rules, "/c/" + unit * (4000 // len(unit)) + "/z")
    assert large < 8 * small + 0.002


@pytest.mark.parametrize(
    "path",
    [
        "/r\u00c3\u00a9initialiser/abc",  # as WSGI carries it (PATH_INFO, a Referer's text)
        "/r%C3%A9initialiser/abc",  # as url_for writes a link and a browser sends it
        "/r%c3%a9initialiser/abc",
        "/réinitialiser/abc",  # as a page's text reads
    ],
)
def test_a_rule_s_text_beyond_ascii_is_matched_in_every_form_a_url_writes_it(path: str) -> None:
    rules = rules_of("/réinitialiser/<token>")
    assert rules.filter_if_matching(path, "*") == path[: path.rindex("/")] + "/*"


def test_a_page_holds_a_rule_s_lead_wherever_one_is_in_it() -> None:
    """:meth:`SecretRules.named_in` finds any rule's text before its first variable, leads
    sharing their beginnings or one beginning another included (a long one by its first 64
    characters: a page holding them is read)."""
    leads = ["/a/", "/ab/", "/abc/", "/b/x/", "/b/y/", "/b/xy/", "/ba/", "/c" + "d" * 100 + "/"]
    found = [secret_variables(f"{lead}<token>", secret) for lead in leads]
    rules = SecretRules([variables for variables in found if variables is not None])
    for text in ["/a/", "x/ab/", "/abc/", "/b/y/z", "/b/xy/", "/ba/", "x/c" + "d" * 62 + "x"]:
        assert rules.named_in(text.encode()), text
    for text in ["/b/", "/b/z/", "/bb/", "/ab", "/c" + "d" * 61, "/a", ""]:
        assert not rules.named_in(text.encode()), text


def test_a_path_is_read_by_every_rule_of_its_shape_whatever_their_slashes() -> None:
    """Rules are read by the slashes of a path: a ``path`` variable holds any number."""
    found = [
        secret_variables(rule, secret)
        for rule in ("/<token>", "/<a>/<key>", "/f/<path:key>", "/<a>/<path:key>", "/g/<key>")
    ]
    rules = SecretRules([variables for variables in found if variables is not None])
    assert rules.filter_if_matching("/x", "*") == "/*"
    assert rules.filter_if_matching("/g/x", "*") == "/g/*"  # /<a>/<key> and /g/<key>
    assert rules.filter_if_matching("/f/x/y", "*") == "/f/*"  # /<a>/<path:key> and /f/<path:key>
    assert rules.filter_if_matching("/a/b/c/d", "*") == "/a/*"
    assert rules.filter_if_matching("/", "*") is None
