"""Delivery: every event and dead letter stays queued until the broker acknowledges it.

Commits ask :meth:`Publisher.acked_below`, so an offset is committed only once every output its
records caused is acknowledged (at-least-once; event ids are deterministic, consumers de-duplicate).
A failed send is not fatal: the producer is replaced and every unacknowledged output is sent again,
in order. How an outage is survived depends on the broker; that part sits behind :class:`OutageRules`
(the daemon uses :class:`~netsiam.detector.tansu.TansuWorkarounds`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import errors as kerr
from kafka.errors import KafkaError

from .metrics import DetectorMetrics

__all__ = [
    "ACK_OVERDUE_S",
    "MAX_UNACKED",
    "MAX_UNACKED_BYTES",
    "PRODUCER_STALL_S",
    "DurableBroker",
    "FatalError",
    "Ledger",
    "OutageRules",
    "Output",
    "Publisher",
    "recoverable",
]

log = logging.getLogger("netsiam.detector")

ACK_OVERDUE_S = 3.0         # oldest output unacknowledged this long: not ready, consumption paused
MAX_UNACKED = 20_000        # outputs in flight at most (and MAX_UNACKED_BYTES): beyond, consumption pauses
MAX_UNACKED_BYTES = 16 << 20  # half of kafka-python's buffer_memory, so send() never blocks on a full buffer
PRODUCER_STALL_S = 10.0     # no ack this long while the broker answers the consumer: replace the producer
RETIRED = "retired"         # why a producer is replaced once the broker is back after an outage
RECOVER_BACKOFF_S = (0.5, 30.0)  # between producer re-creations without progress: doubling, capped


class FatalError(RuntimeError):
    """Publishing (or embedding) failed for good: exit without committing, so a restart replays."""


# Errors that re-sending cannot cure (configuration, authorisation, a message the broker refuses):
# exit 1 without committing. Every other publishing failure (delivery timeout while the broker is
# away, a producer id or sequence the broker does not know after it restarted empty, a fenced or
# aborted producer) is cured by a new producer and a re-send.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    kerr.AuthorizationError, kerr.SaslAuthenticationFailedError, kerr.MessageSizeTooLargeError,
    kerr.RecordListTooLargeError, kerr.InvalidRecordError, kerr.InvalidTopicError, kerr.CorruptRecordError,
    kerr.UnsupportedVersionError, kerr.UnsupportedForMessageFormatError, kerr.InvalidTimestampError,
    kerr.PolicyViolationError, kerr.InvalidRequiredAcksError, kerr.KafkaConfigurationError)


def recoverable(exc: BaseException | None) -> bool:
    return isinstance(exc, KafkaError) and not isinstance(exc, PERMANENT_ERRORS)


@dataclass(eq=False, slots=True)
class Output:
    """One produced message until the broker acknowledged it (kept for a re-send)."""

    idx: int                      # send order (a commit covers the outputs sent before it)
    topic: str
    key: bytes | None
    value: bytes
    sent_at: float                # monotonic, first send
    fault: str | None = None      # events: for the ack metrics
    state: str = ""
    record_ts_ms: int = 0
    fut: Any = None               # the future of the latest send
    acked: bool = False           # set by the ack callback of any of its sends (producer thread)


class OutageRules(Protocol):
    """What a broker outage means for the producer: the broker-specific part of delivery."""

    def on_outage(self) -> bool:
        """The broker stopped answering. True: retire the producer now (fail its pending sends)."""
        ...

    def may_resend(self, held: Callable[[], int]) -> bool:
        """May a new producer send again? ``held()`` counts the outputs waiting (for a log line)."""
        ...


class DurableBroker:
    """A broker that keeps its topics across a restart: the producer's own retries are safe."""

    def on_outage(self) -> bool:
        return False

    def may_resend(self, held: Callable[[], int]) -> bool:
        return True


def kafka_producer(kw: dict[str, Any]) -> Any:
    from kafka import KafkaProducer  # looked up per call: tests stand in for it

    return KafkaProducer(**kw)


