"""flask_tracking: record every Flask request and response into a capped MongoDB collection.

``Tracking(app)`` installs it; ``flask_tracking.documents.Tracking`` reads what it stored.
``add_data()``, ``skip()`` and ``request_id()`` are called from views during a request.
"""

from .context import add_data, request_id, skip
from .extension import Tracking
from .signals import record_dropped, record_written

__all__ = [
    "Tracking",
    "__version__",
    "add_data",
    "record_dropped",
    "record_written",
    "request_id",
    "skip",
]

__version__ = "1.0.0.dev0"
