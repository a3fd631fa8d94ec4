"""The daemon's pure core: records -> windows -> embeddings -> prototypes -> debounced fault events.

No Kafka here: the daemon feeds messages in and publishes what comes out, and tests drive the same
code directly. :meth:`Pipeline.feed` (main thread) decodes records into per-source windows and dead
letters; :func:`~netsiam.detector.batch.run_batch` embeds a micro-batch on the embed thread;
:meth:`Pipeline.apply` (main thread, in batch order) debounces and emits events. Time is record time
only (windows, debounce, ``started_at``, idle eviction), so a replay at any speed gives the same events.

Silence (:mod:`.liveness`): a source that sends nothing for ``detector.silent_after_s`` while records
keep coming on its partition raises the fault ``silent`` (started at the slot after its last record,
stamped at that record's ts + silent_after_s), cleared by its next record; a partition that receives
nothing at all for that long by the wall clock raises it for all its sources (:meth:`silence_partition`).
A silent source's debounce starts over, its named fault cleared first. A source idle for
``detector.idle_evict_s`` is forgotten, and a fault still active on it is cleared first: eviction never
drops a fault without its ``cleared``. These decisions are made in feed() but queued as markers behind
the source's pending windows, so apply() sees every source's windows and transitions in record order.

Restart rule (:mod:`.sources`): the daemon stores, beside each commit, the minimum
:meth:`~.sources.SourceState.resync_offset` of each partition and, after a restart, replays from there
with publishing suppressed below the committed offset: every event at or after it is published again
with the same ``started_at``, hence the same ``event_id``. Exact unless the replay treats a record
differently: the per-partition stream clock (``max_clock_skew_s``) is rebuilt from the replayed records
only, ``max_sources`` evicts by what is in memory, a silence seen by the wall clock is not in the
records (a replay raises it again only if the partition is quiet again, or the records show the gap), and
a source's answer-time level (:mod:`netsiam.slowanswers`) starts from the first window replayed.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from prometheus_client import CollectorRegistry

from netsiam.config import Config
from netsiam.evidence import ranges_from_manifest
from netsiam.features import RAW_METRICS
from netsiam.givens import read_givens, slow_run_stride
from netsiam.schemas.classes import UNKNOWN
from netsiam.schemas.deadletter import DeadLetter
from netsiam.schemas.record import RecordError, decode_record
from netsiam.serving import Artifact
from netsiam.slowanswers import factor_for, flag_slow, slow_evidence

from .batch import EVICTED, SILENT_CLEARED, SILENT_RAISED, Batch, BatchResult, Marker, WindowRef
from .liveness import Liveness
from .metrics import DetectorMetrics
from .sources import TP, Evicted, SourceState
from .transitions import Emitter, EventOut, explainer, marker_transitions

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
        self._pending: list[np.ndarray | None] = []   # windows (None for a marker), in item order
        self._meta: list[WindowRef | Marker] = []
        self.pending_since = 0.0                  # monotonic time the oldest pending item appeared
        self._seq = 0                             # counts applied evictions, orders them against snapshots
        self._graveyard: list[Evicted] = []       # evicted states a pending commit may still need
        self._leaving: dict[int, SourceState] = {}  # evicted by feed(), eviction not applied yet (by id)
        self._live = Liveness(cfg.detector.silent_after_s, cfg.detector.idle_evict_s)
        self._emitter = Emitter(self.metrics, self.outbox, wall)
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
        """Windows and markers fed but not applied yet."""
        return len(self._meta)

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
        silent_after, due, heard, inf = self.det.silent_after_s, self._live.due, self._live.heard, math.inf
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
            except RecordError as e:   # the only exception decode_record raises, whatever the bytes
                if live:
                    self._dead(m, e.reason, e.detail)
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
            if ts > due.get(tp, inf):
                # a source on this partition may be past its silence or idle deadline
                self._scan(tp, ts, off, m.timestamp, live)
            st = sources.get(rec.source)
            if st is None or ts - st.last_ts > idle:
                # idle by record time, decided here on arrival so it does not depend on sweep timing
                if st is not None:
                    if silent_after and st.silence is None:  # silent before it was idle, as the scan says
                        self._mark(st, SILENT_RAISED, st.last_ts + silent_after, tp, off, m.timestamp, live)
                    self._mark(st, EVICTED, st.last_ts + idle, tp, off, m.timestamp, live)
                st = self._new_source(rec.source, tp, off, ts, m.timestamp, live)
            elif silent_after and st.silence is None and ts - st.last_ts > silent_after:
                # its own record shows the gap (another source was first in the partition's queue)
                self._mark(st, SILENT_RAISED, st.last_ts + silent_after, tp, off, m.timestamp, live)
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
            if st.silence is not None:
                self._mark(st, SILENT_CLEARED, ts, tp, off, m.timestamp, live)
            heard(st, tp)
            n_valid += live
            if rec.ignored and live:
                n_ignored += rec.ignored
            if win is not None:
                pending.append(win)
                meta.append(WindowRef(st, ts, tp, off, m.timestamp, live, st.offsets[0]))
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

    def _new_source(self, name: str, tp: TP, offset: int, ts: float, kafka_ts_ms: int, live: bool) -> SourceState:
        if len(self.sources) >= self.det.max_sources:
            # Least recently seen (record time) go first; a chunk at a time keeps this O(n) rare.
            n = max(1, self.det.max_sources // 100)
            for old in heapq.nsmallest(n, self.sources.values(), key=lambda s: s.last_ts):
                self._mark(old, EVICTED, ts, tp, offset, kafka_ts_ms, live)
        st = SourceState(name, tp, offset, self.window, self.debounce)
        self.sources[name] = st
        return st

    def _mark(self, st: SourceState, kind: str, window_end: float, tp: TP, offset: int, kafka_ts_ms: int,
              live: bool) -> None:
        """Decide about ``st`` now (feed side) and queue the transition for apply()."""
        if kind == SILENT_RAISED:
            st.silence = st.last_ts + self.window.interval_s   # the first sample that did not come
            started = st.silence
        elif kind == SILENT_CLEARED:
            started, st.silence = st.silence or 0.0, None
        else:  # EVICTED: detached now (a record may start a new state), forgotten once applied
            started = 0.0
            if self.sources.get(st.name) is st:
                del self.sources[st.name]
            self._live.forget(st)
            self._leaving[id(st)] = st
            self.metrics.sources_evicted.inc()
        if not self._meta:
            self.pending_since = time.monotonic()
        self._pending.append(None)
        self._meta.append(Marker(kind, st, started, window_end, tp, offset, kafka_ts_ms, live))

    def _scan(self, tp: TP, ts: float, offset: int, kafka_ts_ms: int, live: bool) -> None:
        silent, idle = self._live.scan(tp, ts)
        for st in silent:
            self._mark(st, SILENT_RAISED, st.last_ts + self.det.silent_after_s, tp, offset, kafka_ts_ms, live)
        for st in idle:
            self._mark(st, EVICTED, st.last_ts + self.det.idle_evict_s, tp, offset, kafka_ts_ms, live)

    def silence_partition(self, tp: TP) -> int:
        """The wall clock says ``tp`` has received nothing for ``silent_after_s`` (the daemon checks
        that it is caught up and the broker answers): every source on it still heard is silent. The
        transitions are the ones a later record would make (same stamps, same event ids)."""
        sts = self._live.silence_all(tp)
        for st in sts:
            self._mark(st, SILENT_RAISED, st.last_ts + self.det.silent_after_s, tp, self.positions.get(tp, 0), 0,
                       True)
        return len(sts)

    def drop_partitions(self, tps: set[TP]) -> int:
        """Forget every source on ``tps`` (revoked, or about to be replayed from its marker)."""
        gone = [st for st in self.sources.values() if st.tp in tps]
        for st in gone:
            if self.sources.get(st.name) is st:
                del self.sources[st.name]
        leaving = [st for st in self._leaving.values() if st.tp in tps]
        for st in leaving:
            del self._leaving[id(st)]
        for st in gone + leaving:
            if st.alive:
                self._emitter.clear_gauges(st)
            st.alive = False
        self._live.drop(tps)
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
        # from the first window (or marker) still waiting in a later batch onwards.
        positions = dict(self.positions)
        for w in self._meta:
            if w.offset < positions.get(w.tp, w.offset + 1):
                positions[w.tp] = w.offset
        if self._pending:
            self.pending_since = time.monotonic()
        raw = [w for w in wins if w is not None]
        # (B, T, R): np.stack's per-array Python (0.6-0.9 us a window) against one copy (0.3-0.4); pending
        # windows all have the serving windowing's shape (swap_artifact drops them when it changes)
        x = np.concatenate(raw).reshape(len(raw), *raw[0].shape) if raw else np.empty(
            (0, self.window.length, len(RAW_METRICS)))
        return Batch(x, items, self.artifact, positions, self._seq)

    # -- step 3: debounce ----------------------------------------------------------------------
    def apply(self, batch: Batch, res: BatchResult) -> int:
        """Debounce the batch's windows and markers in order; returns the number of events put in the outbox."""
        m = self.metrics
        n = batch.n_windows
        names = res.names
        manifest = getattr(batch.artifact, "manifest", None)
        factor = factor_for(self.det.debounce, manifest) if n else 0.0
        slowed = np.zeros(n, dtype=np.int32)   # (N,): unknown, answered slower than their source's own level
        if factor > 0:
            names = flag_slow([w.state.level for w in batch.items if not isinstance(w, Marker)], names, batch.raw,
                              factor, slow=slowed, stride=slow_run_stride(batch.artifact))
        if n:
            m.windows_embedded.inc(n)
            m.embed_batch_size.observe(n)
            m.embed_batch_seconds.observe(res.seconds)
            for cls, cnt in zip(*np.unique(names.astype(str), return_counts=True), strict=True):
                m.classifications.labels(**{"class": str(cls)}).inc(int(cnt))
        classes = list(batch.artifact.prototypes.classes)
        version = batch.artifact.version
        x, ranges = batch.x, ranges_from_manifest(manifest)   # the events' evidence quotes them too
        g = read_givens(batch.artifact, names, slowed, res.dists, x if n else None, batch.raw, self.det.debounce,
                        ranges=ranges) if n else None
        n_events = 0
        half_replay = self.det.max_replay_s / 2
        i = -1
        for w in batch.items:
            if isinstance(w, Marker):
                n_events += self._apply_marker(w, version)
                continue
            i += 1
            st = w.state
            assert g is not None   # a window, so n > 0
            trans = g.step(st.tracker, i, w.end_ts)
            st.windowed(w.start, w.end_ts, half_replay)
            if not trans:
                continue
            row = res.dists[i]
            distances = {c: round(float(row[j]), 6) for j, c in enumerate(classes)}
            emb = tuple(round(float(v), 6) for v in res.emb[i])
            explain = explainer(batch.raw[i], None if x is None else x[i], batch.artifact, ranges)
            if slowed[i] and any(t.fault == UNKNOWN for t in trans):
                explain = slow_evidence(explain, st.level, batch.raw[i], factor)   # not for a fault it was named
            n_events += self._emitter.emit(st, trans, w, version, round(float(res.nearest[i]), 6), distances, emb,
                                           explain)
        batch.seq = self._seq  # the snapshot this batch completes includes its evictions
        return n_events

    def _apply_marker(self, mk: Marker, version: str) -> int:
        st = mk.state
        trans = marker_transitions(mk)
        n = self._emitter.emit(st, trans, mk, version) if trans else 0
        if mk.kind == EVICTED:
            st.alive = False
            if self._leaving.pop(id(st), None) is not None:
                self._seq += 1
                self._graveyard.append(Evicted(self._seq, st.tp, st.resync_offset()))
        return n

    # -- rewind markers ------------------------------------------------------------------------
    def resync_offsets(self, positions: dict[TP, int], seq: int) -> dict[TP, int]:
        """Replay-from offset per partition for the state as of a snapshot (``positions``, ``seq``).

        Never later than the snapshot position. Evicted states count while a snapshot taken before
        their eviction can still be committed; older graveyard entries are dropped here.
        """
        out = dict(positions)
        for states in (self.sources.values(), self._leaving.values()):
            for st in states:
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
        out = self.outbox[:]
        self.outbox.clear()  # the same list: the emitter appends to it
        return out
