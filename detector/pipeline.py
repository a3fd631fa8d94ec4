"""The daemon's pure core: records -> windows -> embeddings -> prototypes -> debounced fault events.

No Kafka here: the daemon feeds messages in and publishes what comes out, and tests drive the same
code directly. :meth:`Pipeline.feed` (main thread) decodes records into per-source windows and dead
letters; :func:`~netsiam.detector.batch.run_batch` embeds a micro-batch on the embed thread;
:meth:`Pipeline.apply` (main thread, in batch order) debounces and emits events. Time is record time
only (windows, debounce, ``started_at``, idle eviction), so a replay at any speed gives the same events.

Restart rule (:mod:`.sources`): the daemon stores, beside each commit, the minimum
:meth:`~.sources.SourceState.resync_offset` of each partition and, after a restart, replays from there
with publishing suppressed below the committed offset: every event at or after it is published again
with the same ``started_at``, hence the same ``event_id``. Exact unless the replay treats a record
differently: the per-partition stream clock (``max_clock_skew_s``) is rebuilt from the replayed records
only, and ``max_sources`` evicts by what is in memory.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from prometheus_client import CollectorRegistry

from netsiam.config import Config
from netsiam.features import RAW_METRICS
from netsiam.schemas.deadletter import DeadLetter
from netsiam.schemas.event import FaultEvent
from netsiam.schemas.record import RecordError, decode_record
from netsiam.serving import Artifact

from .batch import Batch, BatchResult, WindowRef
from .metrics import DetectorMetrics
from .sources import TP, Evicted, SourceState

__all__ = ["EventOut", "Message", "Pipeline", "same_windowing"]


class Message(Protocol):
    """What the pipeline reads from a consumed record (kafka-python's ConsumerRecord has all of it)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class EventOut:
    """A fault event to publish, with the record that caused it (for latency and commits)."""

    event: FaultEvent
    tp: TP
    offset: int
    record_ts_ms: int


def _utf8_ok(s: str) -> bool:
    try:
        s.encode()
    except UnicodeEncodeError:
        return False
    return True


def same_windowing(a: Artifact, b: Artifact) -> bool:
    """Can buffers filled for ``a`` serve ``b``? (windows and required metrics identical)"""
    return a.window == b.window and a.features == b.features and a.required == b.required


class Pipeline:
    """Per-source windows and fault trackers for every partition this process owns."""

    def __init__(self, cfg: Config, artifact: Artifact, metrics: DetectorMetrics | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.det = cfg.detector
        self.debounce = cfg.detector.debounce
        self.metrics = metrics or DetectorMetrics(CollectorRegistry())
        self.wall = wall
        self.sources: dict[str, SourceState] = {}
        self.outbox: list[DeadLetter | EventOut] = []
        self.positions: dict[TP, int] = {}        # next offset to read, per partition fed
        self.clock: dict[TP, float] = {}          # max accepted record ts, per partition
        self._pending: list[np.ndarray] = []
        self._meta: list[WindowRef] = []
        self.pending_since = 0.0                  # monotonic time the oldest pending window appeared
        self._seq = 0                             # counts evictions, orders them against snapshots
        self._graveyard: list[Evicted] = []       # evicted states a pending commit may still need
        self.artifact = artifact
        self._set_artifact(artifact)

    # -- model ---------------------------------------------------------------------------------
    def _set_artifact(self, art: Artifact) -> None:
        self.artifact = art
        self.window = art.window
        self._required = frozenset(art.required)

    def swap_artifact(self, art: Artifact) -> bool:
        """Serve ``art`` from the next batch on. Call with nothing pending (the daemon drains first).

        Returns True if per-source buffers were reset (the window or features changed).
        """
        reset = not same_windowing(self.artifact, art)
        self._set_artifact(art)
        if reset:
            self._pending.clear()
            self._meta.clear()
            for st in self.sources.values():
                st.reset_buffer(self.window)
        return reset

    # -- step 1: records -----------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._pending)

    def _dead(self, m: Message, reason: str, detail: str, source: str | None = None) -> None:
        self.outbox.append(DeadLetter(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value, reason,
                                      detail, source))
        self.metrics.records_invalid.labels(reason=reason).inc()

    def feed(self, tp: TP, msgs: Sequence[Message], suppress_below: int = -1) -> None:
        """Decode and window one partition's messages (in offset order).

        Messages below ``suppress_below`` rebuild state only: their dead letters and events were
        published before the last commit, so they are neither re-published nor counted again.
        """
        if not msgs:
            return
        names, required, max_bytes = RAW_METRICS, self._required, self.det.max_record_bytes
        interval = self.window.interval_s
        skew, idle = self.det.max_clock_skew_s, self.det.idle_evict_s
        sources, pending, meta = self.sources, self._pending, self._meta
        floor = math.floor
        clock = self.clock.get(tp)
        n_live = n_valid = n_ignored = 0
        had_pending = bool(pending)
        for m in msgs:
            off = m.offset
            live = off >= suppress_below
            n_live += live
            value = m.value
            if value is None:
                if live:
                    self._dead(m, "not_json", "empty message (null value)")
                continue
            try:
                rec = decode_record(value, names, required, max_bytes)
            except RecordError as e:
                if live:
                    self._dead(m, e.reason, e.detail)
                continue
            except OverflowError:  # an integer beyond float64 (e.g. 400 digits) would crash the daemon
                if live:
                    self._dead(m, "non_finite", "a number is beyond the float64 range")
                continue
            if not rec.source.isascii() and not _utf8_ok(rec.source):
                # a lone surrogate (\ud800) parses but cannot be a Kafka key or go into a JSON event
                if live:
                    self._dead(m, "schema", "'source' is not valid Unicode (lone surrogate)")
                continue
            ts = rec.ts
            # The stream clock is per partition (a replay rebuilds it from that partition alone).
            if clock is None:
                clock = ts
            elif ts > clock:
                if ts - clock > skew:
                    if live:
                        self._dead(m, "out_of_order", f"ts {ts:.3f} is {ts - clock:.0f} s ahead of the stream",
                                   rec.source)
                    continue
                clock = ts
            elif clock - ts > skew:
                if live:
                    self._dead(m, "out_of_order", f"ts {ts:.3f} is {clock - ts:.0f} s behind the stream",
                               rec.source)
                continue
            st = sources.get(rec.source)
            if st is None or ts - st.last_ts > idle:
                # idle by record time, decided here on arrival so it does not depend on sweep timing
                if st is not None:
                    self._evict(st)
                st = self._new_source(rec.source, tp, off)
            try:
                win = st.buf.push(floor(ts / interval + 0.5), rec.values)
            except ValueError as e:
                if live:
                    self._dead(m, str(e), f"slot of ts {ts:.3f} already seen for this source"
                               if str(e) == "duplicate" else f"ts {ts:.3f} is older than the source's last sample",
                               rec.source)
                continue
            st.offsets.append(off)
            st.last_ts = ts
            st.tp = tp
            n_valid += live
            if rec.ignored and live:
                n_ignored += rec.ignored
            if win is not None:
                pending.append(win)
                meta.append(WindowRef(st, ts, off, m.timestamp, live, st.offsets[0]))
        if clock is not None:
            self.clock[tp] = clock
        self.positions[tp] = msgs[-1].offset + 1
        if pending and not had_pending:
            self.pending_since = time.monotonic()
        if n_live:
            self.metrics.records_consumed.inc(n_live)
        if n_valid:
            self.metrics.records_valid.inc(n_valid)
        if n_ignored:
            self.metrics.metric_values_ignored.inc(n_ignored)

    def _new_source(self, name: str, tp: TP, offset: int) -> SourceState:
        if len(self.sources) >= self.det.max_sources:
            # Least recently seen (record time) go first; a chunk at a time keeps this O(n) rare.
            n = max(1, self.det.max_sources // 100)
            for old in heapq.nsmallest(n, self.sources.values(), key=lambda s: s.last_ts):
                self._evict(old)
        st = SourceState(name, tp, offset, self.window, self.debounce)
        self.sources[name] = st
        return st

    def _evict(self, st: SourceState) -> None:
        """Drop a source's state. Its resync offset is kept until no commit can need it."""
        if self.sources.get(st.name) is st:
            del self.sources[st.name]
        st.alive = False
        self._seq += 1
        self._graveyard.append(Evicted(self._seq, st.tp, st.resync_offset()))
        if st.tracker.active is not None:
            self._fault_gauges(st.name, st.tracker.active, False)
        self.metrics.sources_evicted.inc()

    def evict_idle(self) -> int:
        """Sweep sources idle longer than ``idle_evict_s`` behind their partition's clock."""
        idle = self.det.idle_evict_s
        stale = [st for st in self.sources.values() if self.clock.get(st.tp, st.last_ts) - st.last_ts > idle]
        for st in stale:
            self._evict(st)
        return len(stale)

    def drop_partitions(self, tps: set[TP]) -> int:
        """Forget every source on ``tps`` (revoked, or about to be replayed from its marker)."""
        gone = [st for st in self.sources.values() if st.tp in tps]
        for st in gone:
            if self.sources.get(st.name) is st:
                del self.sources[st.name]
            st.alive = False
            if st.tracker.active is not None:
                self._fault_gauges(st.name, st.tracker.active, False)
        for tp in tps:
            self.positions.pop(tp, None)
            self.clock.pop(tp, None)
        self._graveyard = [g for g in self._graveyard if g.tp not in tps]
        return len(gone)

    # -- step 2: batches -----------------------------------------------------------------------
    def take_batch(self, max_n: int | None = None) -> Batch | None:
        """Up to ``max_n`` pending windows as a batch (oldest first), or None."""
        if not self._pending:
            return None
        n = len(self._pending) if max_n is None else min(max_n, len(self._pending))
        wins, self._pending = self._pending[:n], self._pending[n:]
        items, self._meta = self._meta[:n], self._meta[n:]
        # Commit position per partition once this batch is applied: everything fed, except records
        # from the first window still waiting in a later batch onwards.
        positions = dict(self.positions)
        for w in self._meta:
            if w.offset < positions.get(w.state.tp, w.offset + 1):
                positions[w.state.tp] = w.offset
        if self._pending:
            self.pending_since = time.monotonic()
        return Batch(np.stack(wins), items, self.artifact, positions, self._seq)

    # -- step 3: debounce ----------------------------------------------------------------------
    def _fault_gauges(self, source: str, fault: str, on: bool) -> None:
        m = self.metrics
        if on:
            m.fault_active.labels(source=source, fault=fault).set(1)
            m.active_faults.labels(fault=fault).inc()
        else:
            with contextlib.suppress(KeyError):
                m.fault_active.remove(source, fault)
            m.active_faults.labels(fault=fault).dec()

    def apply(self, batch: Batch, res: BatchResult) -> int:
        """Debounce the batch's windows in order; returns the number of events put in the outbox."""
        m = self.metrics
        n = len(batch)
        m.windows_embedded.inc(n)
        m.embed_batch_size.observe(n)
        m.embed_batch_seconds.observe(res.seconds)
        for cls, cnt in zip(*np.unique(res.names.astype(str), return_counts=True), strict=True):
            m.classifications.labels(**{"class": str(cls)}).inc(int(cnt))
        classes = list(batch.artifact.prototypes.classes)
        version = batch.artifact.version
        names = res.names
        nearest = np.asarray(classes, dtype=object)[res.dists.argmin(axis=1)]   # ignoring thresholds
        n_events = 0
        for i, w in enumerate(batch.items):
            st = w.state
            st.last_win_start = w.start
            trans = st.tracker.update(str(names[i]), w.end_ts, str(nearest[i]))
            if st.tracker.quiet:
                st.epoch = None  # a replay may start after this window
            elif st.epoch is None:
                st.epoch = w.start
            if not trans:
                continue
            row = res.dists[i]
            distances = {c: round(float(row[j]), 6) for j, c in enumerate(classes)}
            emb = tuple(round(float(v), 6) for v in res.emb[i])
            now = self.wall()
            for t in trans:
                if st.alive:
                    self._fault_gauges(st.name, t.fault, t.state == "raised")
                if not w.live:
                    continue
                ev = FaultEvent(source=st.name, state=t.state, fault=t.fault, window_end=t.window_end,
                                detected_at=now, started_at=t.started_at, distance=round(float(res.nearest[i]), 6),
                                distances=distances, embedding=emb, model_version=version)
                self.outbox.append(EventOut(ev, st.tp, w.offset, w.kafka_ts_ms))
                n_events += 1
        return n_events

    # -- rewind markers ------------------------------------------------------------------------
    def resync_offsets(self, positions: dict[TP, int], seq: int) -> dict[TP, int]:
        """Replay-from offset per partition for the state as of a snapshot (``positions``, ``seq``).

        Never later than the snapshot position. Evicted states count while a snapshot taken before
        their eviction can still be committed; older graveyard entries are dropped here.
        """
        out = dict(positions)
        for st in self.sources.values():
            tp = st.tp
            if tp in out:
                r = st.resync_offset()
                if r < out[tp]:
                    out[tp] = r
        keep = []
        for g in self._graveyard:
            if g.seq > seq:  # evicted after the snapshot: the snapshot's state still had it
                keep.append(g)
                if g.tp in out and g.resync < out[g.tp]:
                    out[g.tp] = g.resync
        self._graveyard = keep
        return out

    @property
    def seq(self) -> int:
        return self._seq

    def take_outbox(self) -> list[DeadLetter | EventOut]:
        out, self.outbox = self.outbox, []
        return out
