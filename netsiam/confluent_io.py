"""``kafka.client: confluent-kafka``: KafkaConfig -> librdkafka properties, and the :class:`Producer`
on ``confluent_kafka.Producer`` (the optional ``netsiam[confluent]`` extra; imported only when chosen).

The properties reproduce what :func:`netsiam.kafka_io.producer_kwargs` asks of kafka-python (acks,
idempotence or one request in flight, reconnect back-off, request size, delivery timeout), plus the
murmur2 partitioner, so that a source's records land on the same partition whichever client sent
them. Security: PLAINTEXT, SSL, SASL PLAIN and SCRAM are mapped; GSSAPI and OAUTHBEARER (a Python
token provider object) are refused with a configuration error rather than half-mapped.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import confluent_kafka

from netsiam.config import KafkaConfig
from netsiam.errors import ConfigError
from netsiam.kafka_io import RECONNECT_BACKOFF_MAX_MS, RepeatFilter, bootstrap_list
from netsiam.producer import Delivery, PublishError

__all__ = ["MAPPED_SASL", "ConfluentProducer", "RepeatFilter", "log", "on_error", "producer_config", "security_config"]

MAPPED_SASL = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DELIVERY_TIMEOUT_MS = 120_000   # kafka-python's delivery_timeout_ms (librdkafka's default is 300 s)
BUFFER_KBYTES = 32 * 1024       # kafka-python's buffer_memory (32 MiB; librdkafka's default is 1 GiB)
CONNECT_TIMEOUT_S = 10.0        # a new producer checks that a broker answers (kafka-python's does too)
POLL_EVERY = 1024               # serve delivery reports every this many sends (they hold queue room)

log = logging.getLogger("kafka.rdkafka")  # under "kafka": quiet_kafka_logs() quiets it like kafka-python


log.addFilter(RepeatFilter())


def _refuse(key: str, why: str) -> ConfigError:
    return ConfigError(f"config kafka.{key}: {why} with kafka.client confluent-kafka; "
                       "use kafka.client: kafka-python for it")


def security_config(kcfg: KafkaConfig, bootstrap: str | None = None) -> dict[str, Any]:
    """Connection and security properties (never logged: they hold the passwords)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": ",".join(bootstrap_list(kcfg, bootstrap)),
        "client.id": kcfg.client_id,
        "security.protocol": kcfg.security_protocol,
        "reconnect.backoff.max.ms": RECONNECT_BACKOFF_MAX_MS,
    }
    if kcfg.security_protocol.startswith("SASL"):
        if not kcfg.sasl_mechanism:
            raise ConfigError(f"kafka.sasl_mechanism is required with {kcfg.security_protocol}")
        if kcfg.sasl_mechanism not in MAPPED_SASL:
            raise _refuse("sasl_mechanism", f"{kcfg.sasl_mechanism} is not mapped (only {', '.join(MAPPED_SASL)})")
        conf["sasl.mechanism"] = kcfg.sasl_mechanism
        if kcfg.sasl_username:
            conf["sasl.username"] = kcfg.sasl_username
        if kcfg.sasl_password:
            conf["sasl.password"] = kcfg.sasl_password
    if kcfg.sasl_oauth_token_provider:  # a Python object kafka-python calls; librdkafka has its own scheme
        raise _refuse("sasl_oauth_token_provider", "a kafka-python token provider cannot be used")
    if kcfg.security_protocol.endswith("SSL"):
        for key, prop in (("ssl_cafile", "ssl.ca.location"), ("ssl_certfile", "ssl.certificate.location"),
                          ("ssl_keyfile", "ssl.key.location"), ("ssl_password", "ssl.key.password"),
                          ("ssl_crlfile", "ssl.crl.location"), ("ssl_ciphers", "ssl.cipher.suites")):
            value = getattr(kcfg, key)
            if value:
                conf[prop] = value
        # librdkafka >= 2.0 checks the host name by default, as kafka-python does
        conf["ssl.endpoint.identification.algorithm"] = "https" if kcfg.ssl_check_hostname else "none"
    return conf


