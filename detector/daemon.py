"""``netsiam detect``: the streaming daemon. Kafka in, fault events and dead letters out.

Loop (main thread): ``poll`` -> :meth:`Pipeline.feed` (decode, window) -> when a micro-batch is due
(``detector.batch_max`` windows, ``detector.batch_wait_ms`` since the oldest, or at once when the
consumer has caught up), hand it to the embed thread (one ``artifact.embed`` call) while the next
records are consumed -> apply the result in order (debounce) -> publish events and dead letters
(acks=all, no per-record flush) -> commit at most every COMMIT_INTERVAL_S.

Delivery: offsets are committed only after the broker acknowledged every event and dead letter
caused by the records below them (at-least-once; event ids are deterministic so consumers dedupe).
A failed send is retried, not fatal: the producer is replaced and every output not yet acknowledged
is sent again, in order (a broker restarted empty does not know the idempotent producer's id). When
the broker stops answering, the producer is retired at once, and a new one sends only once the output
topics the daemon saw at start exist again: the embedded broker (Tansu 0.6.0) acknowledges a produce to
a topic that does not exist and drops it, and an old producer retrying into a broker restarted empty,
before its topics are recreated, lost events that way. While
outputs stay unacknowledged past ACK_OVERDUE_S, /healthz says not ready, ``netsiam_broker_up`` is 0
and consumption pauses (bounded memory); it resumes by itself. Only an error that re-sending cannot
cure (authorisation, a message the broker refuses) exits 1, without committing.
Next to each commit, the replay-from offset of each partition goes to the shadow consumer group
``<group>.rewind`` (Tansu drops commit metadata, a second group stores it just as well). On
assignment the daemon seeks there and replays with publishing suppressed below the committed offset,
so after a SIGKILL every episode is still raised, with the same event_id (detector/pipeline.py has
the rule and why it is exact).

Shutdown (SIGTERM/SIGINT): stop polling, finish the batch, publish, wait for acks, commit, close.
SIGHUP reloads the model (also reloaded when its files change; detector/reload.py).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import logging
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from kafka import ConsumerRebalanceListener
from kafka import errors as kerr
from kafka.errors import KafkaError
from prometheus_client import REGISTRY, CollectorRegistry

from netsiam.config import Config, override
from netsiam.errors import NetsiamError
from netsiam.trainer.artifact import Artifact, default_model_path, load_artifact

from .kafka_io import client_kwargs, consumer_kwargs, producer_kwargs, quiet_kafka_logs
from .metrics import DetectorMetrics
from .pipeline import TP, Batch, BatchResult, DeadLetter, EventOut, Pipeline, run_batch
from .reload import ArtifactWatcher, warm_up

__all__ = ["ACK_OVERDUE_S", "COMMIT_INTERVAL_S", "MAX_UNACKED", "Daemon", "RewindMarkers", "cli_detect"]

log = logging.getLogger("netsiam.detector")

COMMIT_INTERVAL_S = 0.5     # commits cost a round trip; more often buys only a shorter replay after a crash
ACK_OVERDUE_S = 3.0         # oldest output unacknowledged this long: not ready, consumption paused
MAX_UNACKED = 20_000        # outputs in flight at most (and MAX_UNACKED_BYTES): beyond, consumption pauses
MAX_UNACKED_BYTES = 16 << 20  # half of kafka-python's buffer_memory, so send() never blocks on a full buffer
PRODUCER_MAX_BLOCK_MS = 5000  # send() waits this long for metadata at most (then: a failed send, retried)
PRODUCER_STALL_S = 10.0     # no ack this long while the broker answers the consumer: replace the producer
RECOVER_BACKOFF_S = (0.5, 30.0)  # between producer re-creations without progress: doubling, capped
SHUTDOWN_FLUSH_S = 60.0
HOUSEKEEPING_S = 2.0        # lag, broker reachability, gauges
SWEEP_S = 10.0              # idle-source eviction sweep
DEADLETTER_LOG_S = 10.0     # one summary line per interval instead of one per bad record
EVENT_LOG_BURST = 20        # fault events logged one by one per HOUSEKEEPING_S; beyond, one summary line


class FatalError(RuntimeError):
    """Publishing failed for good: exit without committing, so a restart replays those records."""


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
class _Out:
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


@dataclass(slots=True)
class _Candidate:
    """Offsets to commit (and their rewind markers) once every output sent before ``n`` is acked."""

    offsets: dict[Any, int]
    markers: dict[Any, int]
    n: int


class RewindMarkers:
    """Replay-from offsets per partition, stored as the committed offsets of ``<group>.rewind``."""

    def __init__(self, kw: dict[str, Any], group: str) -> None:
        from kafka import KafkaConsumer

        self.group = f"{group}.rewind"
        self._c = KafkaConsumer(**kw, group_id=self.group, enable_auto_commit=False)

    def read(self, tp: Any) -> int | None:
        try:
            v = self._c.committed(tp, timeout_ms=5000)
        except Exception as e:  # noqa: BLE001 - a missing marker only costs exactness, never data
            log.warning("rewind marker unreadable partition=%s-%s: %s", tp.topic, tp.partition, type(e).__name__)
            return None
        return None if v is None or v < 0 else int(v)

    def write(self, offsets: dict[Any, int], wait: bool = True) -> None:
        """Store markers; ``wait=False`` returns at once (a marker that does not land only makes a
        restart replay from an older marker: still exact, a little longer)."""
        from kafka.structs import OffsetAndMetadata

        meta = {tp: OffsetAndMetadata(off, None, -1) for tp, off in offsets.items()}
        if wait:
            self._c.commit(meta)
        else:
            self._c.commit_async(meta, callback=self._written)

    @staticmethod
    def _written(_offsets: Any, response: Any) -> None:
        if isinstance(response, Exception):
            log.warning("rewind marker not stored (%s)", type(response).__name__)

    def close(self) -> None:
        self._c.close(autocommit=False)


class Daemon:
    """One detector process. ``run()`` blocks until :meth:`request_stop` (or a signal in the CLI)."""

    def __init__(self, cfg: Config, artifact: Artifact, model_path: Path | None = None, *,
                 registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        self.model_path = model_path
        self.registry = registry if registry is not None else REGISTRY
        self.metrics = DetectorMetrics(self.registry)
        self.pipeline = Pipeline(cfg, artifact, self.metrics)
        self.metrics_port: int | None = None
        self.started = threading.Event()      # set once consuming (tests wait on it)
        self._stop = threading.Event()
        self._watcher: ArtifactWatcher | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netsiam-embed")
        self._inflight: concurrent.futures.Future[BatchResult] | None = None
        self._inflight_batch: Batch | None = None
        self._snap: tuple[dict[TP, int], int] = ({}, 0)   # positions + eviction seq of the last applied batch
        self._assigned: set[Any] = set()
        self._held: set[Any] = set()           # partitions whose state we keep across an eager rebalance
        self._committed: dict[Any, int] = {}
        self._suppress: dict[Any, int] = {}
        self._unacked: deque[_Out] = deque()   # in send order; acknowledged ones leave from the front
        self._unacked_bytes = 0                 # message bytes in _unacked (an upper bound of the unacked)
        self._n_out = 0                         # outputs sent so far (next _Out.idx)
        self._send_failed = False               # set by an errback: the main thread re-sends
        self._stalled = False                   # set by housekeeping: no ack for PRODUCER_STALL_S
        self._recover_after = 0.0               # monotonic: no producer re-creation before this
        self._recover_backoff = RECOVER_BACKOFF_S[0]
        self._progress = False                  # an ack since the last re-creation
        self._cand: _Candidate | None = None
        self._paused = False                    # consumption paused: outputs not acknowledged
        self._producer_kw: dict[str, Any] = {}
        self._producer_broken: KafkaError | None = None  # set when send() itself failed: skip this producer
        self._broker_up = False
        self._output_topics: set[str] = set()   # output topics that existed at start: awaited after an outage
        self._await_topics = False              # the broker was away: check _output_topics before re-sending
        self._topics_logged = False
        self._caught_up = False
        self._rb_lock = threading.Lock()
        self._rb_queue: list[tuple[str, set[Any]]] = []
        self._last_commit = 0.0
        self._last_house = 0.0
        self._last_data = -1e9                  # monotonic time a poll last returned records
        self._last_sweep = time.monotonic()
        self._dl_counts: Counter[str] = Counter()
        self._event_log_budget = EVENT_LOG_BURST  # one log line per event, up to this many per interval
        self._events_unlogged = 0
        self._last_dl_log = time.monotonic()
        self._set_model_metrics(artifact, None)

    # -- control -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to drain, commit and return (safe from a signal handler or another thread)."""
        self._stop.set()

    def request_reload(self) -> None:
        if self._watcher is not None:
            self._watcher.trigger()

    def ready(self) -> tuple[bool, str]:
        if not self._broker_up:
            return False, "broker unreachable"
        if not self._assigned:
            return False, "no partitions assigned"
        overdue = self._ack_overdue_s()
        if overdue > ACK_OVERDUE_S:
            return False, f"publishing not acknowledged for {overdue:.0f} s"
        return True, "ok"

    def _ack_overdue_s(self) -> float:
        """Seconds the oldest unacknowledged output has waited (0 if none); safe from any thread."""
        for o in list(self._unacked):  # a copy: the main thread prunes concurrently
            if not o.acked:
                return time.monotonic() - o.sent_at
        return 0.0

    def _oldest_unacked_s(self) -> float:
        """:meth:`_ack_overdue_s` for the main thread: prunes, then O(1)."""
        self._prune_acked()
        return time.monotonic() - self._unacked[0].sent_at if self._unacked else 0.0

    def _pending_outputs(self) -> int:
        return sum(1 for o in list(self._unacked) if not o.acked)

    # -- main ----------------------------------------------------------------------------------
    def run(self) -> int:
        from kafka import KafkaConsumer, KafkaProducer

        from .health import HealthServer

        quiet_kafka_logs()
        cfg, k = self.cfg, self.cfg.kafka
        with contextlib.ExitStack() as stack:
            server = HealthServer(self.registry, cfg.metrics.host, cfg.metrics.port, self.ready).start()
            stack.callback(server.stop)
            self.metrics_port = server.port
            log.info("metrics listening on http://%s:%d/metrics (also /healthz, /livez)", server.host, server.port)
            stack.callback(self._executor.shutdown, wait=True)
            self.metrics.events_pending.set_function(self._pending_outputs)
            try:
                self._producer_kw = {**producer_kwargs(k, None, idempotent=False),
                                     "max_block_ms": PRODUCER_MAX_BLOCK_MS}
                self.producer = KafkaProducer(**self._producer_kw)
                # a re-created producer must not block on a bootstrap while the broker is away
                version = getattr(self.producer, "config", {}).get("api_version")
                if version is not None:
                    self._producer_kw["api_version"] = version
                stack.callback(lambda: self.producer.close(10))
                self.consumer = KafkaConsumer(**consumer_kwargs(k, None, k.group_id))
                stack.callback(self.consumer.close, autocommit=False)
                self._output_topics = {k.topics.faults, k.topics.deadletter} & set(self.consumer.topics())
                self.markers = RewindMarkers(client_kwargs(k), k.group_id)
                stack.callback(self.markers.close)
            except KafkaError as e:
                raise NetsiamError(f"cannot reach the broker at {k.bootstrap_servers}: {e}") from None
            self.consumer.subscribe([k.topics.samples], listener=_Listener(self))
            if self.model_path is not None:
                self._watcher = ArtifactWatcher(self.model_path, cfg.detector.reload_poll_s,
                                                on_failure=self._reload_failed).start()
                stack.callback(self._watcher.stop)
            log.info("consuming topic=%s group=%s bootstrap=%s model=%s", k.topics.samples, k.group_id,
                     k.bootstrap_servers, self.pipeline.artifact.version)
            self.started.set()
            try:
                while not self._stop.is_set():
                    polled = self.consumer.poll(timeout_ms=self._poll_timeout_ms())
                    skip = self._handle_rebalance() if self._rb_queue else set()
                    self._backpressure()
                    n = 0
                    for tp, msgs in polled.items():
                        n += len(msgs)
                        if tp not in skip and tp in self._assigned:
                            self.pipeline.feed(tp, msgs, self._suppress.get(tp, -1))
                    self._caught_up = n < k.max_poll_records
                    if n:
                        self._last_data = time.monotonic()
                    self._step()
                self._drain()
                self._commit(force=True)
                self._log_unlogged_events()
            except FatalError as e:
                log.error("stopping without commit: %s", e)
                return 1
            consumed = self.registry.get_sample_value("netsiam_records_consumed_total") or 0.0
            log.info("stopped: consumed %d records, committed %s", int(consumed), _fmt_offsets(self._committed))
        return 0

    def _poll_timeout_ms(self) -> int:
        if self._inflight is not None:
            return 5
        if self.pipeline.pending:
            left = self.cfg.detector.batch_wait_ms - (time.monotonic() - self.pipeline.pending_since) * 1000
            return max(0, int(left))
        return 100

    def _step(self) -> None:
        self._pump(final=False)
        self._send_outbox()
        self._check_delivery()
        self._commit(force=False)
        now = time.monotonic()
        if now - self._last_house >= HOUSEKEEPING_S:
            self._housekeeping(now)
        if self._watcher is not None:
            art = self._watcher.take()
            if art is not None:
                self._swap(art)

    # -- batches -------------------------------------------------------------------------------
    def _finish_inflight(self) -> None:
        assert self._inflight is not None and self._inflight_batch is not None
        try:
            res = self._inflight.result()
        except Exception as e:  # noqa: BLE001 - a model that cannot embed must not commit anything
            raise FatalError(f"embedding failed: {type(e).__name__}: {e}") from e
        batch = self._inflight_batch
        self._inflight = self._inflight_batch = None
        self.pipeline.apply(batch, res)
        self._snap = (batch.positions, batch.seq)

    def _pump(self, final: bool) -> None:
        p, det = self.pipeline, self.cfg.detector
        if self._inflight is not None and (self._inflight.done() or final or p.pending >= det.batch_max):
            self._finish_inflight()  # done, or back-pressure: the embed thread is behind
        if self._inflight is None and p.pending:
            # Under backlog a batch fills up to batch_max or waits batch_wait_ms; once the consumer has
            # caught up (the last poll was not full) waiting gains nothing but latency.
            due = (final or self._caught_up or p.pending >= det.batch_max
                   or (time.monotonic() - p.pending_since) * 1000 >= det.batch_wait_ms)
            if due:
                batch = p.take_batch(det.batch_max)
                assert batch is not None
                self._inflight_batch = batch
                self._inflight = self._executor.submit(run_batch, batch)

    def _drain(self) -> None:
        """Embed and apply everything fed so far, then publish (before a commit, swap or revoke)."""
        while self._inflight is not None or self.pipeline.pending:
            self._pump(final=True)
        self._send_outbox()

    # -- publishing ----------------------------------------------------------------------------
    # Every output stays in ``_unacked`` (send order) until the broker acknowledged it. A failed send
    # is not fatal by itself: once the broker answers again, the main thread replaces the producer and
    # sends every output still unacknowledged again, in order (_check_delivery). That cures a delivery
    # timeout during a long outage and any producer state the broker no longer accepts (e.g. after an
    # empty restart: kafka_io.producer_kwargs has why the producer is not idempotent). Commits wait for
    # the acks of everything sent before them, so nothing is committed that was not delivered; a
    # re-send may duplicate a message the old producer got through, which consumers drop by event_id.
    def _send_outbox(self) -> None:
        items = self.pipeline.take_outbox()
        if not items:
            return
        topics = self.cfg.kafka.topics
        now = time.time()
        mono = time.monotonic()
        info = log.isEnabledFor(logging.INFO)
        for item in items:
            if isinstance(item, EventOut):
                ev = item.event
                o = _Out(self._n_out, topics.faults, ev.source.encode(), ev.to_bytes(), mono,
                         ev.fault, ev.state, item.record_ts_ms)
                if info and self._event_log_budget > 0:
                    self._event_log_budget -= 1
                    log.info("fault %s source=%s fault=%s started_at=%.3f window_end=%.3f distance=%.3f "
                             "event_id=%s", ev.state, ev.source, ev.fault, ev.started_at, ev.window_end,
                             ev.distance, ev.event_id)
                else:
                    self._events_unlogged += 1
            else:
                dl: DeadLetter = item
                o = _Out(self._n_out, topics.deadletter, dl.key, dl.to_bytes(now), mono)
                self._dl_counts[dl.reason] += 1
                log.debug("dead letter reason=%s partition=%d offset=%d detail=%s", dl.reason, dl.partition,
                          dl.offset, dl.detail)
            self._n_out += 1
            self._unacked.append(o)
            self._unacked_bytes += len(o.value)
            self._produce(o)

    def _produce(self, o: _Out) -> None:
        from kafka.future import Future

        if self._producer_broken is not None:
            # this producer already failed a send() outright (e.g. no metadata within max_block_ms):
            # do not block on it again for every output; they go out with the next producer
            o.fut = Future().failure(self._producer_broken)
            return
        try:
            fut = self.producer.send(o.topic, key=o.key, value=o.value)
        except KafkaError as e:  # no metadata within max_block_ms (broker away), producer closed, ...
            fut = Future().failure(e)
            self._producer_broken = e
            self._send_failed = True
        else:
            fut.add_callback(self._on_ack, o)
            fut.add_errback(self._on_fail)
        o.fut = fut

    def _on_ack(self, o: _Out, _meta: Any) -> None:
        # producer thread (or this one, when the future was already done)
        if o.acked:
            return  # a re-sent message whose first send got through after all
        o.acked = True
        self._progress = True
        if o.fault is not None:
            m = self.metrics
            m.fault_events.labels(fault=o.fault, state=o.state).inc()
            if o.record_ts_ms > 0:
                m.record_to_event_seconds.observe(max(0.0, time.time() - o.record_ts_ms / 1000.0))

    def _on_fail(self, _exc: Any) -> None:
        self._send_failed = True

    def _prune_acked(self) -> None:
        q = self._unacked
        while q and q[0].acked:
            self._unacked_bytes -= len(q.popleft().value)

    def _acked_below(self, n: int) -> bool:
        """True when every output sent before the ``n``-th is acknowledged."""
        self._prune_acked()
        return not self._unacked or self._unacked[0].idx >= n

    def _check_delivery(self) -> None:
        """After a failed send, or a producer stalled while the broker answers: a new producer, and
        every unacknowledged output sent again, in order."""
        if not (self._send_failed or self._stalled):
            return
        now = time.monotonic()
        if now < self._recover_after or not self._broker_up:
            return  # while the broker is away a new producer could not deliver either
        if self._await_topics:
            missing = self._missing_output_topics()
            if missing:
                if not self._topics_logged:
                    self._topics_logged = True
                    log.warning("broker back without topic(s) %s: waiting for them before publishing again "
                                "(%d message(s) held)", ",".join(missing), self._pending_outputs())
                self._recover_after = now + 1.0
                return
            if self._topics_logged:
                log.info("output topics present again")
            self._await_topics = self._topics_logged = False
        why = ""
        if self._send_failed:
            self._send_failed = False
            failed = [o for o in self._unacked if not o.acked and o.fut is not None and o.fut.failed()]
            if failed:
                exc = failed[0].fut.exception
                if not recoverable(exc):
                    raise FatalError(f"{len(failed)} message(s) refused by the broker: {type(exc).__name__}: {exc}")
                why = f"{type(exc).__name__}: {exc}"
        if self._stalled:
            self._stalled = False
            age = self._oldest_unacked_s()
            if not why and age > PRODUCER_STALL_S:
                why = f"no acknowledgement for {age:.0f} s while the broker answers"
        if not why:
            return  # only superseded sends failed (an old producer's aborts), or acks came meanwhile
        if self._progress:
            self._recover_backoff = RECOVER_BACKOFF_S[0]
        self._progress = False
        self._recover_after = now + self._recover_backoff
        self._recover_backoff = min(self._recover_backoff * 2, RECOVER_BACKOFF_S[1])
        todo = [o for o in self._unacked if not o.acked]
        log.warning("publishing failed (%s): new producer, re-sending %d unacknowledged message(s)", why, len(todo))
        self._replace_producer()
        for o in todo:
            if not o.acked:
                self._produce(o)

    def _missing_output_topics(self) -> list[str]:
        try:
            present = set(self.consumer.topics())  # a metadata round trip, not the cache
        except (KafkaError, OSError):
            return sorted(self._output_topics)
        return sorted(self._output_topics - present)

    def _retire_producer(self, why: str) -> None:
        """The broker stopped answering: fail the producer's pending sends now (they stay queued in
        ``_unacked`` and are re-sent by a new producer once the broker and the output topics are back)
        rather than let it retry them into whatever answers next on that address."""
        self._await_topics = True
        if self._producer_broken is not None:
            return
        log.warning("%s: producer retired, %d message(s) held for a re-send", why, self._pending_outputs())
        self._producer_broken = kerr.KafkaConnectionError(why)
        self._send_failed = True
        with contextlib.suppress(Exception):  # aborts its batches: their errbacks set _send_failed again
            self.producer.close(0)

    def _replace_producer(self) -> None:
        from kafka import KafkaProducer

        old = self.producer
        with contextlib.suppress(Exception):  # its unsent batches are aborted; their errbacks are harmless
            old.close(0)
        try:
            self.producer = KafkaProducer(**self._producer_kw)
            self._producer_broken = None
        except KafkaError as e:  # sends are failed at once: retried after the backoff
            log.warning("cannot create a producer (%s); retrying", type(e).__name__)
            self._producer_broken = e
            self._send_failed = True

    def _backpressure(self) -> None:
        """Pause consumption while outputs go unacknowledged (bounded memory; resumes by itself)."""
        q = self._unacked
        stall = bool(q) and (len(q) > MAX_UNACKED or self._unacked_bytes > MAX_UNACKED_BYTES
                             or self._oldest_unacked_s() > ACK_OVERDUE_S)
        if stall == self._paused:
            if stall and self._assigned:
                self.consumer.pause(*self._assigned)  # partitions (re)assigned meanwhile were resumed
            return
        self._paused = stall
        if self._assigned:
            (self.consumer.pause if stall else self.consumer.resume)(*self._assigned)
        if stall:
            log.warning("consumption paused: %d output(s) unacknowledged, oldest %.1f s", self._pending_outputs(),
                        self._oldest_unacked_s())
        else:
            log.info("consumption resumed: outputs acknowledged")

    def _wait_all_acked(self, timeout_s: float) -> None:
        """Block until everything sent is acknowledged (shutdown); FatalError if it is not."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._prune_acked()
            if not self._unacked:
                return
            self._check_delivery()  # re-sends after a failure; raises on a permanent error
            left = deadline - time.monotonic()
            if left <= 0:
                raise FatalError(f"{self._pending_outputs()} message(s) not acknowledged within {timeout_s:.0f} s")
            t0 = time.monotonic()
            with contextlib.suppress(KafkaError):
                self.producer.flush(timeout=min(left, 1.0))
            if time.monotonic() - t0 < 0.01:
                time.sleep(0.05)  # failed sends waiting for their re-send backoff

    # -- commits -------------------------------------------------------------------------------
    def _commit(self, force: bool) -> None:
        """Commit the consumed positions whose outputs are all acknowledged.

        A candidate (offsets + rewind markers, computed from the state they belong to) is taken at
        most every COMMIT_INTERVAL_S and committed as soon as every output sent before it is acked;
        outputs sent after it do not delay it, so a steady stream of dead letters cannot starve the
        commits and nothing ever blocks on acks except the final commit (``force``, at shutdown).
        """
        if force:
            self._cand = None
            self._wait_all_acked(SHUTDOWN_FLUSH_S)
            cand = self._candidate()
            if cand is not None:
                self._do_commit(cand, wait=True)
            return
        if self._cand is None:
            if time.monotonic() - self._last_commit < COMMIT_INTERVAL_S:
                return
            self._cand = self._candidate()
            if self._cand is None:
                return
        if self._acked_below(self._cand.n):
            cand, self._cand = self._cand, None
            self._do_commit(cand)

    def _candidate(self) -> _Candidate | None:
        p = self.pipeline
        if not p.pending and self._inflight is None:
            positions, seq = dict(p.positions), p.seq
        else:
            positions, seq = self._snap  # the last applied batch: its outputs have all been sent
        todo = {tp: off for tp, off in positions.items()
                if tp in self._assigned and off > self._committed.get(tp, -1)}
        if not todo:
            return None
        markers = p.resync_offsets(positions, seq)
        # a marker never runs ahead of the offset it was computed for
        return _Candidate(todo, {tp: min(markers.get(tp, off), off) for tp, off in todo.items()}, self._n_out)

    def _do_commit(self, cand: _Candidate, wait: bool = False) -> None:
        from kafka.structs import OffsetAndMetadata

        self._last_commit = time.monotonic()
        todo = {tp: off for tp, off in cand.offsets.items() if tp in self._assigned}
        if not todo:
            return
        try:
            self.consumer.commit({tp: OffsetAndMetadata(off, None, -1) for tp, off in todo.items()})
        except KafkaError as e:  # e.g. a rebalance in progress: the new owner replays from the last commit
            log.warning("commit failed (%s); will retry", type(e).__name__)
            return
        self._committed.update(todo)
        try:
            # after the commit: a marker never runs ahead of the offset it was computed for. Not
            # waited for (a round trip of the main loop saved every commit), except the last one.
            self.markers.write({tp: cand.markers[tp] for tp in todo}, wait=wait)
        except KafkaError as e:
            log.warning("rewind marker not stored (%s)", type(e).__name__)
        self.metrics.commits.inc()
        self.metrics.last_commit.set(time.time())

    # -- rebalance ---------------------------------------------------------------------------
    # kafka-python 3 runs rebalance listeners on its IO thread, where blocking calls (commit,
    # committed, seek to a fetched marker) are refused. The listener therefore only pauses newly
    # assigned partitions and queues the change; the main thread applies it right after poll
    # returns: it drops or keeps state, seeks to the replay-from marker and resumes.
    def note_revoked(self, revoked: set[Any]) -> None:
        with self._rb_lock:
            self._rb_queue.append(("revoked", revoked))

    def note_assigned(self, assigned: set[Any]) -> None:
        if assigned:
            self.consumer.pause(*assigned)  # nothing from these until the main thread positioned them
        with self._rb_lock:
            self._rb_queue.append(("assigned", assigned))

    def _handle_rebalance(self) -> set[Any]:
        """Apply queued rebalance changes; returns the partitions whose polled records must be dropped."""
        with self._rb_lock:
            changes, self._rb_queue = self._rb_queue, []
        touched: set[Any] = set()
        for kind, tps in changes:
            touched |= tps
            if kind == "revoked":
                # state is kept until the new assignment is known: an eager rebalance revokes
                # everything first and often hands the same partitions back
                self._assigned -= tps
                if tps:
                    log.info("partitions revoked: %s", _fmt_tps(tps))
            else:
                gone = self._held - self._assigned - tps
                if gone:
                    self._forget(gone)
                self._setup_assigned(tps)
        if changes:
            self._housekeeping(time.monotonic())
        return touched

    def _forget(self, tps: set[Any]) -> None:
        self.pipeline.drop_partitions(tps)
        for tp in tps:
            self._committed.pop(tp, None)
            self._suppress.pop(tp, None)
        # the last applied batch's positions belong to the forgotten state: committing them later
        # (e.g. to a broker that came back empty) would cover records never processed
        positions, seq = self._snap
        self._snap = ({tp: off for tp, off in positions.items() if tp not in tps}, seq)
        if self._cand is not None:
            for tp in tps:
                self._cand.offsets.pop(tp, None)
        self._held -= tps

    def _setup_assigned(self, assigned: set[Any]) -> None:
        keep = set()
        for tp in assigned & self._held:
            # an eager rebalance gave it back and nobody committed since: our state is still exact
            now_committed = self._safe_committed(tp)
            log.debug("partition %s-%d back: committed=%s ours=%s", tp.topic, tp.partition, now_committed,
                      self._committed.get(tp))
            # Never on "no commit at all": a broker that came back empty has no commit either, and
            # our position there would skip its first records.
            if now_committed is not None and now_committed == self._committed.get(tp):
                keep.add(tp)
                pos = self.pipeline.positions.get(tp)
                if pos is not None:
                    self.consumer.seek(tp, pos)  # continue where we are, not at the committed offset
        stale = (assigned & self._held) - keep
        if stale:
            self._forget(stale)
        for tp in sorted(assigned - keep):
            self._rewind(tp)
        self._held |= assigned
        self._assigned |= assigned
        if assigned and not self._paused:
            self.consumer.resume(*assigned)
        log.info("partitions assigned: %s (state kept: %s)", _fmt_tps(assigned), _fmt_tps(keep) or "-")

    def _safe_committed(self, tp: Any) -> int | None:
        try:
            v = self.consumer.committed(tp, timeout_ms=5000)
        except Exception:  # noqa: BLE001 - unknown means "rebuild", which is always correct
            return None
        return None if v is None else int(v)

    def _rewind(self, tp: Any) -> None:
        """Position a newly assigned partition: replay-from marker, else the committed offset.

        Always an explicit seek: records a poll may have returned meanwhile were not fed.
        """
        committed = self._safe_committed(tp)
        if committed is None:
            self._suppress.pop(tp, None)
            self.consumer.seek_to_beginning(tp)
            log.info("partition %s-%d: no committed offset, starting from the earliest", tp.topic, tp.partition)
            return
        self._committed[tp] = committed
        self._suppress[tp] = committed
        marker = self.markers.read(tp)
        if marker is None or marker >= committed:
            self.consumer.seek(tp, committed)
            log.info("partition %s-%d: resuming at %d (%s)", tp.topic, tp.partition, committed,
                     "no replay needed" if marker is not None else "no rewind marker: state starts empty")
            return
        self.consumer.seek(tp, marker)
        log.info("partition %s-%d: committed=%d, replaying from %d (%d records) to rebuild state, publishing "
                 "from %d", tp.topic, tp.partition, committed, marker, committed - marker, committed)

    # -- model reload --------------------------------------------------------------------------
    def _set_model_metrics(self, art: Artifact, old: Artifact | None) -> None:
        m = self.metrics
        if old is not None and old.version != art.version:
            with contextlib.suppress(KeyError):
                m.model_info.remove(old.version)
        m.model_info.labels(version=art.version).set(1)
        m.model_loaded.set(time.time())

    def _reload_failed(self, why: str) -> None:
        self.metrics.model_reload_failures.inc()
        log.error("model reload refused, the old model keeps serving: %s", why)

    def _swap(self, art: Artifact) -> None:
        self._drain()  # the pending windows belong to the old model
        old = self.pipeline.artifact
        reset = self.pipeline.swap_artifact(art)
        self._set_model_metrics(art, old)
        self.metrics.model_reloads.inc()
        log.info("model reloaded version=%s (was %s)%s", art.version, old.version,
                 "; window or features changed, per-source buffers reset" if reset else "")
        del old
        if gc.get_freeze_count():
            # the old model is garbage now (Keras objects hold cycles) but frozen: one full collection
            # (a pause of a few hundred ms, once per reload) frees it, then the new heap is frozen
            gc.unfreeze()
            freeze_heap()

    # -- housekeeping --------------------------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        self._last_house = now
        m, c = self.metrics, self.consumer
        tps = sorted(self._assigned)
        up = True
        ends: dict[Any, int] = {}
        # Records polled since the last round and a fetch high watermark for every partition: the
        # broker answers and the lag is known, so skip the probe (a blocking round trip, up to
        # ~100 ms on Tansu, that would stall the stream). Otherwise (idle, or just assigned) probe.
        streaming = (now - self._last_data < HOUSEKEEPING_S and bool(tps)
                     and all(c.highwater(tp) is not None for tp in tps))
        try:
            if not streaming:
                ends = c.end_offsets(tps, timeout_ms=1000) if tps else {}
                if not tps:
                    c.topics()  # still a metadata round trip
        except (KafkaError, OSError) as e:
            up = False
            if self._broker_up:
                log.warning("broker unreachable: %s", type(e).__name__)
                self._retire_producer("broker unreachable")
        if up and not self._broker_up:
            log.info("broker reachable")
        self._broker_up = up
        # publishing stalled counts as unreachable too: nothing gets out
        age = self._oldest_unacked_s()
        m.broker_up.set(1 if up and tps and age <= ACK_OVERDUE_S else 0)
        if up and age > PRODUCER_STALL_S:
            self._stalled = True
        for tp in tps:
            # Tansu's ListOffsets(latest) lags the real end; the fetch high watermark does not
            end = max(ends.get(tp) or 0, c.highwater(tp) or 0)
            pos = self.pipeline.positions.get(tp, self._committed.get(tp, 0))
            m.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, end - pos))
        if now - self._last_sweep >= SWEEP_S:
            self._last_sweep = now
            n = self.pipeline.evict_idle()
            if n:
                log.info("evicted %d idle source(s)", n)
        m.sources_tracked.set(len(self.pipeline.sources))
        self._log_unlogged_events()
        self._event_log_budget = EVENT_LOG_BURST
        if self._dl_counts and now - self._last_dl_log >= DEADLETTER_LOG_S:
            log.info("dead-lettered %d record(s): %s", sum(self._dl_counts.values()),
                     " ".join(f"{r}={n}" for r, n in sorted(self._dl_counts.items())))
            self._dl_counts.clear()
            self._last_dl_log = now

    def _log_unlogged_events(self) -> None:
        if self._events_unlogged:
            log.info("%d more fault event(s) published without a log line each (over %d per %.0f s; all are on "
                     "topic %s)", self._events_unlogged, EVENT_LOG_BURST, HOUSEKEEPING_S, self.cfg.kafka.topics.faults)
            self._events_unlogged = 0


class _Listener(ConsumerRebalanceListener):
    """kafka-python rebalance callbacks (on its IO thread): queued for the daemon's main thread."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.daemon.note_revoked(set(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.daemon.note_assigned(set(assigned))


