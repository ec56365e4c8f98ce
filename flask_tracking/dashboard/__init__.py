"""The tracking dashboard: a guarded blueprint to see traffic, latency and errors, and to
inspect any recorded request.

``app.register_blueprint(make_blueprint(access=check))``, or ``TRACKING_DASHBOARD = True`` with
an access check given to ``@tracking.dashboard_access``. Without an access check
``make_blueprint`` refuses to make it, and the config switch answers 403 until one is
registered, unless ``public=True`` (``TRACKING_DASHBOARD_PUBLIC = True``) says so explicitly.
"""

from __future__ import annotations

from .views import AccessCheck, make_blueprint

__all__ = ["AccessCheck", "make_blueprint"]