def producer_config(kcfg: KafkaConfig, bootstrap: str | None, *, linger_ms: int = 0, idempotent: bool = True,
                    max_buffered: int = 100_000, errors_only: bool = False) -> dict[str, Any]:
    """librdkafka producer properties matching ``kafka_io.producer_kwargs`` (its docstring: why
    ``idempotent=False`` means one request in flight)."""
    conf = {
        **security_config(kcfg, bootstrap),
        "acks": "all",
        "linger.ms": linger_ms,
        "batch.size": 256 * 1024,
        "message.max.bytes": 4 * 1024 * 1024,
        "message.timeout.ms": DELIVERY_TIMEOUT_MS,
        "queue.buffering.max.messages": max(1, max_buffered),
        "queue.buffering.max.kbytes": BUFFER_KBYTES,
        # librdkafka's default (consistent_random, CRC32) would move every source to another partition
        # than kafka-python puts it on; murmur2_random is Java's and kafka-python's choice
        "partitioner": "murmur2_random",
        "enable.idempotence": idempotent,
        "logger": log,
        "error_cb": on_error,
    }
    if not idempotent:
        conf["max.in.flight.requests.per.connection"] = 1
    if errors_only:
        conf["delivery.report.only.error"] = True
    return conf


def on_error(err: Any) -> None:
    """librdkafka's error callback: "all brokers down" and the like; callers report broker state
    themselves (as with kafka-python)."""
    log.debug("librdkafka: %s", err)


def _report(on_delivery: Delivery, err: Any, _msg: Any) -> None:
    on_delivery(None if err is None else PublishError(f"{err.name()}: {err.str()}"))


class ConfluentProducer:
    """:class:`netsiam.producer.Producer` on ``confluent_kafka.Producer``."""

    def __init__(self, conf: dict[str, Any], *, max_block_ms: int = 60_000) -> None:
        self._max_block_s = max_block_ms / 1000
        self._sent = 0
        try:
            self._p = confluent_kafka.Producer(conf)
            # librdkafka connects lazily and would queue records for an absent broker until they time
            # out; a metadata round trip now fails fast, like kafka-python's constructor
            self._p.list_topics(timeout=min(CONNECT_TIMEOUT_S, max(self._max_block_s, 1.0)))
        except confluent_kafka.KafkaException as e:
            raise PublishError(f"KafkaException: {e.args[0].str() if e.args else e}") from None

    def send(self, topic: str, key: bytes | None, value: bytes, on_delivery: Delivery | None = None) -> None:
        deadline = 0.0
        while True:
            try:
                if on_delivery is None:
                    self._p.produce(topic, value, key)
                else:
                    self._p.produce(topic, value, key, on_delivery=functools.partial(_report, on_delivery))
                break
            except BufferError:  # queue.buffering.max.*: wait for acks to make room, as kafka-python blocks
                now = time.monotonic()
                deadline = deadline or now + self._max_block_s
                if now >= deadline:
                    raise PublishError(f"the producer's buffer stayed full for {self._max_block_s:g} s") from None
                self._p.poll(0.05)
            except confluent_kafka.KafkaException as e:
                raise PublishError(f"KafkaException: {e}") from None
        self._sent += 1
        if self._sent % POLL_EVERY == 0:
            self._p.poll(0)

    def poll(self, timeout_s: float = 0.0) -> None:
        self._p.poll(timeout_s)

    def flush(self, timeout_s: float | None = None) -> bool:
        left = self._p.flush() if timeout_s is None else self._p.flush(max(timeout_s, 0.0))
        return left == 0

    def close(self, timeout_s: float = 10.0) -> None:
        if not self.flush(timeout_s):
            self._p.purge()        # what is still queued fails (its callbacks say so) ...
            self._p.poll(0)
        self._p.close()            # ... so close() has nothing left to wait for

    def abort(self) -> None:
        self._p.purge()            # queued and in-flight records fail at once; no retry goes out later
        self._p.poll(0)
        self._p.close()
