"""Ids made in process, cheaply: request ids (made on the request thread, or taken, validated,
from a request header) and the ObjectIds of records (made on the writer thread).

No Flask and no I/O. :func:`new_request_id` gives 32 lowercase hex digits (128 random bits, the
shape of ``uuid4().hex``) from a generator private to this module; :func:`new_object_id` makes
ObjectIds as the driver does. Both are seeded from ``os.urandom``, and seeded again in a
forked child: at the fork when it is made from Python, else by the first id it makes (found by
its process id: a fork made from C, as uWSGI forks its workers, runs none of Python's at-fork
hooks), so workers forked from one master never share ids. Request ids are for correlation,
not secrets: they are echoed to clients and may be guessed.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import time
from collections.abc import Mapping
from typing import Any

from bson import ObjectId

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
    if _SEEDED_IN[0] != os.getpid():
        _reseed()
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


def new_object_id() -> ObjectId:
    """A new ObjectId, made as the driver makes one (the current second, five random bytes per
    process, a counter of 24 bits starting at a random value), in a sixth of the driver's time:
    its 12 bytes are set directly, without the constructor's checks of an argument made here."""
    if _SEEDED_IN[0] != os.getpid():
        _reseed()
    count = next(_ID_COUNTER) & 0xFFFFFF
    object_id = _new_object(ObjectId)
    value = ((int(time.time()) << 64) | _ID_RANDOM[0] | count).to_bytes(12, "big")
    object_id._ObjectId__id = value  # type: ignore[attr-defined]  # ObjectId's one slot
    return object_id


_new_object = ObjectId.__new__


_ID_RANDOM = [0]
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(3), "big"))
#: The process the random state was seeded in.
_SEEDED_IN = [0]


def _reseed() -> None:
    """New random state for this process's ids (at import, and in every forked child)."""
    _GENERATOR.seed()  # from os.urandom
    _ID_RANDOM[0] = int.from_bytes(os.urandom(5), "big") << 24
    _SEEDED_IN[0] = os.getpid()


_reseed()
if hasattr(os, "register_at_fork"):
    # At once in a child forked from Python, even one whose process id is that of the
    # process the state was seeded in (ids are reused); the process id tells the others.
    os.register_at_fork(after_in_child=_reseed)
