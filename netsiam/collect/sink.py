"""Where collected records go: Kafka with acknowledgements and a bounded buffer, or JSON Lines.

:class:`KafkaSink` keeps every record it was handed until the broker acknowledged it (``acks=all``)
and reports acknowledgements in hand-over order (:meth:`KafkaSink.poll`), so a collector saves its
progress only over records that are on the broker: delivery is at-least-once, never at-most-once.
While the broker is away records wait in the buffer; when ``max_pending`` of them wait, ``put``
blocks (the collector stops reading; its input keeps the rest), so nothing is dropped and memory
stays bounded.

The producer is ``kafka.client``'s (kafka-python or confluent-kafka: :mod:`netsiam.producer`), set
up as the daemon's (``idempotent=False``: one request in flight, so order holds per partition, and a
producer a restarted broker accepts). When the oldest
record waits more than :data:`PROBE_AFTER_S` the broker is probed; if it does not answer, or answers
without the topic (the embedded broker acknowledges a produce to a missing topic and drops it), the
producer is retired and nothing is sent until the broker and the topic are back. Then a new
producer re-sends every unacknowledged record in order. A record whose first ack was lost may so
reach the broker twice: consumers see an identical (source, ts) again.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from netsiam.collect.metrics import CollectMetrics
from netsiam.config import KafkaConfig
from netsiam.producer import Producer, PublishError, producer_factory

__all__ = ["DEFAULT_MAX_PENDING", "KafkaSink", "Sink", "Stopped", "StreamSink"]

log = logging.getLogger("netsiam.collect")

DEFAULT_MAX_PENDING = 100_000   # records held while the broker is away (~40 MB; a day of one SIPp at 1 row/s)
PROBE_AFTER_S = 2.0             # oldest record unacknowledged this long: is the broker there?
RESEND_AFTER_S = 10.0           # broker answers yet no ack this long: new producer, re-send in order
PROBE_EVERY_S = 1.0
PRODUCER_MAX_BLOCK_MS = 5000    # send() waits this long for metadata at most


class Stopped(Exception):
    """Stop was requested while ``put`` waited for room in the buffer."""


class Sink(Protocol):
    @property
    def pending(self) -> int: ...

    @property
    def room(self) -> int: ...

    def put(self, key: str, value: bytes, ts: float, token: object = None) -> None: ...

    def poll(self) -> list[object]: ...

    def flush(self, timeout_s: float) -> bool: ...

    def close(self) -> None: ...


class StreamSink:
    """JSON Lines to a file (appended) or to stdout (``-``): a record is done once written."""

    def __init__(self, path: str, metrics: CollectMetrics) -> None:
        self.metrics = metrics
        self._own = path != "-"
        self._out: IO[bytes] = Path(path).open("ab") if self._own else sys.stdout.buffer  # noqa: SIM115
        self._done: list[object] = []

    @property
    def pending(self) -> int:
        return 0

    @property
    def room(self) -> int:
        return 1 << 30

    def put(self, key: str, value: bytes, ts: float, token: object = None) -> None:
        try:
            self._out.write(value + b"\n")
            self._out.flush()  # a pipe reader sees each record as soon as it is made
        except BrokenPipeError:  # `-o - | head`: the reader has what it wanted; stop quietly
            if not self._own:
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._out.fileno())   # stdout: no error at exit
            raise Stopped from None
        self.metrics.acked(ts, time.time())
        self._done.append(token)

    def poll(self) -> list[object]:
        done, self._done = self._done, []
        self.metrics.refresh(time.time())
        return done

    def flush(self, timeout_s: float) -> bool:
        self._out.flush()
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._out.flush()
        if self._own:
            self._out.close()


@dataclass(eq=False, slots=True)
class _Pending:
    key: bytes
    value: bytes
    ts: float
    token: object
    sent_at: float = 0.0
    acked: bool = False   # set by the delivery callback (kafka-python: its I/O thread)


class KafkaSink:
    def __init__(self, bootstrap: str, topic: str, metrics: CollectMetrics, *, kafka: KafkaConfig | None = None,
                 max_pending: int = DEFAULT_MAX_PENDING, stop: threading.Event | None = None,
                 ride_out: bool = True) -> None:
        """``ride_out``: an outage found by the first probe is held through like any other (records wait, a
        warning says so); False for a caller that refuses to start without the broker (a one-shot run) and
        says why itself. Outages after the start are held through either way."""
        from netsiam.kafka_io import client_kwargs

        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        kcfg = kafka or KafkaConfig()
        self.topic, self.metrics, self.max_pending = topic, metrics, max_pending
        self._client = kcfg.client
        self.stop = stop or threading.Event()
        self._ride_out = ride_out
        # checked now (a missing confluent-kafka is a config error at start, broker there or not)
        self._open_producer = producer_factory(kcfg, bootstrap, linger_ms=5, idempotent=False,
                                               max_block_ms=PRODUCER_MAX_BLOCK_MS, max_buffered=max_pending)
        # the probe is a kafka-python metadata request whichever client publishes: one code path for
        # "broker and topic there?" (librdkafka's metadata cache would answer without asking)
        self._probe_kw = {**client_kwargs(kcfg, bootstrap), "request_timeout_ms": 5000}
        self._probe: Any = None
        self._producer: Producer | None = None
        self._q: deque[_Pending] = deque()
        self._done: list[object] = []   # acknowledged, not yet handed back by poll()
        self._failed = False          # a send failed (set by the producer thread too)
        self._gen = 0                 # producer generation: failures of retired producers are ignored
        self._next_probe = 0.0
        self._up: bool | None = None
        self.down_why = ""            # why the broker is not taking records, while it is not
        self._recover()               # connect now: a wrong address or a missing topic shows at once

    @property
    def pending(self) -> int:
        return len(self._q)

    @property
    def room(self) -> int:
        """Records ``put`` takes now without blocking (acknowledged ones make room once polled)."""
        self._prune()
        return self.max_pending - len(self._q)

    # -- hand-over ---------------------------------------------------------------------------
    def put(self, key: str, value: bytes, ts: float, token: object = None) -> None:
        """Queue one record for the broker; blocks while ``max_pending`` records wait (Stopped on stop)."""
        while len(self._q) >= self.max_pending:
            self._check()
            self._prune()
            if len(self._q) < self.max_pending:
                break
            if self.stop.wait(0.05):
                raise Stopped
        p = _Pending(key.encode(), value, ts, token)
        self._q.append(p)
        self._send(p)
        self.metrics.pending.set(len(self._q))

    def poll(self) -> list[object]:
        """Tokens of the records acknowledged since the last call, in hand-over order."""
        self._check()
        self._prune()
        done, self._done = self._done, []
        self.metrics.refresh(time.time())
        return done

    def _prune(self) -> None:
        if self._producer is not None:
            self._producer.poll(0)  # librdkafka runs delivery callbacks here only
        now = time.time()
        while self._q and self._q[0].acked:
            p = self._q.popleft()
            self._done.append(p.token)
            self.metrics.acked(p.ts, now)
        self.metrics.pending.set(len(self._q))

    def flush(self, timeout_s: float) -> bool:
        """Wait until every record put is acknowledged (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        while self._q:
            self._check()
            if not any(not p.acked for p in self._q):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._producer is not None:
                with contextlib.suppress(Exception):
                    self._producer.flush(min(left, 0.5))
            else:
                time.sleep(min(left, 0.1))
        return True

    def close(self) -> None:
        self._retire()
        if self._probe is not None:
            with contextlib.suppress(Exception):
                self._probe.close()
            self._probe = None

    # -- delivery ----------------------------------------------------------------------------
    def _send(self, p: _Pending) -> None:
        p.sent_at = time.monotonic()
        if self._producer is None:
            return  # held: re-sent, in order, once the broker and the topic are back
        try:
            self._producer.send(self.topic, p.key, p.value, functools.partial(self._delivered, p, self._gen))
        except PublishError as e:  # no metadata or buffer room within max_block_ms, producer closed...
            self._on_fail(None, e)

    def _delivered(self, p: _Pending, gen: int, exc: BaseException | None) -> None:
        if exc is None:
            p.acked = True
        else:
            self._on_fail(gen, exc)

    def _on_fail(self, gen: int | None, exc: Any) -> None:
        if gen is not None and gen != self._gen:
            return  # a retired producer's batch, aborted on purpose: it is re-sent by the next one
        self._failed = True
        self.metrics.error("publish")
        log.debug("send failed: %s", exc)

    def _check(self) -> None:
        """Probe and recover when a send failed, records wait too long, or no producer is up."""
        now = time.monotonic()
        waiting = next((p for p in self._q if not p.acked), None)
        age = now - waiting.sent_at if waiting is not None else 0.0
        if (self._failed or age > PROBE_AFTER_S or self._producer is None) and now >= self._next_probe:
            self._recover(stalled=age > RESEND_AFTER_S)

    def _recover(self, stalled: bool = False) -> None:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        self._next_probe = time.monotonic() + PROBE_EVERY_S
        try:
            if self._probe is None:
                self._probe = KafkaConsumer(**self._probe_kw)
            present = self.topic in self._probe.topics()  # a metadata round trip, not the cache
        except (KafkaError, OSError) as e:
            self._set_up(False, f"broker unreachable ({type(e).__name__})")
            self._retire()
            return
        if not present:
            self._set_up(False, f"topic {self.topic} does not exist")
            self._retire()
            return
        self._set_up(True, "")
        if self._producer is not None and not self._failed and not stalled:
            return  # slow, but delivering
        self._retire()
        self._failed = False
        try:
            self._producer = self._open_producer()
        except PublishError as e:
            log.warning("cannot create a producer (%s); retrying", e)
            return
        todo = [p for p in self._q if not p.acked]
        if todo:
            log.warning("re-sending %d unacknowledged record(s) in order", len(todo))
        for p in todo:
            self._send(p)

    def _retire(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            self._gen += 1
            producer.abort()  # unsent batches dropped: the next producer re-sends them, in order

    @property
    def up(self) -> bool:
        """The last probe found the broker and the topic."""
        return bool(self._up)

    def _set_up(self, up: bool, why: str) -> None:
        self.down_why = why
        if up != self._up:
            if up:
                log.info("broker reachable, topic %s present: publishing with %s", self.topic, self._client)
            elif self._ride_out or self._up is not None:
                log.warning("%s: holding records (%d waiting, at most %d)", why, len(self._q), self.max_pending)
        self._up = up
        self.metrics.broker_up.set(1 if up else 0)

