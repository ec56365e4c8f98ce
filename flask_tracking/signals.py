"""Blinker signals about stored and lost records (sent from the writer thread).

Connect with ``record_written.connect(receiver, app)`` to hear about one app only. Receivers run
on the writer thread: keep them quick; an exception in one is logged and ignored.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: Sent once per written batch. Sender: the Flask app. Keyword: ``count`` (records written).
record_written = _signals.signal("flask-tracking-record-written")

#: Sent for records that will never be stored. Sender: the Flask app. Keywords: ``reason``
#: (``queue_full``, ``db_error``, ``encode_error``, ``hook_error``, ``by_hook``, ``shutdown``,
#: ...: the suffix of the matching ``dropped_*`` counter) and ``count``.
record_dropped = _signals.signal("flask-tracking-record-dropped")
