"""``/metrics`` over HTTP for the command-line services beside the daemon (``collect``, ``learn``): prometheus
client's own server, and the one-line error a port in use gets (the daemon's, with ``/healthz``, is
``detector/health.py``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from netsiam.errors import ServiceError

__all__ = ["serve_metrics"]


@contextmanager
def serve_metrics(registry: CollectorRegistry, host: str, port: int, log: logging.Logger) -> Iterator[Any]:
    """Serve ``registry`` on ``host:port`` (0: any free port) in a thread while the block runs; yields the
    server, stopped and its socket closed on the way out. A port in use, or an address not this host's, is a
    :class:`ServiceError` naming it."""
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as e:
        raise ServiceError(f"cannot serve metrics on {host}:{port} (--metrics-port): {e.strerror or e}") from None
    log.info("metrics listening on http://%s:%d/metrics", host, server.server_port)
    try:
        yield server
    finally:
        server.shutdown()       # stop serving (waits for the request in hand), then free the port
        server.server_close()
        thread.join(timeout=5)
