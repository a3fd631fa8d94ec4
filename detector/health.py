"""HTTP endpoint on a background thread: ``/metrics`` (Prometheus), ``/healthz`` (ready), ``/livez``.

``/healthz`` answers 200 ``ok`` once the daemon is ready (broker reachable, partitions assigned,
model loaded) and 503 with the reason otherwise, so a load balancer or systemd watchdog can use it;
``/livez`` answers 200 while the process serves HTTP at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from netsiam.errors import ServiceError

__all__ = ["HealthServer"]

log = logging.getLogger("netsiam.detector")


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # one line per scrape would drown the daemon's own log


class HealthServer:
    """Serve metrics and health on ``host:port`` (port 0: an ephemeral port, see ``.port``)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 ready: Callable[[], tuple[bool, str]]) -> None:
        self._metrics_app = make_wsgi_app(registry)
        self._ready = ready
        try:
            self._server = make_server(host, port, self._app, ThreadingWSGIServer, handler_class=_QuietHandler)
        except OSError as e:   # the port taken, the address not this host's: say which (--metrics-port)
            raise ServiceError(f"cannot serve metrics on {host}:{port} (--metrics-port, metrics.port): "
                               f"{e.strerror or e}") from None
        self.host = host
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, name="netsiam-http", daemon=True)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            ok, why = self._ready()
            body = b"ok\n" if ok else f"not ready: {why}\n".encode()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [body]
        if path == "/livez":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path in ("/metrics", "/"):
            return self._metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics, /healthz, /livez\n"]

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
