"""``netsiam detect``: the streaming daemon. Kafka in, fault events and dead letters out.

Loop (main thread): ``poll`` -> :meth:`Pipeline.feed` (decode, window) -> when a micro-batch is due
(``detector.batch_max`` windows, ``detector.batch_wait_ms`` since the oldest, or at once when the
consumer has caught up), hand it to the embed thread (one ``artifact.embed`` call) while the next
records are consumed -> apply the result in order (debounce) -> publish events and dead letters
(acks=all, no per-record flush) -> commit at most every COMMIT_INTERVAL_S.

Delivery: offsets are committed only after the broker acknowledged every event and dead letter
caused by the records below them (at-least-once; event ids are deterministic so consumers dedupe).
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
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from kafka import ConsumerRebalanceListener
from kafka.errors import KafkaError
from prometheus_client import REGISTRY, CollectorRegistry

from netsiam.config import Config, override
from netsiam.errors import NetsiamError
from netsiam.trainer.artifact import Artifact, default_model_path, load_artifact

from .kafka_io import client_kwargs, consumer_kwargs, producer_kwargs, quiet_kafka_logs
from .metrics import DetectorMetrics
from .pipeline import TP, Batch, BatchResult, DeadLetter, EventOut, Pipeline, run_batch
from .reload import ArtifactWatcher, warm_up

__all__ = ["COMMIT_INTERVAL_S", "Daemon", "RewindMarkers", "cli_detect"]

log = logging.getLogger("netsiam.detector")

COMMIT_INTERVAL_S = 0.5     # commits cost a round trip; more often buys only a shorter replay after a crash
COMMIT_MAX_DELAY_S = 2.0    # past this, a commit waits (briefly) for in-flight acks instead of skipping
HOUSEKEEPING_S = 2.0        # lag, broker reachability, gauges
SWEEP_S = 10.0              # idle-source eviction sweep
DEADLETTER_LOG_S = 10.0     # one summary line per interval instead of one per bad record


class FatalError(RuntimeError):
    """Publishing failed for good: exit without committing, so a restart replays those records."""


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

    def write(self, offsets: dict[Any, int]) -> None:
        from kafka.structs import OffsetAndMetadata

        self._c.commit({tp: OffsetAndMetadata(off, None, -1) for tp, off in offsets.items()})

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
        self._unacked: list[Any] = []
        self._broker_up = False
        self._caught_up = False
        self._rb_lock = threading.Lock()
        self._rb_queue: list[tuple[str, set[Any]]] = []
        self._last_commit = 0.0
        self._last_house = 0.0
        self._last_sweep = time.monotonic()
        self._dl_counts: Counter[str] = Counter()
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
        return True, "ok"

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
            try:
                self.producer = KafkaProducer(**producer_kwargs(k, None))
                stack.callback(self.producer.close, 10)
                self.consumer = KafkaConsumer(**consumer_kwargs(k, None, k.group_id))
                stack.callback(self.consumer.close, autocommit=False)
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
                    n = 0
                    for tp, msgs in polled.items():
                        n += len(msgs)
                        if tp not in skip and tp in self._assigned:
                            self.pipeline.feed(tp, msgs, self._suppress.get(tp, -1))
                    self._caught_up = n < k.max_poll_records
                    self._step()
                self._drain()
                self._commit(force=True)
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
    def _send_outbox(self) -> None:
        items = self.pipeline.take_outbox()
        if not items:
            return
        topics = self.cfg.kafka.topics
        m = self.metrics
        now = time.time()
        for item in items:
            m.events_pending.inc()  # before send: an ack callback may run before send() returns
            if isinstance(item, EventOut):
                ev = item.event
                fut = self.producer.send(topics.faults, key=ev.source.encode(), value=ev.to_bytes())
                fut.add_callback(self._event_acked, ev.fault, ev.state, item.record_ts_ms)
                log.info("fault %s source=%s fault=%s started_at=%.3f window_end=%.3f distance=%.3f event_id=%s",
                         ev.state, ev.source, ev.fault, ev.started_at, ev.window_end, ev.distance, ev.event_id)
            else:
                dl: DeadLetter = item
                fut = self.producer.send(topics.deadletter, key=dl.key, value=dl.to_bytes(now))
                fut.add_callback(self._acked)
                self._dl_counts[dl.reason] += 1
                log.debug("dead letter reason=%s partition=%d offset=%d detail=%s", dl.reason, dl.partition,
                          dl.offset, dl.detail)
            fut.add_errback(self._failed)
            self._unacked.append(fut)

    def _acked(self, _meta: Any) -> None:
        self.metrics.events_pending.dec()

    def _event_acked(self, fault: str, state: str, record_ts_ms: int, _meta: Any) -> None:
        m = self.metrics
        m.events_pending.dec()
        m.fault_events.labels(fault=fault, state=state).inc()
        if record_ts_ms > 0:
            m.record_to_event_seconds.observe(max(0.0, time.time() - record_ts_ms / 1000.0))

    def _failed(self, exc: Any) -> None:
        self.metrics.events_pending.dec()

    def _acks_done(self, block: bool) -> bool:
        """True when every message produced so far is acknowledged; raises FatalError on a failure."""
        if any(not f.is_done for f in self._unacked):
            if not block:
                return False
            try:
                self.producer.flush(timeout=60)
            except KafkaError as e:
                raise FatalError(f"publishing not acknowledged within 60 s ({type(e).__name__})") from None
        failed = [f for f in self._unacked if f.failed()]
        if failed:
            raise FatalError(f"{len(failed)} message(s) not acknowledged by the broker: {failed[0].exception}")
        self._unacked.clear()
        return True

    # -- commits -------------------------------------------------------------------------------
    def _commit(self, force: bool) -> None:
        from kafka.structs import OffsetAndMetadata

        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_INTERVAL_S:
            return
        p = self.pipeline
        if not p.pending and self._inflight is None:
            positions, seq = dict(p.positions), p.seq
        else:
            positions, seq = self._snap
        todo = {tp: off for tp, off in positions.items()
                if tp in self._assigned and off > self._committed.get(tp, -1)}
        if not todo:
            # nothing new to commit, but a failed delivery must still stop us (exit without commit,
            # the restart replays): otherwise a stream that ends right there loses those events
            if force or any(f.failed() for f in self._unacked):
                self._acks_done(block=force)
            return
        # normally wait for acks without blocking; block after a while so that a steady stream of
        # dead letters (always some in flight) cannot starve the commits
        if not self._acks_done(block=force or now - self._last_commit > COMMIT_MAX_DELAY_S):
            return
        self._last_commit = now
        markers = p.resync_offsets(positions, seq)
        try:
            self.consumer.commit({tp: OffsetAndMetadata(off, None, -1) for tp, off in todo.items()})
        except KafkaError as e:  # e.g. a rebalance in progress: the new owner replays from the last commit
            log.warning("commit failed (%s); will retry", type(e).__name__)
            return
        self._committed.update(todo)
        try:
            # after the commit: a marker never runs ahead of the offset it was computed for
            self.markers.write({tp: min(markers.get(tp, off), off) for tp, off in todo.items()})
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
        self._held -= tps

    def _setup_assigned(self, assigned: set[Any]) -> None:
        keep = set()
        for tp in assigned & self._held:
            # an eager rebalance gave it back and nobody committed since: our state is still exact
            now_committed = self._safe_committed(tp)
            log.debug("partition %s-%d back: committed=%s ours=%s", tp.topic, tp.partition, now_committed,
                      self._committed.get(tp))
            if now_committed == self._committed.get(tp):
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
        if assigned:
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

    # -- housekeeping --------------------------------------------------------------------------
    def _housekeeping(self, now: float) -> None:
        self._last_house = now
        m, c = self.metrics, self.consumer
        tps = sorted(self._assigned)
        up = True
        ends: dict[Any, int] = {}
        try:
            ends = c.end_offsets(tps, timeout_ms=1000) if tps else {}
            if not tps:
                c.topics()  # still a metadata round trip
        except (KafkaError, OSError) as e:
            up = False
            if self._broker_up:
                log.warning("broker unreachable: %s", type(e).__name__)
        if up and not self._broker_up:
            log.info("broker reachable")
        self._broker_up = up
        m.broker_up.set(1 if up and tps else 0)
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
        if self._dl_counts and now - self._last_dl_log >= DEADLETTER_LOG_S:
            log.info("dead-lettered %d record(s): %s", sum(self._dl_counts.values()),
                     " ".join(f"{r}={n}" for r, n in sorted(self._dl_counts.items())))
            self._dl_counts.clear()
            self._last_dl_log = now


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
    daemon = Daemon(cfg, art, model_path)
    daemons.append(daemon)
    if stopping.is_set():
        daemon.request_stop()
    return daemon.run()
