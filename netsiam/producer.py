"""One producer interface for ``replay`` and the collectors, two libraries behind it.

``kafka.client`` picks the library: ``kafka-python`` (the default, always installed) or
``confluent-kafka`` (the ``netsiam[confluent]`` extra: librdkafka, several times the produce rate;
:mod:`netsiam.confluent_io`). Both are configured alike from :class:`KafkaConfig` (security
included) and behave alike where callers depend on it:

* ``acks=all``; a delivery callback per record, ``None`` once the broker acknowledged it;
* bounded buffering: ``send`` blocks up to ``max_block_ms`` while the buffer is full (the broker
  away), then raises :class:`PublishError`;
* keyed records land on the partition Java's and kafka-python's murmur2 partitioner picks, so a
  source stays on its partition whichever client published it;
* callbacks: kafka-python runs them on its I/O thread, librdkafka only inside ``poll``/``flush``;
  callers call ``poll(0)`` where they look for acknowledgements, which covers both.

The daemon's producer (detector/) stays on kafka-python; its samples consumer follows
``kafka.client`` (:mod:`netsiam.confluent_consumer`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from netsiam.config import KafkaConfig
from netsiam.errors import ConfigError
from netsiam.kafka_io import producer_kwargs, quiet_kafka_logs

__all__ = [
    "CONFLUENT_HINT",
    "require_confluent",
    "Delivery",
    "KafkaPythonProducer",
    "Producer",
    "PublishError",
    "producer_factory",
]

# the one line a missing optional client gets (exit 4: a configuration error)
CONFLUENT_HINT = "kafka.client is confluent-kafka, which is not installed: pip install 'netsiam[confluent]'"

Delivery = Callable[[BaseException | None], None]
"""Called once per record: ``None`` when acknowledged, else the error."""


def _named(e: BaseException) -> str:
    """``Type: message``, once: kafka-python's errors already start their message with their type."""
    msg, name = str(e), type(e).__name__
    return msg if msg.startswith(name) else f"{name}: {msg}"


class PublishError(Exception):
    """The producer cannot be created, or a record cannot be handed to it (broker away, buffer full)."""


class Producer(Protocol):
    def send(self, topic: str, key: bytes | None, value: bytes, on_delivery: Delivery | None = None) -> None:
        """Queue one record; blocks while the buffer is full (PublishError after max_block_ms)."""

    def poll(self, timeout_s: float = 0.0) -> None:
        """Serve delivery callbacks that are due (a no-op where the library's thread runs them)."""

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait for every queued record's outcome; False when ``timeout_s`` passed first."""

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush (up to ``timeout_s``), then release the connections."""

    def abort(self) -> None:
        """Close at once: unsent records are dropped, their callbacks may not run (callers re-send)."""


class KafkaPythonProducer:
    """:class:`Producer` on kafka-python's ``KafkaProducer``."""

    def __init__(self, kw: dict[str, Any], *, errors_only: bool = False) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        self._errors_only = errors_only
        try:
            self._p = KafkaProducer(**kw)
        except KafkaError as e:
            raise PublishError(_named(e)) from None

    def send(self, topic: str, key: bytes | None, value: bytes, on_delivery: Delivery | None = None) -> None:
        from kafka.errors import KafkaError

        try:
            fut = self._p.send(topic, key=key, value=value)
        except KafkaError as e:  # no metadata or no buffer room within max_block_ms, closed...
            raise PublishError(_named(e)) from None
        if on_delivery is not None:
            if not self._errors_only:
                fut.add_callback(_acked, on_delivery)
            fut.add_errback(on_delivery)

    def poll(self, timeout_s: float = 0.0) -> None:
        return None  # kafka-python's sender thread runs the callbacks

    def flush(self, timeout_s: float | None = None) -> bool:
        from kafka.errors import KafkaTimeoutError

        try:
            self._p.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            return False
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        self._p.close(timeout_s)

    def abort(self) -> None:
        """kafka-python 3.0.12's ``close(0)`` flushes first and raises KafkaTimeoutError while records
        are pending, leaving the producer's I/O thread running: it would go on retrying the old batches
        into whatever answers next on that address, beside the new producer (measured: records out of
        order). So its sender is force-closed, which aborts the batches, and then it is closed."""
        try:
            self._p.close(0)
            return
        except Exception:  # noqa: BLE001 - pending records: force the sender down below
            pass
        sender = getattr(self._p, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(5)
        with contextlib.suppress(Exception):
            self._p.close(0)


def _acked(on_delivery: Delivery, _metadata: Any) -> None:
    on_delivery(None)


def require_confluent() -> None:
    """A missing optional client is a :class:`ConfigError` (exit 4), not an ImportError traceback."""
    try:
        import confluent_kafka  # noqa: F401 - only to tell "not installed" from other import errors
    except ImportError:
        raise ConfigError(CONFLUENT_HINT) from None


def producer_factory(kcfg: KafkaConfig, bootstrap: str | None, *, linger_ms: int = 0, idempotent: bool = True,
                     max_block_ms: int = 60_000, max_buffered: int = 100_000,
                     errors_only: bool = False) -> Callable[[], Producer]:
    """A function that opens a new producer of ``kafka.client`` (each call: a fresh one).

    The settings are checked now, not at the first connection: a missing confluent-kafka, or a
    security setting it cannot take, is a :class:`ConfigError` even while the broker is away.
    ``max_buffered``: records queued at most before ``send`` blocks (librdkafka counts records,
    kafka-python bytes: 32 MiB, its default, ~80k of our records). ``errors_only``: delivery callbacks
    run for failed records only (``replay`` counts failures; a collector needs every ack): librdkafka
    then hands no per-record report to Python."""
    quiet_kafka_logs()
    if kcfg.client == "confluent-kafka":
        require_confluent()
        from netsiam import confluent_io

        conf = confluent_io.producer_config(kcfg, bootstrap, linger_ms=linger_ms, idempotent=idempotent,
                                            max_buffered=max_buffered, errors_only=errors_only)
        return lambda: confluent_io.ConfluentProducer(conf, max_block_ms=max_block_ms)
    kw = {**producer_kwargs(kcfg, bootstrap, linger_ms=linger_ms, idempotent=idempotent),
          "max_block_ms": max_block_ms}
    return lambda: KafkaPythonProducer(kw, errors_only=errors_only)
