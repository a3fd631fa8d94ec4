"""Offsets: what this process owns, what it commits, and where a partition's replay starts.

A commit candidate (offsets + rewind markers, taken from the state they belong to) is committed once
every output sent before it is acknowledged. Beside each commit, the replay-from offset of each
partition goes to the shadow group ``<group>.rewind`` (Tansu drops commit metadata; a second group
stores it just as well). On assignment a partition is positioned at its marker and replayed with
publishing suppressed below the committed offset, so after a crash every episode is raised again with
the same event id (the rule is in detector/pipeline.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import ConsumerRebalanceListener
from kafka.errors import KafkaError

from .metrics import DetectorMetrics
from .pipeline import Pipeline

__all__ = ["COMMIT_INTERVAL_S", "CommitCandidate", "Offsets", "RebalanceListener", "RewindMarkers", "fmt_offsets"]

log = logging.getLogger("netsiam.detector")

COMMIT_INTERVAL_S = 0.5     # commits cost a round trip; more often buys only a shorter replay after a crash


@dataclass(slots=True)
class CommitCandidate:
    """Offsets to commit (and their rewind markers) once every output sent before ``sent`` is acked."""

    offsets: dict[Any, int]
    markers: dict[Any, int]
    sent: int


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


class Offsets:
    """Assignment, commits and replay positions of the daemon's consumer (main thread, except the
    ``note_*`` rebalance callbacks, which only queue)."""

    def __init__(self, consumer: Any, markers: RewindMarkers, pipeline: Pipeline, metrics: DetectorMetrics,
                 reset: str = "earliest") -> None:
        self.consumer = consumer
        self.reset = reset                        # kafka.auto_offset_reset: where a partition without a commit starts
        self.markers = markers
        self.pipeline = pipeline
        self.metrics = metrics
        self.assigned: set[Any] = set()
        self.committed: dict[Any, int] = {}
        self._held: set[Any] = set()              # partitions whose state we keep across an eager rebalance
        self._suppress: dict[Any, int] = {}       # publish nothing below this offset (already committed)
        self._snap: tuple[dict[Any, int], int] = ({}, 0)  # positions + eviction seq of the last applied batch
        self._cand: CommitCandidate | None = None
        self._last_commit = 0.0
        self._lock = threading.Lock()
        self._queue: list[tuple[str, set[Any]]] = []

    def suppress_below(self, tp: Any) -> int:
        return self._suppress.get(tp, -1)

    def applied(self, positions: dict[Any, int], seq: int) -> None:
        """A batch was applied: its snapshot is what a commit may cover while later ones are pending."""
        self._snap = (positions, seq)

    # -- commits -------------------------------------------------------------------------------
    def maybe_commit(self, idle: bool, sent: int, acked_below: Callable[[int], bool], broker_up: bool = True) -> None:
        """Take a candidate at most every COMMIT_INTERVAL_S and commit it as soon as every output sent
        before it is acked; outputs sent after it do not delay it, so a steady stream of dead letters
        cannot starve the commits and nothing blocks on acks. ``idle``: nothing pending or embedding.
        While the broker is known to be away nothing is committed: the commit would block the loop for
        the client's request timeout (~20 s measured) and a later commit covers the same offsets."""
        if not broker_up:
            return
        if self._cand is None:
            if time.monotonic() - self._last_commit < COMMIT_INTERVAL_S:
                return
            self._cand = self._candidate(idle, sent)
            if self._cand is None:
                return
        if acked_below(self._cand.sent):
            cand, self._cand = self._cand, None
            self._commit(cand)

    def final_commit(self, sent: int) -> None:
        """Shutdown, everything drained and acknowledged: commit all of it and wait for the markers."""
        self._cand = None
        cand = self._candidate(True, sent)
        if cand is not None:
            self._commit(cand, wait=True)

    def _candidate(self, idle: bool, sent: int) -> CommitCandidate | None:
        p = self.pipeline
        # with windows pending or embedding, only the last applied batch's outputs have all been sent
        positions, seq = (dict(p.positions), p.seq) if idle else self._snap
        todo = {tp: off for tp, off in positions.items()
                if tp in self.assigned and off > self.committed.get(tp, -1)}
        if not todo:
            return None
        markers = p.resync_offsets(positions, seq)
        # a marker never runs ahead of the offset it was computed for
        return CommitCandidate(todo, {tp: min(markers.get(tp, off), off) for tp, off in todo.items()}, sent)

    def _commit(self, cand: CommitCandidate, wait: bool = False) -> None:
        from kafka.structs import OffsetAndMetadata

        self._last_commit = time.monotonic()
        todo = {tp: off for tp, off in cand.offsets.items() if tp in self.assigned}
        if not todo:
            return
        try:
            self.consumer.commit({tp: OffsetAndMetadata(off, None, -1) for tp, off in todo.items()})
        except KafkaError as e:  # e.g. a rebalance in progress: the new owner replays from the last commit
            log.warning("commit failed (%s); will retry", type(e).__name__)
            return
        self.committed.update(todo)
        try:
            # after the commit: a marker never runs ahead of the offset it was computed for. Not
            # waited for (a round trip of the main loop saved every commit), except the last one.
            self.markers.write({tp: cand.markers[tp] for tp in todo}, wait=wait)
        except KafkaError as e:
            log.warning("rewind marker not stored (%s)", type(e).__name__)
        self.metrics.commits.inc()
        self.metrics.last_commit.set(time.time())

    # -- rebalance -----------------------------------------------------------------------------
    # kafka-python 3 runs rebalance listeners on its IO thread, where blocking calls (commit,
    # committed, seek to a fetched marker) are refused. The listener therefore only pauses newly
    # assigned partitions and queues the change; the main thread applies it right after poll
    # returns: it drops or keeps state, seeks to the replay-from marker and resumes. (librdkafka,
    # netsiam/confluent_consumer.py, calls the listener inside poll on the main thread: same order.)
    def note_revoked(self, revoked: set[Any]) -> None:
        with self._lock:
            self._queue.append(("revoked", revoked))

    def note_assigned(self, assigned: set[Any]) -> None:
        if assigned:
            self.consumer.pause(*assigned)  # nothing from these until the main thread positioned them
        with self._lock:
            self._queue.append(("assigned", assigned))

    @property
    def rebalanced(self) -> bool:
        return bool(self._queue)

    def apply_rebalance(self, paused: bool) -> set[Any]:
        """Apply queued changes; returns the partitions whose polled records must be dropped.
        ``paused``: consumption is paused (backpressure), so new partitions stay paused too."""
        with self._lock:
            changes, self._queue = self._queue, []
        touched: set[Any] = set()
        for kind, tps in changes:
            touched |= tps
            if kind == "revoked":
                # state is kept until the new assignment is known: an eager rebalance revokes
                # everything first and often hands the same partitions back
                self.assigned -= tps
                if tps:
                    log.info("partitions revoked: %s", fmt_tps(tps))
            else:
                gone = self._held - self.assigned - tps
                if gone:
                    self._forget(gone)
                self._assign(tps, paused)
        return touched

    def _forget(self, tps: set[Any]) -> None:
        self.pipeline.drop_partitions(tps)
        for tp in tps:
            self.committed.pop(tp, None)
            self._suppress.pop(tp, None)
        # the last applied batch's positions belong to the forgotten state: committing them later
        # (e.g. to a broker that came back empty) would cover records never processed
        positions, seq = self._snap
        self._snap = ({tp: off for tp, off in positions.items() if tp not in tps}, seq)
        if self._cand is not None:
            for tp in tps:
                self._cand.offsets.pop(tp, None)
        self._held -= tps

    def _assign(self, assigned: set[Any], paused: bool) -> None:
        keep = set()
        for tp in assigned & self._held:
            # an eager rebalance gave it back and nobody committed since: our state is still exact
            now_committed = self._committed_offset(tp)
            log.debug("partition %s-%d back: committed=%s ours=%s", tp.topic, tp.partition, now_committed,
                      self.committed.get(tp))
            # Never on "no commit at all": a broker that came back empty has no commit either, and
            # our position there would skip its first records.
            if now_committed is not None and now_committed == self.committed.get(tp):
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
        self.assigned |= assigned
        if assigned and not paused:
            self.consumer.resume(*assigned)
        log.info("partitions assigned: %s (state kept: %s)", fmt_tps(assigned), fmt_tps(keep) or "-")

    def _committed_offset(self, tp: Any) -> int | None:
        try:
            v = self.consumer.committed(tp, timeout_ms=5000)
        except Exception:  # noqa: BLE001 - unknown means "rebuild", which is always correct
            return None
        return None if v is None else int(v)

    def _rewind(self, tp: Any) -> None:
        """Position a newly assigned partition: replay-from marker, else the committed offset.

        Always an explicit seek: records a poll may have returned meanwhile were not fed.
        """
        committed = self._committed_offset(tp)
        if committed is None:
            self._suppress.pop(tp, None)
            (self.consumer.seek_to_end if self.reset == "latest" else self.consumer.seek_to_beginning)(tp)
            log.info("partition %s-%d: no committed offset, starting from the %s (kafka.auto_offset_reset)",
                     tp.topic, tp.partition, self.reset)
            return
        self.committed[tp] = committed
        self._suppress[tp] = committed
        marker = self.markers.read(tp)
        why = "no replay needed" if marker is not None else "no rewind marker: state starts empty"
        if marker is not None and marker < committed:
            marker = self._within_log(tp, marker, committed)
            if marker is None:
                why = "no longer in the log: kafka.auto_offset_reset decides"
        if marker is None or marker >= committed:
            self.consumer.seek(tp, committed)
            log.info("partition %s-%d: resuming at %d (%s)", tp.topic, tp.partition, committed, why)
            return
        self.consumer.seek(tp, marker)
        log.info("partition %s-%d: committed=%d, replaying from %d (%d records) to rebuild state, publishing "
                 "from %d", tp.topic, tp.partition, committed, marker, committed - marker, committed)

    def _within_log(self, tp: Any, marker: int, committed: int) -> int | None:
        """The replay-from offset, moved up to the log's first record if retention deleted it.

        A seek below the log start falls out of range, and ``kafka.auto_offset_reset`` would then
        decide: ``latest`` would skip every record from the committed offset on. Replaying what is
        left loses nothing; only sources whose state began earlier are rebuilt from part of it.
        """
        try:
            start = self.consumer.beginning_offsets([tp], timeout_ms=5000).get(tp)
        except Exception as e:  # noqa: BLE001 - unknown: seek to the marker as before
            log.warning("partition %s-%d: log start unreadable (%s)", tp.topic, tp.partition, type(e).__name__)
            return marker
        if start is None or marker >= start:
            return marker
        if start > committed:
            log.warning("partition %s-%d: committed offset %d is no longer in the log (it starts at %d): "
                        "kafka.auto_offset_reset (%s) decides where consumption resumes",
                        tp.topic, tp.partition, committed, start, self.reset)
            return None
        log.warning("partition %s-%d: replay-from offset %d is no longer in the log (it starts at %d): "
                    "state is rebuilt from %d, so a source whose state began earlier may publish other "
                    "events until it is quiet again", tp.topic, tp.partition, marker, start, start)
        return int(start)


class RebalanceListener(ConsumerRebalanceListener):
    """kafka-python's rebalance callbacks (on its IO thread): queued for the main thread."""

    def __init__(self, offsets: Offsets) -> None:
        self.offsets = offsets

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.offsets.note_revoked(set(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.offsets.note_assigned(set(assigned))


def fmt_tps(tps: Any) -> str:
    return ",".join(f"{tp.topic}-{tp.partition}" for tp in sorted(tps))


def fmt_offsets(offsets: dict[Any, int]) -> str:
    return ",".join(f"{tp.topic}-{tp.partition}@{off}" for tp, off in sorted(offsets.items())) or "-"
