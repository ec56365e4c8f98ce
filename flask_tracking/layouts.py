"""What is worked out once per layout of a WSGI environ (its keys, in their order) and remembered.

A client sends the same headers, in the same order, request after request, so the keys of its
environs repeat: which of them are headers, what their names are, which hold objects. Those
answers are remembered per layout in a plain dict, read without a lock (one ``dict.get``).

The memory they keep is bounded: at most :data:`MAX_REMEMBERED_LAYOUTS` layouts (all are
forgotten when one more would not fit), and only layouts whose keys total at most
:data:`MAX_LAYOUT_KEY_BYTES` characters. A client names its headers as it likes (gunicorn
takes 100 fields of 8 KB); a layout beyond that bound is worked out on every request instead,
so remembered layouts keep a few megabytes of key text at most, whatever the clients send.
"""

from __future__ import annotations

from typing import Any, TypeVar

#: Layouts remembered per table; all are forgotten when one more would not fit.
MAX_REMEMBERED_LAYOUTS = 1024
#: Characters of keys (all keys of a layout together) beyond which a layout is not remembered.
MAX_LAYOUT_KEY_BYTES = 4096

Plan = TypeVar("Plan")


def remember_layout(
    plans: dict[tuple[Any, ...], Plan], layout: tuple[Any, ...], plan: Plan
) -> Plan:
    """Keep ``plan`` for ``layout`` in ``plans`` when the layout is small enough; return it."""
    try:
        key_bytes = sum([len(key) for key in layout])
    except TypeError:  # a key that is no string (not WSGI): worked out each time
        return plan
    if key_bytes <= MAX_LAYOUT_KEY_BYTES:
        if len(plans) >= MAX_REMEMBERED_LAYOUTS:
            plans.clear()
        plans[layout] = plan
    return plan