def _fmt_tps(tps: Any) -> str:
    return ",".join(f"{tp.topic}-{tp.partition}" for tp in sorted(tps))


def _fmt_offsets(offsets: dict[Any, int]) -> str:
    return ",".join(f"{tp.topic}-{tp.partition}@{off}" for tp, off in sorted(offsets.items())) or "-"


def freeze_heap() -> None:
    """Take everything alive now (TensorFlow, Keras, the model: ~350k tracked objects) out of the
    cyclic garbage collector's scans (``gc.freeze``), so a full collection only walks what the stream
    allocated since. Measured in the daemon at 3k records/s (``gc.DEBUG_STATS``): a gen-2 collection
    stopped every thread for 150-410 ms before, 3-15 ms after; a stall that size lands straight in
    the p99 record->event latency (and delays fetches, embeds and acks alike)."""
    gc.collect()
    gc.freeze()


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cli_detect(args: Any, cfg: Config) -> int:
    """``netsiam detect --config C [--bootstrap H:P] [--model DIR] [--metrics-port P] [--group G]``."""
    setup_logging()
    # handlers first: a SIGTERM while the model loads (seconds) is a clean stop, not a kill
    stopping = threading.Event()
    daemons: list[Daemon] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: draining", signal.Signals(signum).name)
        stopping.set()
        for d in daemons:
            d.request_stop()

    def hup(signum: int, frame: FrameType | None) -> None:
        for d in daemons:
            d.request_reload()

    handlers: dict[int, Callable[[int, FrameType | None], None]] = {
        signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: hup}
    for sig, h in handlers.items():
        signal.signal(sig, h)
    cfg = override(cfg, {"kafka.bootstrap_servers": args.bootstrap, "detector.model": args.model,
                         "metrics.port": args.metrics_port, "kafka.group_id": args.group})
    model_path = Path(cfg.detector.model) if cfg.detector.model else default_model_path()
    art = load_artifact(model_path)
    warm_up(art)
    log.info("model loaded path=%s version=%s window=%d/%d features=%s classes=%s", model_path, art.version,
             art.window.length, art.window.stride, ",".join(art.features), ",".join(art.prototypes.classes))
    freeze_heap()
    daemon = Daemon(cfg, art, model_path)
    daemons.append(daemon)
    if stopping.is_set():
        daemon.request_stop()
    return daemon.run()
