from __future__ import annotations

import pytest

from flask_tracking import layouts
from flask_tracking.layouts import MAX_LAYOUT_KEY_BYTES, remember_layout


def test_a_small_layout_is_remembered_and_the_plan_returned() -> None:
    plans: dict[tuple[str, ...], str] = {}
    assert remember_layout(plans, ("PATH_INFO", "HTTP_HOST"), "plan") == "plan"
    assert plans == {("PATH_INFO", "HTTP_HOST"): "plan"}


def test_a_layout_with_long_keys_is_not_remembered() -> None:
    plans: dict[tuple[str, ...], str] = {}
    at_bound = ("A" * (MAX_LAYOUT_KEY_BYTES - 1), "B")
    beyond = ("A" * MAX_LAYOUT_KEY_BYTES, "B")
    assert remember_layout(plans, beyond, "plan") == "plan"
    assert plans == {}
    remember_layout(plans, at_bound, "plan")
    assert list(plans) == [at_bound]


def test_a_layout_with_a_key_that_is_no_string_is_not_remembered() -> None:
    plans: dict[tuple[object, ...], str] = {}
    assert remember_layout(plans, ("PATH_INFO", 1), "plan") == "plan"
    assert plans == {}


def test_all_layouts_are_forgotten_when_one_more_would_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(layouts, "MAX_REMEMBERED_LAYOUTS", 2)
    plans: dict[tuple[str, ...], int] = {}
    for index in range(3):
        remember_layout(plans, (f"HTTP_X_{index}",), index)
    assert plans == {("HTTP_X_2",): 2}
