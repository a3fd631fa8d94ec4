"""Kafka client settings shared by the daemon, ``replay`` and ``broker``: one place maps KafkaConfig
(security included) to kafka-python keyword arguments, so no caller forgets SASL or TLS.
"""

from __future__ import annotations

import importlib
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from netsiam.config import KafkaConfig
from netsiam.errors import ConfigError, debugging

__all__ = ["FETCH_MAX_WAIT_MS", "ClosedTransportFilter", "ConsumedRecord", "KafkaNoiseFilter", "REPEAT_S", "RepeatFilter", "bootstrap_list", "client_kwargs", "consumer_kwargs", "install_log_filter", "producer_kwargs", "quiet_kafka_logs"]

# Tansu answers a fetch over several partitions only when fetch_max_wait_ms expires, even once data
# is there (kafka-python's default 500 ms gave a record->consumer p50 of 150 ms, p99 290 ms; 50 ms
# gives 20 / 37 ms). Idle cost: one fetch round trip per 50 ms. Lower is not worth it (measured
# 2026-11-23, daemon idle and caught up: 50 ms 6 %, 20 ms 12 %, 10 ms 19 % of a core; a bare
# consumer's append->poll p99 at 3k records/s only went from ~32 to ~20 ms).
FETCH_MAX_WAIT_MS = 50
RECONNECT_BACKOFF_MAX_MS = 1000


class ConsumedRecord(NamedTuple):
    """A consumed record as the daemon's pipeline reads it: the fields of kafka-python's
    ``ConsumerRecord`` it uses (timestamp in ms); the librdkafka consumer hands these over."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


def bootstrap_list(kcfg: KafkaConfig, bootstrap: str | None = None) -> list[str]:
    """``--bootstrap`` (else ``kafka.bootstrap_servers``) as a list of HOST:PORT; empty is an error."""
    servers = [s.strip() for s in (bootstrap or kcfg.bootstrap_servers).split(",") if s.strip()]
    if not servers:
        raise ConfigError("kafka.bootstrap_servers is empty")
    return servers


def client_kwargs(kcfg: KafkaConfig, bootstrap: str | None = None) -> dict[str, Any]:
    """Connection and security settings common to every kafka-python client (never logged)."""
    servers = bootstrap_list(kcfg, bootstrap)
    kw: dict[str, Any] = {
        "bootstrap_servers": servers,
        "client_id": kcfg.client_id,
        "security_protocol": kcfg.security_protocol,
        # kafka-python backs off up to 30 s between reconnects (exponential); after a broker outage
        # that alone delayed readiness past 10 s. 1 s caps it at a cheap connect attempt per second.
        "reconnect_backoff_max_ms": RECONNECT_BACKOFF_MAX_MS,
    }
    if kcfg.security_protocol.startswith("SASL"):
        if not kcfg.sasl_mechanism:
            raise ConfigError(f"kafka.sasl_mechanism is required with {kcfg.security_protocol}")
        kw["sasl_mechanism"] = kcfg.sasl_mechanism
        # kafka-python names these "plain" but uses them for SCRAM too
        kw["sasl_plain_username"] = kcfg.sasl_username or None
        kw["sasl_plain_password"] = kcfg.sasl_password or None
        for key in ("sasl_kerberos_name", "sasl_kerberos_service_name", "sasl_kerberos_domain_name"):
            if getattr(kcfg, key):
                kw[key] = getattr(kcfg, key)
        if kcfg.sasl_oauth_token_provider:
            kw["sasl_oauth_token_provider"] = _import_provider(kcfg.sasl_oauth_token_provider)
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_crlfile", "ssl_ciphers"):
        value = getattr(kcfg, key)
        if value:
            kw[key] = value
    if not kcfg.ssl_check_hostname:  # only when turned off: kafka-python's default is to check
        kw["ssl_check_hostname"] = False
    return kw


def _import_provider(spec: str) -> Any:
    """``module:attribute`` -> a kafka-python OAuth token provider (an instance, or a class or factory
    called without arguments): an object cannot be written in YAML, its import path can."""
    module_name, _, attr = spec.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"kafka.sasl_oauth_token_provider: cannot import {spec}: {e}") from None
    from kafka.net.sasl.oauth import AbstractTokenProvider

    if isinstance(obj, AbstractTokenProvider):
        return obj
    if callable(obj):
        obj = obj()
    if not isinstance(obj, AbstractTokenProvider):
        raise ConfigError(f"kafka.sasl_oauth_token_provider: {spec} is not a kafka.net.sasl.oauth.AbstractTokenProvider")
    return obj


def consumer_kwargs(kcfg: KafkaConfig, bootstrap: str | None, group_id: str | None) -> dict[str, Any]:
    return {
        **client_kwargs(kcfg, bootstrap),
        "group_id": group_id,
        "enable_auto_commit": False,            # commits follow the producer's acks (detector/offsets.py)
        # earliest (default): a new group reads the whole topic, nothing is skipped; latest: only what
        # arrives from now on (detector/offsets.py seeks the same way when no offset is committed)
        "auto_offset_reset": kcfg.auto_offset_reset,
        "session_timeout_ms": kcfg.session_timeout_ms,
        "heartbeat_interval_ms": kcfg.heartbeat_interval_ms,
        "max_poll_records": kcfg.max_poll_records,
        "fetch_max_wait_ms": FETCH_MAX_WAIT_MS,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "fetch_max_bytes": 32 * 1024 * 1024,
    }


def producer_kwargs(kcfg: KafkaConfig, bootstrap: str | None, linger_ms: int = 0,
                    idempotent: bool = True) -> dict[str, Any]:
    """``idempotent=False`` (the daemon): no producer id, one request in flight per connection.

    Measured against Tansu 0.6.0 restarted empty on the same port, an idempotent kafka-python producer
    never recovers on its own: a batch that was waiting for the broker gets UNKNOWN_PRODUCER_ID, which
    kafka-python takes for retention and retries with sequence 0 every 100 ms until the delivery
    timeout (120 s); a batch in flight gets OUT_OF_ORDER_SEQUENCE_NUMBER, and the epoch bump that
    follows fails (InitProducerId: UNKNOWN), a fatal producer state. Without idempotence the same
    batch is accepted as soon as the broker is back. What idempotence would add, no duplicate when a
    retry follows a lost ack, the daemon does not need: delivery is at-least-once by contract and
    event ids are deterministic, so consumers de-duplicate. Order per partition is kept by allowing
    one request in flight (events are few; dead letters batch up behind it).
    """
    kw: dict[str, Any] = {
        **client_kwargs(kcfg, bootstrap),
        "acks": "all",
        "linger_ms": linger_ms,
        "batch_size": 256 * 1024,
        "max_request_size": 4 * 1024 * 1024,
    }
    if not idempotent:
        kw["enable_idempotence"] = False
        kw["max_in_flight_requests_per_connection"] = 1
    return kw


class ClosedTransportFilter(logging.Filter):
    """Drops kafka-python's traceback for a read of a socket it has just closed itself.

    Its network thread can read once more after ``close()`` set the socket to None (seen when the
    daemon stops): ``<KafkaTCPTransport ... (closed)>: Error receiving network data`` with an
    AttributeError. Nothing is lost and there is nothing to act on; any other error still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, AttributeError) and "(closed)>" in record.getMessage())


