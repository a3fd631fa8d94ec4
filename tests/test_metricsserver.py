"""``serve_metrics``: the /metrics server ``collect`` and ``learn`` run beside their work is reachable inside
its block and gone after it, port freed (a restarted service binds the same port again)."""

from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from netsiam.errors import ServiceError
from netsiam.metricsserver import serve_metrics

LOG = logging.getLogger("test")


def test_served_inside_the_block_and_port_freed_after() -> None:
    reg = CollectorRegistry()
    Counter("netsiam_test_things", "things", registry=reg).inc(3)
    with serve_metrics(reg, "127.0.0.1", 0, LOG) as server:
        port = server.server_port
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "netsiam_test_things_total 3.0" in body
    with pytest.raises(urllib.error.URLError) as e:   # refused at once: the socket is closed, not left to hang
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    assert isinstance(e.value.reason, ConnectionRefusedError), e.value
    with serve_metrics(reg, "127.0.0.1", port, LOG):   # and its socket is closed: a restart binds the port again
        pass


def test_port_in_use_is_a_service_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServiceError, match=f"cannot serve metrics on 127.0.0.1:{port}"), \
                serve_metrics(CollectorRegistry(), "127.0.0.1", port, LOG):
            pass