class Ledger:
    """Outputs in send order until the broker acknowledged them: what commits and backpressure ask.

    Main thread only, except :meth:`ack` (the producer thread) and the ``*_safe`` readers.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._q: deque[Output] = deque()  # acknowledged ones leave from the front
        self._bytes = 0                   # message bytes in _q (an upper bound of the unacknowledged)
        self.sent = 0                     # outputs added so far (the next Output.idx)

    def add(self, topic: str, key: bytes | None, value: bytes, fault: str | None, state: str,
            record_ts_ms: int) -> Output:
        o = Output(self.sent, topic, key, value, self._clock(), fault, state, record_ts_ms)
        self.sent += 1
        self._q.append(o)
        self._bytes += len(value)
        return o

    @staticmethod
    def ack(o: Output) -> bool:
        """Mark ``o`` acknowledged; False if it already was (a re-send whose first send got through)."""
        if o.acked:
            return False
        o.acked = True
        return True

    def _prune(self) -> None:
        q = self._q
        while q and q[0].acked:
            self._bytes -= len(q.popleft().value)

    def acked_below(self, n: int) -> bool:
        """True when every output sent before the ``n``-th is acknowledged."""
        self._prune()
        return not self._q or self._q[0].idx >= n

    def oldest_unacked_s(self) -> float:
        """Seconds the oldest unacknowledged output has waited (0 if none)."""
        self._prune()
        return self._clock() - self._q[0].sent_at if self._q else 0.0

    def unacked(self) -> list[Output]:
        """The outputs not acknowledged yet, in send order."""
        return [o for o in self._q if not o.acked]

    def overdue_s_safe(self) -> float:
        """:meth:`oldest_unacked_s` for any thread (the health endpoint): no pruning, a copy."""
        for o in list(self._q):
            if not o.acked:
                return self._clock() - o.sent_at
        return 0.0

    def pending_safe(self) -> int:
        """Outputs not acknowledged yet; any thread."""
        return sum(1 for o in list(self._q) if not o.acked)

    def congested(self) -> bool:
        """Too much unacknowledged, or for too long: the consumer should pause (bounded memory)."""
        q = self._q
        return bool(q) and (len(q) > MAX_UNACKED or self._bytes > MAX_UNACKED_BYTES
                            or self.oldest_unacked_s() > ACK_OVERDUE_S)


class Publisher:
    """Sends outputs and keeps them in its :class:`Ledger` until acknowledged; after a failed send or a
    stall, a new producer sends every unacknowledged output again, in order. Main thread only, except
    the ack callbacks (producer thread)."""

    def __init__(self, producer_kw: dict[str, Any], metrics: DetectorMetrics, rules: OutageRules | None = None,
                 *, factory: Callable[[dict[str, Any]], Any] = kafka_producer,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._kw = dict(producer_kw)
        self._factory = factory
        self._metrics = metrics
        self._rules = rules or DurableBroker()
        self._clock = clock
        self.ledger = Ledger(clock)
        self._send_failed = False               # set by an errback: recover() re-sends
        self._stalled = False                   # no ack for PRODUCER_STALL_S while the broker answers
        self._recover_after = 0.0               # no producer re-creation before this (clock)
        self._backoff = RECOVER_BACKOFF_S[0]
        self._progress = False                  # an ack since the last re-creation
        self._broken: KafkaError | None = None  # send() itself failed on this producer: skip it
        self.producer = factory(self._kw)
        # a re-created producer must not block on a bootstrap while the broker is away
        version = getattr(self.producer, "config", {}).get("api_version")
        if version is not None:
            self._kw["api_version"] = version

    # -- sending -------------------------------------------------------------------------------
    def send(self, topic: str, key: bytes | None, value: bytes, *, fault: str | None = None, state: str = "",
             record_ts_ms: int = 0) -> None:
        self._produce(self.ledger.add(topic, key, value, fault, state, record_ts_ms))

    def _produce(self, o: Output) -> None:
        from kafka.future import Future

        if self._broken is not None:
            # this producer already failed a send() outright (e.g. no metadata within max_block_ms), or was
            # retired in an outage: do not block on it again for every output; they go out with the next
            o.fut = Future().failure(self._broken)
            return
        try:
            fut = self.producer.send(o.topic, key=o.key, value=o.value)
        except KafkaError as e:  # no metadata within max_block_ms (broker away), producer closed, ...
            fut = Future().failure(e)
            self._broken = e
            self._send_failed = True
        else:
            fut.add_callback(self._on_ack, o)
            fut.add_errback(self._on_fail)
        o.fut = fut

    def _on_ack(self, o: Output, _meta: Any) -> None:
        # producer thread (or this one, when the future was already done)
        if not self.ledger.ack(o):
            return
        self._progress = True
        if o.fault is not None:
            m = self._metrics
            m.fault_events.labels(fault=o.fault, state=o.state).inc()
            if o.record_ts_ms > 0:
                m.record_to_event_seconds.observe(max(0.0, time.time() - o.record_ts_ms / 1000.0))

    def _on_fail(self, _exc: Any) -> None:
        self._send_failed = True

    # -- recovery ------------------------------------------------------------------------------
    def check_stall(self, age_s: float) -> None:
        """Called while the broker answers: no ack for PRODUCER_STALL_S means a new producer."""
        if age_s > PRODUCER_STALL_S:
            self._stalled = True

    def broker_lost(self, why: str) -> None:
        """The broker stopped answering: retire the producer if the outage rules say so. Its pending
        sends fail now and stay in the ledger until a new producer re-sends them."""
        if not self._rules.on_outage() or self._broken is not None:
            return
        log.warning("%s: producer retired, %d message(s) held for a re-send", why, self.ledger.pending_safe())
        self._broken = kerr.KafkaConnectionError(why)
        self._send_failed = True
        with contextlib.suppress(Exception):  # aborts its batches: their errbacks set _send_failed again
            self.producer.close(0)

    def recover(self, broker_up: bool) -> None:
        """After a failed send, or a producer stalled while the broker answers: a new producer, and
        every unacknowledged output sent again, in order. Raises FatalError on a permanent error."""
        if not (self._send_failed or self._stalled):
            return
        now = self._clock()
        if now < self._recover_after or not broker_up:
            return  # while the broker is away a new producer could not deliver either
        if not self._rules.may_resend(self.ledger.pending_safe):
            self._recover_after = now + 1.0
            return
        why = self._failure()
        if not why:
            return  # only superseded sends failed (an old producer's aborts), or acks came meanwhile
        if self._progress:
            self._backoff = RECOVER_BACKOFF_S[0]
        self._progress = False
        self._recover_after = now + self._backoff
        self._backoff = min(self._backoff * 2, RECOVER_BACKOFF_S[1])
        todo = self.ledger.unacked()
        if why == RETIRED:
            log.info("broker back: new producer, re-sending %d held message(s)", len(todo))
        else:
            log.warning("publishing failed (%s): new producer, re-sending %d unacknowledged message(s)", why, len(todo))
        self._replace_producer()
        for o in todo:
            if not o.acked:
                self._produce(o)

    def _failure(self) -> str:
        """Why the producer must be replaced ("" if it need not be); clears the flags."""
        why = ""
        if self._send_failed:
            self._send_failed = False
            failed = [o for o in self.ledger.unacked() if o.fut is not None and o.fut.failed()]
            if failed:
                exc = failed[0].fut.exception
                if not recoverable(exc):
                    raise FatalError(f"{len(failed)} message(s) refused by the broker: {type(exc).__name__}: {exc}")
                why = f"{type(exc).__name__}: {exc}"
        if self._stalled:
            self._stalled = False
            age = self.ledger.oldest_unacked_s()
            if not why and age > PRODUCER_STALL_S:
                why = f"no acknowledgement for {age:.0f} s while the broker answers"
        # retired in an outage with nothing held: replaced now that the broker is back, not after a send
        # failed into it and PRODUCER_STALL_S passed (every broker restart cost ~10 s of paused consumption)
        return why or (RETIRED if self._broken is not None else "")

    def _replace_producer(self) -> None:
        with contextlib.suppress(Exception):  # its unsent batches are aborted; their errbacks are harmless
            self.producer.close(0)
        try:
            self.producer = self._factory(self._kw)
            self._broken = None
        except KafkaError as e:  # sends are failed at once: retried after the backoff
            log.warning("cannot create a producer (%s); retrying", type(e).__name__)
            self._broken = e
            self._send_failed = True

    # -- shutdown ------------------------------------------------------------------------------
    def wait_all_acked(self, timeout_s: float, broker_up: bool) -> None:
        """Block until everything sent is acknowledged; FatalError if it is not within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.ledger.acked_below(self.ledger.sent):
                return
            self.recover(broker_up)  # re-sends after a failure; raises on a permanent error
            left = deadline - time.monotonic()
            if left <= 0:
                raise FatalError(f"{self.ledger.pending_safe()} message(s) not acknowledged within {timeout_s:.0f} s")
            t0 = time.monotonic()
            with contextlib.suppress(KafkaError):
                self.producer.flush(timeout=min(left, 1.0))
            if time.monotonic() - t0 < 0.01:
                time.sleep(0.05)  # failed sends waiting for their re-send backoff

    def close(self, timeout_s: float) -> None:
        self.producer.close(timeout_s)
