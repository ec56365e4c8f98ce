from __future__ import annotations

from flask_tracking import content
from flask_tracking.content import MAX_REMEMBERED_CONTENT_TYPE_LENGTH, describe_content_type


def test_content_types_are_remembered_only_when_short() -> None:
    # A client chooses its Content-Type (waitress takes 256 KB of headers): 256 remembered
    # types of that length would keep 64 MB alive.
    content._remembered_description.cache_clear()
    long_types = [f"application/json; x={index}; " + "p" * 10_000 for index in range(20)]
    for content_type in long_types:
        described = describe_content_type(content_type)
        assert described.kind == "application/json" and described.shape[1]
    assert content._remembered_description.cache_info().currsize == 0
    short = "application/json; charset=utf-8"
    assert describe_content_type(short) is describe_content_type(short)
    assert content._remembered_description.cache_info().currsize == 1
    at_bound = "text/plain; x=" + "q" * (MAX_REMEMBERED_CONTENT_TYPE_LENGTH - 14)
    assert len(at_bound) == MAX_REMEMBERED_CONTENT_TYPE_LENGTH
    describe_content_type(at_bound)
    assert content._remembered_description.cache_info().currsize == 2
