"""``kafka.client: confluent-kafka`` for the daemon's samples consumer: ``confluent_kafka.Consumer``
behind the part of kafka-python's ``KafkaConsumer`` the daemon calls (detector/loop.py, offsets.py).

The rest of the daemon never sees a librdkafka type: partitions are kafka-python ``TopicPartition``
tuples (dict keys everywhere), records carry kafka-python's field names, failures raise kafka-python's
``KafkaError``. What differs underneath and is handled here:

* librdkafka runs the rebalance callbacks inside ``consume()``, on the caller's thread; a new
  assignment is taken (``assign``) and paused before the daemon's listener queues it, which is what
  kafka-python's listener does on its IO thread (the main thread then seeks and resumes);
* a lost assignment (session expired) is reported as revoked, as kafka-python does;
* librdkafka connects lazily: the constructor asks for metadata so that an unreachable broker fails
  at start, as kafka-python's constructor does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import confluent_kafka
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from netsiam.config import KafkaConfig
from netsiam.confluent_io import CONNECT_TIMEOUT_S, security_config
from netsiam.kafka_io import FETCH_MAX_WAIT_MS, ConsumedRecord

__all__ = ["ConfluentConsumer", "consumer_config"]

log = logging.getLogger("kafka.rdkafka")
TOPICS_TIMEOUT_S = 5.0       # a metadata round trip blocks the loop at most this long while the broker is away
PREFETCH_KBYTES = 32 * 1024   # librdkafka's pre-fetch queue (default 64 MiB); kafka-python's fetch_max_bytes


def consumer_config(kcfg: KafkaConfig, bootstrap: str | None, group_id: str) -> dict[str, Any]:
    """librdkafka properties matching ``kafka_io.consumer_kwargs`` (its comments: why each)."""
    return {
        **security_config(kcfg, bootstrap),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": kcfg.auto_offset_reset,
        "session.timeout.ms": kcfg.session_timeout_ms,
        "heartbeat.interval.ms": kcfg.heartbeat_interval_ms,
        "fetch.wait.max.ms": FETCH_MAX_WAIT_MS,
        "max.partition.fetch.bytes": 4 * 1024 * 1024,
        "fetch.max.bytes": 32 * 1024 * 1024,
        "queued.max.messages.kbytes": PREFETCH_KBYTES,
        "logger": log,
        "error_cb": _on_error,
    }


def _on_error(err: Any) -> None:
    # broker down and the like: the daemon probes the broker itself (detector/loop.py)
    log.debug("librdkafka: %s", err)


def _ck(tps: Iterable[TopicPartition], offset: int | None = None) -> list[confluent_kafka.TopicPartition]:
    if offset is None:
        return [confluent_kafka.TopicPartition(tp.topic, tp.partition) for tp in tps]
    return [confluent_kafka.TopicPartition(tp.topic, tp.partition, offset) for tp in tps]


def _kp(parts: Iterable[confluent_kafka.TopicPartition]) -> set[TopicPartition]:
    return {TopicPartition(p.topic, p.partition) for p in parts}


def _raise(e: confluent_kafka.KafkaException) -> KafkaError:
    err = e.args[0] if e.args else None
    return KafkaError(f"{err.name()}: {err.str()}" if isinstance(err, confluent_kafka.KafkaError) else str(e))


class ConfluentConsumer:
    """The ``KafkaConsumer`` calls of detector/loop.py and detector/offsets.py on librdkafka."""

    def __init__(self, conf: dict[str, Any], max_poll_records: int) -> None:
        self._max = max_poll_records
        self._listener: Any = None
        try:
            self._c = confluent_kafka.Consumer(conf)
            self._c.list_topics(timeout=CONNECT_TIMEOUT_S)
        except confluent_kafka.KafkaException as e:
            raise _raise(e) from None

    # -- group ---------------------------------------------------------------------------------
    def subscribe(self, topics: list[str], listener: Any) -> None:
        """``listener``: a kafka-python ``ConsumerRebalanceListener``."""
        self._listener = listener
        self._c.subscribe(topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked)

    def _assigned(self, c: Any, parts: list[confluent_kafka.TopicPartition]) -> None:
        c.assign(parts)
        self._listener.on_partitions_assigned(_kp(parts))

    def _revoked(self, c: Any, parts: list[confluent_kafka.TopicPartition]) -> None:
        self._listener.on_partitions_revoked(_kp(parts))
        c.unassign()

    # -- records -------------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[ConsumedRecord]]:
        """Up to ``max_poll_records`` records by partition, in offset order within each."""
        out: dict[TopicPartition, list[ConsumedRecord]] = {}
        for m in self._c.consume(self._max, timeout_ms / 1000):
            if m.error() is not None:
                # per-partition fetch errors (librdkafka retries them itself); never a record
                log.debug("consume: %s", m.error())
                continue
            topic, partition = m.topic(), m.partition()
            tp = TopicPartition(topic, partition)
            # the stubs say None for these; that is only so on the error messages skipped above
            rec = ConsumedRecord(topic, partition, m.offset(), m.timestamp()[1], m.key(),  # type: ignore[arg-type]
                                 m.value())
            got = out.get(tp)
            if got is None:
                out[tp] = [rec]
            else:
                got.append(rec)
        return out

    def pause(self, *tps: TopicPartition) -> None:
        self._c.pause(_ck(tps))

    def resume(self, *tps: TopicPartition) -> None:
        self._c.resume(_ck(tps))

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._seek(tp, offset)

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self._seek(tp, confluent_kafka.OFFSET_BEGINNING)

    def seek_to_end(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self._seek(tp, confluent_kafka.OFFSET_END)

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._c.seek(confluent_kafka.TopicPartition(tp.topic, tp.partition, offset))
        except confluent_kafka.KafkaException as e:
            raise _raise(e) from None

    # -- offsets -------------------------------------------------------------------------------
    def committed(self, tp: TopicPartition, timeout_ms: int = 5000) -> int | None:
        try:
            (part,) = self._c.committed(_ck([tp]), timeout=timeout_ms / 1000)
        except confluent_kafka.KafkaException as e:
            raise _raise(e) from None
        return None if part.error is not None or part.offset < 0 else int(part.offset)

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        """``offsets``: kafka-python ``OffsetAndMetadata`` values (their metadata is not stored)."""
        parts = [confluent_kafka.TopicPartition(tp.topic, tp.partition, om.offset) for tp, om in offsets.items()]
        try:
            done = self._c.commit(offsets=parts, asynchronous=False)
        except confluent_kafka.KafkaException as e:
            raise _raise(e) from None
        failed = [p for p in done or () if p.error is not None]
        if failed:
            raise KafkaError(f"commit failed for {len(failed)} partition(s): {failed[0].error}")

    def highwater(self, tp: TopicPartition) -> int | None:
        """The end offset the last fetch response gave (no round trip); None before any."""
        try:
            _, high = self._c.get_watermark_offsets(confluent_kafka.TopicPartition(tp.topic, tp.partition),
                                                    cached=True)
        except (confluent_kafka.KafkaException, TypeError):  # TypeError: librdkafka knows nothing yet
            return None
        return None if high < 0 else int(high)

    def end_offsets(self, tps: list[TopicPartition], timeout_ms: int = 1000) -> dict[TopicPartition, int]:
        out = {}
        for tp in tps:
            try:
                _, high = self._c.get_watermark_offsets(confluent_kafka.TopicPartition(tp.topic, tp.partition),
                                                        timeout=timeout_ms / 1000)
            except confluent_kafka.KafkaException as e:
                raise _raise(e) from None
            out[tp] = int(high)
        return out

    def topics(self) -> set[str]:
        """A metadata round trip (not a cache)."""
        try:
            return set(self._c.list_topics(timeout=TOPICS_TIMEOUT_S).topics)
        except confluent_kafka.KafkaException as e:
            raise _raise(e) from None

    def close(self, autocommit: bool = False) -> None:
        """Leaves the group; never commits (auto-commit is off: ``autocommit`` is kafka-python's flag)."""
        self._c.close()
