"""The catalogue of a stored record's fields: a leaf fact that the configuration (which fields
to keep) and the record builder (which fields to write) both read."""

from __future__ import annotations

#: The keys of the stored documents (besides ``_id``), all in every document but the
#: :data:`OPTIONAL_FIELDS`; TRACKING_FIELDS and TRACKING_EXCLUDE_FIELDS may leave some out.
FIELDS = (
    "date_created",
    "host",
    "scheme",
    "method",
    "path",
    "query_params",
    "ip",
    "endpoint",
    "url_rule",
    "referrer",
    "user",
    "user_id",
    "user_agent",
    "request_headers",
    "request_body",
    "request_body_size",
    "request_body_truncated",
    "request_body_omitted",
    "response_headers",
    "response_body",
    "response_body_size",
    "response_body_truncated",
    "response_body_omitted",
    "status_code",
    "execution_time",
    "total_time",
    "hostname",
    "custom_data",
    "exception",
    "request_id",
    "sample_rate",
    "db",
)
#: Fields stored only when there is something to say: ``db`` when the request ran a database
#: command.
OPTIONAL_FIELDS = ("db",)
#: Fields every stored document keeps, whatever TRACKING_FIELDS or TRACKING_EXCLUDE_FIELDS say:
#: the collection is read in ``date_created`` order, and counts are scaled by ``sample_rate``.
ALWAYS_STORED_FIELDS = ("date_created", "sample_rate")