REPEAT_S = 60.0  # a client's log line that differs from an earlier one only in its numbers: once per this


class RepeatFilter(logging.Filter):
    """A client logs each failed reconnect at ERROR (librdkafka ~20 lines a second per client) while a
    broker is away; callers report the outage themselves. Lets a line through once per ``every_s``
    (numbers ignored, so "after 0ms" and "after 3ms" are one line) and says how many were held back."""

    def __init__(self, every_s: float = REPEAT_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s, self._clock = every_s, clock
        self._seen: dict[str, tuple[float, int]] = {}  # shape -> (when last let through, held back since)

    def filter(self, record: logging.LogRecord) -> bool:
        shape = re.sub(r"\d+", "#", record.getMessage())
        now = self._clock()
        last, held = self._seen.get(shape, (-math.inf, 0))
        if now - last < self.every_s:
            self._seen[shape] = (last, held + 1)
            return False
        if len(self._seen) > 1000:  # bounded: shapes come from a handful of brokers and states
            self._seen.clear()
        self._seen[shape] = (now, 0)
        if held:
            record.msg, record.args = f"{record.getMessage()} ({held} like it in the last {now - last:.0f} s)", None
        return True


class KafkaNoiseFilter(RepeatFilter):
    """On the log handler, so it sees every ``kafka.*`` logger: kafka-python logs ERROR from five places
    (connection, cluster metadata, coordinator, fetcher, transport), each once a second or more, while a
    broker is away: 60 lines before a verb's own one-line "cannot reach the broker", 116 in a 60-s outage
    of the daemon, which says "broker unreachable" and "broker reachable" itself. A broker that refuses or
    does not answer is dropped; any other line (TLS, a name that does not resolve, a rebalance) shows once
    a minute per shape, which is what an operator needs. ``NETSIAM_DEBUG=1`` keeps every line; librdkafka's
    (``kafka.rdkafka``) has its own RepeatFilter."""

    PLAIN = re.compile(r"ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|Unable to bootstrap|[Tt]imed? ?out")

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("kafka.") or record.name == "kafka.rdkafka" or debugging():
            return True
        return not self.PLAIN.search(record.getMessage()) and super().filter(record)


def install_log_filter() -> None:
    """Put :class:`KafkaNoiseFilter` on the root logger's handlers (once; call after logging is set up)."""
    for h in logging.getLogger().handlers:
        if not any(isinstance(f, KafkaNoiseFilter) for f in h.filters):
            h.addFilter(KafkaNoiseFilter())


# on its own logger: a logger's filters see only the records logged on it (confluent_io.py: RepeatFilter on librdkafka's)
logging.getLogger("kafka.net.transport").addFilter(ClosedTransportFilter())


def quiet_kafka_logs() -> None:
    """kafka-python logs every reconnect attempt at WARNING; the daemon reports broker state itself."""
    logging.getLogger("kafka").setLevel(logging.ERROR)
