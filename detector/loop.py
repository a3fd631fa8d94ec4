"""The daemon's main loop: poll, feed the pipeline, embed micro-batches, publish, commit.

Per round (main thread): ``poll`` -> :meth:`Pipeline.feed` -> when a micro-batch is due
(``detector.batch_max`` windows, ``detector.batch_wait_ms`` since the oldest, or at once when the
consumer has caught up) the embed thread runs it while the next records are consumed -> its result
is applied in order (debounce) -> outputs go to the publisher (:mod:`.delivery`) -> offsets are
committed once acknowledged (:mod:`.offsets`). Consumption pauses while outputs go unacknowledged
(bounded memory) and resumes by itself. Shutdown drains, waits for acks and commits; an error that
re-sending cannot cure exits 1 without committing.

Under systemd (``Type=notify``) the loop reports ``READY=1`` once it consumes and ``WATCHDOG=1`` after
rounds that made progress: a loop stuck in a call, or an embed call that never returns, stops the
pings and systemd restarts the daemon (exact restart makes that safe). A partition that receives
nothing for ``detector.silent_after_s`` by the wall clock, while the broker answers and the consumer
is caught up, makes its sources ``silent`` (pipeline.py).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError
from prometheus_client import REGISTRY, CollectorRegistry

from netsiam.config import Config, KafkaConfig
from netsiam.errors import ServiceError
from netsiam.kafka_io import client_kwargs, consumer_kwargs, producer_kwargs, quiet_kafka_logs
from netsiam.producer import require_confluent
from netsiam.sdnotify import Watchdog, notify
from netsiam.serving import Artifact

from .batcher import Batcher
from .delivery import ACK_OVERDUE_S, FatalError, Publisher
from .health import HealthServer
from .metrics import DetectorMetrics
from .offsets import Offsets, RebalanceListener, RewindMarkers, fmt_offsets
from .outbox import Outbox
from .pipeline import Pipeline
from .reload import ArtifactWatcher, freeze_heap
from .tansu import TansuWorkarounds

__all__ = ["HOUSEKEEPING_S", "SHUTDOWN_FLUSH_S", "Daemon"]

log = logging.getLogger("netsiam.detector")

PRODUCER_MAX_BLOCK_MS = 5000  # send() waits this long for metadata at most (then: a failed send, retried)
SHUTDOWN_FLUSH_S = 60.0
HOUSEKEEPING_S = 2.0        # lag, broker reachability, gauges, wall-clock silence


def _samples_consumer(k: KafkaConfig) -> Any:
    """The samples consumer of ``kafka.client``; events, dead letters and rewind markers always go
    through kafka-python (few messages: librdkafka gains nothing there)."""
    if k.client == "confluent-kafka":
        require_confluent()
        from netsiam.confluent_consumer import ConfluentConsumer, consumer_config

        return ConfluentConsumer(consumer_config(k, None, k.group_id), k.max_poll_records)
    from kafka import KafkaConsumer

    return KafkaConsumer(**consumer_kwargs(k, None, k.group_id))


class Daemon:
    """One detector process. ``run()`` blocks until :meth:`request_stop` (or a signal in the CLI)."""

    # set by run() once the broker answered; ready() reads them only after _broker_up turned True
    consumer: Any
    publisher: Publisher
    offsets: Offsets
    outbox: Outbox

    def __init__(self, cfg: Config, artifact: Artifact, model_path: Path | None = None, *,
                 registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        self.model_path = model_path
        self.registry = registry if registry is not None else REGISTRY
        self.metrics = DetectorMetrics(self.registry)
        self.pipeline = Pipeline(cfg, artifact, self.metrics)
        self.batcher = Batcher(self.pipeline, cfg, lambda b: self.offsets.applied(b.positions, b.seq))
        self.metrics_port: int | None = None
        self.started = threading.Event()      # set once consuming (tests wait on it)
        self._stop = threading.Event()
        self._watcher: ArtifactWatcher | None = None
        self._paused = False                    # consumption paused: outputs not acknowledged
        self._broker_up = False
        self._caught_up = False
        self._last_house = 0.0
        self._last_data = -1e9                  # monotonic time a poll last returned records
        self._fed_at: dict[Any, float] = {}     # monotonic time each partition last had records fed
        self.watchdog = Watchdog()
        self.metrics.set_model(artifact.version, None)
        self.metrics.track_sources(self._source_times)

    # -- control -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the loop to drain, commit and return (safe from a signal handler or another thread)."""
        self._stop.set()

    def request_reload(self) -> None:
        if self._watcher is not None:
            self._watcher.trigger()

    def ready(self) -> tuple[bool, str]:
        """For /healthz (any thread)."""
        if not self._broker_up:
            return False, "broker unreachable"
        if not self.offsets.assigned:
            return False, "no partitions assigned"
        overdue = self.publisher.ledger.overdue_s_safe()
        if overdue > ACK_OVERDUE_S:
            return False, f"publishing not acknowledged for {overdue:.0f} s"
        return True, "ok"

    # -- main ----------------------------------------------------------------------------------
    def run(self) -> int:
        quiet_kafka_logs()
        cfg, k = self.cfg, self.cfg.kafka
        with contextlib.ExitStack() as stack:
            server = HealthServer(self.registry, cfg.metrics.host, cfg.metrics.port, self.ready).start()
            stack.callback(server.stop)
            self.metrics_port = server.port
            log.info("metrics listening on http://%s:%d/metrics (also /healthz, /livez)", server.host, server.port)
            stack.callback(self.batcher.close)
            self._open(stack)
            if self.model_path is not None:
                self._watcher = ArtifactWatcher(self.model_path, cfg.detector.reload_poll_s,
                                                on_failure=self._reload_failed,
                                                serving=lambda: self.pipeline.artifact).start()
                stack.callback(self._watcher.stop)
            log.info("consuming topic=%s group=%s bootstrap=%s client=%s model=%s", k.topics.samples, k.group_id,
                     k.bootstrap_servers, k.client, self.pipeline.artifact.version)
            self.started.set()
            notify("READY=1", f"STATUS=consuming {k.topics.samples} (model {self.pipeline.artifact.version})")
            try:
                while not self._stop.is_set():
                    self._round()
                    # progress: the round returned, and no embed call has been stuck for half the
                    # watchdog period (the loop keeps polling while the embed thread works)
                    if self.batcher.inflight_s() < self.watchdog.interval_s / 2:
                        self.watchdog.ping()
                notify("STOPPING=1", "STATUS=draining: finishing the batch, waiting for acks, committing")
                self.batcher.drain()
                self.outbox.publish(self.pipeline.take_outbox())
                self.publisher.wait_all_acked(SHUTDOWN_FLUSH_S, self._broker_up)
                self.offsets.final_commit(self.publisher.ledger.sent)
                self.outbox.log_unlogged()
            except FatalError as e:
                log.error("stopping without commit: %s", e)
                return 1
            consumed = self.registry.get_sample_value("netsiam_records_consumed_total") or 0.0
            log.info("stopped: consumed %d records, committed %s", int(consumed), fmt_offsets(self.offsets.committed))
        return 0

    def _open(self, stack: contextlib.ExitStack) -> None:
        """Producer, consumer and rewind-marker clients, each closed when ``stack`` unwinds."""
        k = self.cfg.kafka
        try:
            with contextlib.ExitStack() as opening:
                self.consumer = _samples_consumer(k)
                opening.callback(self.consumer.close, autocommit=False)
                # the output topics that exist now are the ones awaited after an outage
                rules = TansuWorkarounds(self.consumer.topics, (k.topics.faults, k.topics.deadletter))
                self.publisher = Publisher({**producer_kwargs(k, None, idempotent=False),
                                            "max_block_ms": PRODUCER_MAX_BLOCK_MS}, self.metrics, rules)
                stack.callback(self.publisher.close, 10)
                stack.push(opening.pop_all())  # the consumer closes (leaves the group) before the producer
            markers = RewindMarkers(client_kwargs(k), k.group_id)
            stack.callback(markers.close)
        except KafkaError as e:
            raise ServiceError(f"cannot reach the broker at {k.bootstrap_servers}: {e}") from None
        self.metrics.events_pending.set_function(self.publisher.ledger.pending_safe)
        self.offsets = Offsets(self.consumer, markers, self.pipeline, self.metrics, k.auto_offset_reset)
        self.outbox = Outbox(self.publisher, k.topics, HOUSEKEEPING_S)
        self.consumer.subscribe([k.topics.samples], listener=RebalanceListener(self.offsets))

    def _round(self) -> None:
        """One poll and everything it makes due."""
        polled = self.consumer.poll(timeout_ms=self.batcher.poll_timeout_ms())
        skip: set[Any] = set()
        if self.offsets.rebalanced:
            skip = self.offsets.apply_rebalance(self._paused)
            self._housekeeping(time.monotonic())
        self._backpressure()
        n = 0
        offsets = self.offsets
        now = time.monotonic()
        for tp, msgs in polled.items():
            n += len(msgs)
            if tp not in skip and tp in offsets.assigned:
                self.pipeline.feed(tp, msgs, offsets.suppress_below(tp))
                self._fed_at[tp] = now
        self._caught_up = n < self.cfg.kafka.max_poll_records
        if n:
            self._last_data = time.monotonic()
        self.batcher.pump(final=False, caught_up=self._caught_up)
        self.outbox.publish(self.pipeline.take_outbox())
        self.publisher.recover(self._broker_up)
        offsets.maybe_commit(self.batcher.idle, self.publisher.ledger.sent, self.publisher.ledger.acked_below,
                             self._broker_up)
        now = time.monotonic()
        if now - self._last_house >= HOUSEKEEPING_S:
            self._housekeeping(now)
        if self._watcher is not None:
            art = self._watcher.take()
            if art is not None:
                self._swap(art)

    def _backpressure(self) -> None:
        """Pause consumption while outputs go unacknowledged (bounded memory; resumes by itself)."""
        stall = self.publisher.ledger.congested()
        assigned = self.offsets.assigned
        if stall == self._paused:
            if stall and assigned:
                self.consumer.pause(*assigned)  # partitions (re)assigned meanwhile were resumed
            return
        self._paused = stall
        if assigned:
            (self.consumer.pause if stall else self.consumer.resume)(*assigned)
        if stall:
            log.warning("consumption paused: %d output(s) unacknowledged, oldest %.1f s",
                        self.publisher.ledger.pending_safe(), self.publisher.ledger.oldest_unacked_s())
        else:
            log.info("consumption resumed: outputs acknowledged")

    # -- model reload --------------------------------------------------------------------------
    def _reload_failed(self, why: str) -> None:
        self.metrics.model_reload_failures.inc()
        log.error("model reload refused, the old model keeps serving: %s", why)

    def _swap(self, art: Artifact) -> None:
        self.batcher.drain()  # the pending windows belong to the old model
        self.outbox.publish(self.pipeline.take_outbox())
        old = self.pipeline.artifact
        reset = self.pipeline.swap_artifact(art)
        self.metrics.set_model(art.version, old.version)
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
        m = self.metrics
        tps = sorted(self.offsets.assigned)
        up, ends = self._probe_broker(now, tps)
        # publishing stalled counts as unreachable too: nothing gets out
        age = self.publisher.ledger.oldest_unacked_s()
        m.broker_up.set(1 if up and tps and age <= ACK_OVERDUE_S else 0)
        if up:
            self.publisher.check_stall(age)
        for tp in tps:
            # Tansu's ListOffsets(latest) lags the real end; the fetch high watermark does not
            end = max(ends.get(tp) or 0, self.consumer.highwater(tp) or 0)
            pos = self.pipeline.positions.get(tp, self.offsets.committed.get(tp, 0))
            m.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(max(0, end - pos))
        if up and not self._paused:
            self._wall_silence(now, tps, ends)
        m.sources_tracked.set(len(self.pipeline.sources))
        self.outbox.log_round(now)
        ok, why = self.ready()
        notify(f"STATUS={'consuming' if ok else 'not ready: ' + why}, {len(self.pipeline.sources)} source(s)")

    def _wall_silence(self, now: float, tps: list[Any], ends: dict[Any, int]) -> None:
        """Partitions that received nothing for silent_after_s while caught up: their sources are
        silent (no record will come to show it in record time)."""
        after = self.cfg.detector.silent_after_s
        if not after:
            return
        for tp in tps:
            last = self._fed_at.setdefault(tp, now)
            pos = self.pipeline.positions.get(tp)
            if now - last < after or pos is None:
                continue
            end = max(ends.get(tp) or 0, self.consumer.highwater(tp) or 0)
            if pos >= end:
                n = self.pipeline.silence_partition(tp)
                if n:
                    log.info("partition %s-%d: nothing for %.0f s, %d source(s) silent", tp.topic, tp.partition,
                             now - last, n)

    def _source_times(self) -> list[tuple[str, float]]:
        """(source, ts of its newest record) of every tracked source, for /metrics (HTTP thread: the
        dict is copied in one step, under the GIL)."""
        return [(st.name, st.last_ts) for st in list(self.pipeline.sources.values()) if st.last_ts > -math.inf]

    def _probe_broker(self, now: float, tps: list[Any]) -> tuple[bool, dict[Any, int]]:
        """Is the broker reachable, and the partitions' end offsets if they had to be asked for."""
        c = self.consumer
        ends: dict[Any, int] = {}
        # Records polled since the last round and a fetch high watermark for every partition: the
        # broker answers and the lag is known, so skip the probe (a blocking round trip, up to
        # ~100 ms on Tansu, that would stall the stream). Otherwise (idle, or just assigned) probe.
        streaming = (now - self._last_data < HOUSEKEEPING_S and bool(tps)
                     and all(c.highwater(tp) is not None for tp in tps))
        up = True
        try:
            if not streaming:
                ends = c.end_offsets(tps, timeout_ms=1000) if tps else {}
                if not tps:
                    c.topics()  # still a metadata round trip
        except (KafkaError, OSError) as e:
            up = False
            if self._broker_up:
                log.warning("broker unreachable: %s", type(e).__name__)
                self.publisher.broker_lost("broker unreachable")
        if up and not self._broker_up:
            log.info("broker reachable")
        self._broker_up = up
        return up, ends
