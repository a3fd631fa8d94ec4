"""A TLS front for the embedded broker: accepts TLS on the public port, forwards plaintext to Tansu.

The vendored Tansu 0.6.0 build cannot serve TLS (it refuses ``--cert`` with ``--key`` and ignores
``--cert`` alone: see embedded.py), so ``netsiam broker --cert C --key K`` runs Tansu on a
private loopback port, advertised as the public one, and this front terminates TLS there. Every
client, bootstrap and follow-up connections alike, then speaks TLS to the public port: the broker's
metadata names only that address.

One asyncio loop on a daemon thread; each connection is a pair of byte pumps. Python's ``ssl`` (the
standard library, OpenSSL underneath) does the TLS: no dependency added. It is meant for one
machine's demo and test traffic, not a cluster's load (a real Kafka cluster serves TLS itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from pathlib import Path

from netsiam.errors import NetsiamError, ServiceError

__all__ = ["TlsFront", "server_context"]

log = logging.getLogger("netsiam.broker.tls")

_CHUNK = 1 << 16


def server_context(cert: str | Path, key: str | Path | None = None) -> ssl.SSLContext:
    """A TLS 1.2+ server context from a PEM certificate (chain) and its key (``key`` may be left out
    when ``cert`` holds both); a clear NetsiamError for a missing or unusable file."""
    for what, path in (("certificate", cert), ("key", key)):
        if path is not None and not Path(path).is_file():
            raise NetsiamError(f"TLS {what} file not found: {path}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise NetsiamError(f"cannot use TLS certificate {cert} with key {key or cert}: {e}") from None
    return ctx


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class TlsFront:
    """TLS on ``host:port`` -> plaintext ``127.0.0.1:target_port``. ``start()`` binds (raises
    NetsiamError if it cannot), ``stop()`` closes the listener and every connection."""

    def __init__(self, host: str, port: int, target_port: int, context: ssl.SSLContext) -> None:
        self.host, self.port, self.target_port = host, port, target_port
        self._ctx = context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="netsiam-tls-front", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0      # accepted TLS connections so far (handshake done)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError as e:
            log.debug("TLS front: broker not reachable on %d: %s", self.target_port, e)
            client_w.close()
            return
        self._writers |= {client_w, up_w}
        try:
            await asyncio.gather(_pump(client_r, up_w), _pump(up_r, client_w))
        finally:
            self._writers -= {client_w, up_w}

    def start(self) -> TlsFront:
        self._thread.start()
        coro = asyncio.start_server(self._handle, self.host or None, self.port, ssl=self._ctx,
                                    reuse_address=True, ssl_handshake_timeout=10)
        try:
            self._server = asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)
        except OSError as e:
            self.stop()
            raise ServiceError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
