"""Serving a tracked Flask app from an ASGI server through a WSGI adapter.

uvicorn (0.29 and later) stops on SIGTERM gracefully, then raises SIGTERM again with its
default action: the process ends there, without running Python's exit hooks, so the records
its writer thread had queued and not yet written would be lost with it, uncounted.
:class:`CloseAtShutdown` closes the tracker at the server's lifespan shutdown instead, which
the ASGI server runs once its last request was answered, before it exits in any way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import flask_tracking

#: An ASGI message, and the callables of an ASGI app.
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]


class CloseAtShutdown:
    """An ASGI app that serves ``app`` (a WSGI adapter around a tracked Flask app: a2wsgi's
    ``WSGIMiddleware``, asgiref's ``WsgiToAsgi``) and answers the server's lifespan protocol
    itself: at the lifespan shutdown it calls ``tracking.close(timeout)`` (see
    :meth:`flask_tracking.Tracking.close`) in a thread of the event loop's executor, then
    reports the shutdown complete. Every scope but ``lifespan`` goes to ``app`` unchanged;
    the lifespan scope does not (a WSGI app has no lifespan of its own)::

        from a2wsgi import WSGIMiddleware
        from flask_tracking.asgi import CloseAtShutdown

        asgi_app = CloseAtShutdown(WSGIMiddleware(app), tracking)
    """

    def __init__(
        self, app: ASGIApp, tracking: flask_tracking.Tracking, timeout: float | None = None
    ) -> None:
        """``timeout``: the most the shutdown waits for the writers, in all (None: each app's
        TRACKING_SHUTDOWN_TIMEOUT_SECONDS)."""
        self.app = app
        self.tracking = tracking
        self.timeout = timeout

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        """Serve one ASGI connection: ``app``'s, or the lifespan's."""
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, self.tracking.close, self.timeout)
                await send({"type": "lifespan.shutdown.complete"})
                return
