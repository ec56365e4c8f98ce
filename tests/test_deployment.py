"""Deployment conditions: real WSGI servers over real sockets (Werkzeug's development server,
gunicorn), forking, and what is stored for what the server really sent."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
from flask import Flask, make_response, request
from werkzeug.serving import make_server

from .conftest import stored

ROOT = Path(__file__).resolve().parents[1]


def raw_exchange(port: int, raw: bytes, timeout: float = 5.0) -> bytes:
    """Send ``raw`` on a new connection and read the whole answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def serve(app: Flask, **options: Any) -> Any:
    """Werkzeug's development server for ``app`` on an ephemeral port, in a thread."""
    server = make_server("127.0.0.1", 0, app, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# Bodies the server never sends
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["HEAD", "304"])
def test_a_body_the_server_never_sends_is_not_stored_as_sent(
    make_app: Callable[..., Flask], mongo: Any, case: str
) -> None:
    """Werkzeug sends no body for HEAD and 304 (``Response.get_app_iter``); the record must say
    so (``response_body_size``: "bytes that went through in all"), as it already does for a
    streamed response to HEAD."""
    app = make_app(testing=False)

    @app.get("/page")
    def page() -> Any:
        response = make_response("x" * 1000)
        response.add_etag()
        return response.make_conditional(request)

    server = serve(app, threaded=True)
    try:
        if case == "HEAD":
            raw = b"HEAD /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        else:
            etag = app.test_client().get("/page").headers["ETag"]
            raw = (
                f"GET /page HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
        answer = raw_exchange(server.server_port, raw)
    finally:
        server.shutdown()
        server.server_close()
    _, _, body = answer.partition(b"\r\n\r\n")
    assert body == b"", answer  # the server sent no body at all
    record = stored(app, mongo)[-1]
    assert record["status_code"] == (200 if case == "HEAD" else 304)
    # "bytes that went through in all" (stored.md); "counts the bytes sent" (production.md)
    assert record["response_body_size"] == 0, record.get("response_body", b"")[:20]
