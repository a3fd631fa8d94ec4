"""``kafka.client: confluent-kafka`` for the daemon's samples consumer: ``confluent_kafka.Consumer``
behind the part of kafka-python's ``KafkaConsumer`` the daemon calls (detector/loop.py, offsets.py).

The rest of the daemon never sees a librdkafka type: partitions are kafka-python ``TopicPartition``
tuples (dict keys everywhere), records carry kafka-python's field names, failures raise kafka-python's
``KafkaError``. What differs underneath and is handled here:

* ``poll`` returns as soon as records are there (librdkafka's ``consume(n, timeout)`` waits for all
  ``n`` or the timeout: a trickle of records would cost every round its whole timeout);
* librdkafka runs the rebalance callbacks inside ``consume()``, on the caller's thread; a new
  assignment is taken (``assign``) before the daemon's listener pauses and queues it (kafka-python
  runs the listener on its IO thread; the main thread then seeks and resumes either way);
* librdkafka refuses a seek (``_STATE``) until it has looked up where a newly assigned partition
  starts: the seek is retried for a while;
* a partition's cached high watermark survives a re-assignment: ``highwater`` says None until the
  partition has delivered again, as kafka-python's does for a fresh assignment;
* a lost assignment (session expired) is reported as revoked, as kafka-python does;
* librdkafka connects lazily: the constructor asks for metadata so that an unreachable broker fails
  at start, as kafka-python's constructor does; a property librdkafka refuses is a configuration
  error (exit 4), not an unreachable broker.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import confluent_kafka
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from netsiam.config import KafkaConfig
from netsiam.confluent_io import CONNECT_TIMEOUT_S, log, on_error, security_config
from netsiam.errors import ConfigError
from netsiam.kafka_io import FETCH_MAX_WAIT_MS, ConsumedRecord

__all__ = ["ConfluentConsumer", "consumer_config"]

TOPICS_TIMEOUT_S = 5.0       # a metadata round trip blocks the loop at most this long while the broker is away
PREFETCH_KBYTES = 32 * 1024   # librdkafka's pre-fetch queue (default 64 MiB); kafka-python's fetch_max_bytes
SEEK_RETRY_S = 5.0            # how long a seek waits for librdkafka to have started a new partition


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
        "error_cb": on_error,
    }


def _ck(tps: Iterable[TopicPartition]) -> list[confluent_kafka.TopicPartition]:
    return [confluent_kafka.TopicPartition(tp.topic, tp.partition) for tp in tps]


def _kp(parts: Iterable[confluent_kafka.TopicPartition]) -> set[TopicPartition]:
    return {TopicPartition(p.topic, p.partition) for p in parts}


def _raise(e: confluent_kafka.KafkaException) -> KafkaError:
    err = e.args[0] if e.args else None
    return KafkaError(f"{err.name()}: {err.str()}" if isinstance(err, confluent_kafka.KafkaError) else str(e))


def _code(e: confluent_kafka.KafkaException) -> int | None:
    err = e.args[0] if e.args else None
    return err.code() if isinstance(err, confluent_kafka.KafkaError) else None


class ConfluentConsumer:
    """The ``KafkaConsumer`` calls of detector/loop.py and detector/offsets.py on librdkafka."""

    def __init__(self, conf: dict[str, Any], max_poll_records: int) -> None:
        self._max = max_poll_records
        self._listener: Any = None
        self._fresh: set[TopicPartition] = set()  # assigned, nothing delivered since: no high watermark yet
        try:
            self._c = confluent_kafka.Consumer(conf)
        except confluent_kafka.KafkaException as e:  # a property value librdkafka refuses
            raise ConfigError(f"kafka: librdkafka refuses the configuration: {_raise(e)}") from None
        try:
            self._c.list_topics(timeout=CONNECT_TIMEOUT_S)
        except confluent_kafka.KafkaException as e:
            self._c.close()
            raise _raise(e) from None

    # -- group ---------------------------------------------------------------------------------
    def subscribe(self, topics: list[str], listener: Any) -> None:
        """``listener``: a kafka-python ``ConsumerRebalanceListener``."""
        self._listener = listener
        self._c.subscribe(topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._revoked)

    def _assigned(self, c: Any, parts: list[confluent_kafka.TopicPartition]) -> None:
        c.assign(parts)
        tps = _kp(parts)
        self._fresh |= tps
        self._listener.on_partitions_assigned(tps)

    def _revoked(self, c: Any, parts: list[confluent_kafka.TopicPartition]) -> None:
        self._listener.on_partitions_revoked(_kp(parts))
        c.unassign()

    # -- records -------------------------------------------------------------------------------
    def poll(self, timeout_ms: int = 0) -> dict[TopicPartition, list[ConsumedRecord]]:
        """Up to ``max_poll_records`` records by partition, in offset order within each; returns as
        soon as there are any (or after ``timeout_ms``)."""
        msgs = self._c.consume(self._max, 0)
        if not msgs and timeout_ms > 0:
            first = self._c.poll(timeout_ms / 1000)  # the first message, or the timeout
            if first is not None:
                msgs = [first, *self._c.consume(self._max - 1, 0)]
        out: dict[TopicPartition, list[ConsumedRecord]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                self._fetch_error(err)
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
        if self._fresh and out:
            self._fresh -= out.keys()
        return out

    @staticmethod
    def _fetch_error(err: confluent_kafka.KafkaError) -> None:
        """A per-partition error in place of records: fatal ones end the daemon (kafka-python raises
        them from poll), the rest are logged (rate-limited) while librdkafka retries."""
        if err.fatal():
            raise KafkaError(f"{err.name()}: {err.str()}")
        log.error("consume: %s: %s", err.name(), err.str())

    def pause(self, *tps: TopicPartition) -> None:
        self._c.pause(_ck(tps))

    def resume(self, *tps: TopicPartition) -> None:
        self._c.resume(_ck(tps))

    def seek_to_beginning(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.seek(tp, confluent_kafka.OFFSET_BEGINNING)

    def seek_to_end(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.seek(tp, confluent_kafka.OFFSET_END)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        deadline = time.monotonic() + SEEK_RETRY_S
        while True:
            try:
                self._c.seek(confluent_kafka.TopicPartition(tp.topic, tp.partition, offset))
                return
            except confluent_kafka.KafkaException as e:
                # _STATE: librdkafka is still looking up where the new partition starts
                if _code(e) != confluent_kafka.KafkaError._STATE or time.monotonic() >= deadline:
                    raise _raise(e) from None
            time.sleep(0.01)

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
        """The end offset the last fetch response gave (no round trip); None before any since the
        partition was assigned."""
        if tp in self._fresh:
            return None
        _, high = self._c.get_watermark_offsets(confluent_kafka.TopicPartition(tp.topic, tp.partition),
                                                cached=True)
        return None if high < 0 else int(high)

    def end_offsets(self, tps: list[TopicPartition], timeout_ms: int = 1000) -> dict[TopicPartition, int]:
        """One ListOffsets request per leader for all of ``tps`` (``timeout_ms`` for the whole call)."""
        return self._list_offsets(tps, confluent_kafka.OFFSET_END, "end", timeout_ms)

    def beginning_offsets(self, tps: list[TopicPartition], timeout_ms: int = 1000) -> dict[TopicPartition, int]:
        """Each partition's first offset still in the log (retention moves it), as ``end_offsets``."""
        return self._list_offsets(tps, confluent_kafka.OFFSET_BEGINNING, "start", timeout_ms)

    def _list_offsets(self, tps: list[TopicPartition], which: int, what: str,
                      timeout_ms: int) -> dict[TopicPartition, int]:
        if not tps:
            return {}
        try:
            parts = self._c.offsets_for_times(
                [confluent_kafka.TopicPartition(tp.topic, tp.partition, which) for tp in tps],
                timeout=timeout_ms / 1000)
        except confluent_kafka.KafkaException as e:
            raise _raise(e) from None
        bad = next((p for p in parts if p.error is not None), None)
        if bad is not None:
            raise KafkaError(f"{what} offset of {bad.topic}-{bad.partition}: {bad.error}")
        return {TopicPartition(p.topic, p.partition): int(p.offset) for p in parts}

    def topics(self) -> set[str]:
        """A metadata round trip (not a cache)."""
        try:
            return set(self._c.list_topics(timeout=TOPICS_TIMEOUT_S).topics)
        except confluent_kafka.KafkaException as e:
            raise _raise(e) from None

    def close(self, autocommit: bool = False) -> None:
        """Leaves the group; never commits (auto-commit is off: ``autocommit`` is kafka-python's flag)."""
        self._c.close()
