"""flask_tracking: record every Flask request and response into a capped MongoDB collection.

``Tracking(app)`` installs it; ``flask_tracking.documents.Tracking`` reads what it stored.
"""

from .extension import Tracking
from .signals import record_dropped, record_written

__all__ = ["Tracking", "__version__", "record_dropped", "record_written"]

__version__ = "1.0.0.dev0"
