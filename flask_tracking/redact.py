"""Pure scrubbing of secrets from headers, query strings and bodies (no Flask, no MongoDB)."""

from __future__ import annotations

#: The value stored in place of a secret.
FILTERED = "[Filtered]"
