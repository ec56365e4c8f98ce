"""Request ids: made cheaply on the request thread, or taken (validated) from a request header.

No Flask and no I/O. :func:`new_request_id` gives 32 lowercase hex digits (128 random bits, the
shape of ``uuid4().hex``) from a generator private to this module, seeded from ``os.urandom``
and seeded again in every forked child, so workers forked from one master never share ids.
Ids are for correlation, not secrets: they are echoed to clients and may be guessed.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from typing import Any

#: Longest id accepted from a request header, in characters.
REQUEST_ID_MAX_LENGTH = 128

#: What an incoming id may hold: ASCII letters, digits and ``. _ : @ + = / -`` (UUIDs, W3C
#: trace ids, AWS ``Root=1-...`` values without ``;``, base64 and ULIDs all fit). No spaces,
#: quotes, commas or control characters, so an id can be logged and echoed as it is.
_VALID_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:@+=/-]{{1,{REQUEST_ID_MAX_LENGTH}}}").fullmatch

# uuid4() costs several microseconds (os.urandom and a UUID object); a seeded Mersenne Twister
# gives 128 bits in a fraction of that.
_GENERATOR = random.Random()
_random_bits = _GENERATOR.getrandbits


def new_request_id() -> str:
    """A new request id: 32 lowercase hexadecimal digits."""
    return _random_bits(128).to_bytes(16, "big").hex()


def is_valid_request_id(value: str) -> bool:
    """Whether ``value`` (a header value) may be used as the request id as it is."""
    return _VALID_REQUEST_ID(value) is not None


def request_id_for(environ: Mapping[str, Any], key: str | None) -> str:
    """The id of a request: the value under the environ ``key`` (the incoming header) when it
    is valid, else a new one."""
    if key is not None:
        incoming = environ.get(key)
        if incoming is not None and is_valid_request_id(incoming):
            return incoming  # type: ignore[no-any-return]
    return new_request_id()


def environ_key(header_name: str) -> str:
    """The WSGI environ key of a request header: ``X-Request-ID`` -> ``HTTP_X_REQUEST_ID``."""
    return "HTTP_" + header_name.upper().replace("-", "_")


def _reseed_after_fork() -> None:
    _GENERATOR.seed()  # from os.urandom


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_after_fork)
