"""The node's read-only HTTP endpoint for operators: `/metrics` (Prometheus),
`/status.json` (the view document) and `/` (the status page).

A stdlib threading HTTP server in a daemon thread: scrapes are rare and small, and
every answer is read from the store when asked, so there is nothing to cache. Only
GET and HEAD are answered; nothing here changes the node, and nothing secret (the
admin token) is ever part of an answer.
"""

from __future__ import annotations

import importlib
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from node.errors import UserError

log = logging.getLogger(__name__)

JSON_TYPE = "application/json; charset=utf-8"
HTML_TYPE = "text/html; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"


class Observer:
    """What the endpoint serves, as callables so the server does not know the node."""

    def __init__(
        self,
        metrics: Callable[[], tuple[bytes, str]],
        view_json: Callable[[], bytes],
        view: Callable[[], dict[str, Any]],
    ) -> None:
        self.metrics = metrics
        self.view_json = view_json
        self.view = view


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    observer: Observer | None = None


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # a stalled client cannot hold a handler thread for long

    def version_string(self) -> str:
        return "tongyuan"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _refuse(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED, TEXT_TYPE, b"read-only endpoint: use GET\n", True,
            {"Allow": "GET, HEAD"},
        )  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        # The stdlib looks up `do_<METHOD>`: every method but GET and HEAD is refused.
        if name.startswith("do_"):
            return self._refuse
        raise AttributeError(name)

    def _answer(self, body: bool) -> None:
        observer = self.server.observer
        assert observer is not None  # set before the server thread starts
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                payload, content_type = observer.metrics()
                self._send(HTTPStatus.OK, content_type, payload, body)
            elif path == "/status.json":
                self._send(HTTPStatus.OK, JSON_TYPE, observer.view_json(), body)
            elif path in ("/", "/index.html"):
                self._page(observer, body)
            else:
                self._send(HTTPStatus.NOT_FOUND, TEXT_TYPE, b"not found\n", body)
        except Exception:
            log.exception("http %s failed", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, TEXT_TYPE, b"internal error\n", body)

    def _page(self, observer: Observer, body: bool) -> None:
        try:  # the renderer is looked up when asked for: a node serves metrics without it
            render_page = importlib.import_module("node.observe.page").render_page
        except (ImportError, AttributeError) as exc:
            message = f"status page unavailable ({exc}); see /status.json and /metrics\n"
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, TEXT_TYPE, message.encode(), body)
            return
        html = render_page(observer.view())
        self._send(HTTPStatus.OK, HTML_TYPE, html.encode("utf-8"), body)

    def _send(
        self,
        status: HTTPStatus,
        content_type: str,
        payload: bytes,
        body: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s %s", self.address_string(), format % args)


class HttpEndpoint:
    """Bound at construction (so a bad `[http] listen` fails before anything starts);
    answers once `start(observer)` runs; `stop()` ends it and waits for its thread."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        ipv6 = host.startswith("[")
        server_class = _IPv6Server if ipv6 else _Server
        try:
            self._server = server_class((host.strip("[]"), int(port)), _Handler)
        except OSError as exc:
            raise UserError(
                f"[http] listen: cannot listen on {address}: {exc.strerror or exc}"
            ) from None
        bound_host, bound_port = self._server.server_address[:2]
        if isinstance(bound_host, bytes):
            bound_host = bound_host.decode()
        shown = f"[{bound_host}]" if ipv6 else str(bound_host)
        self.address = f"{shown}:{bound_port}"
        self._thread: threading.Thread | None = None

    def start(self, observer: Observer) -> None:
        self._server.observer = observer
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="http", kwargs={"poll_interval": 0.2}
        )
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
