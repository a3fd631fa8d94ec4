"""Which sources went silent and which are idle long enough to forget, decided in record time.

Per partition, the sources are kept in the order their last record arrived (least recent first), in
two queues: those still heard, and those already silent. A record on the partition whose ``ts`` is
more than ``detector.silent_after_s`` past the oldest heard source's last record makes that source
silent; more than ``detector.idle_evict_s`` past the oldest silent one's (or, with silence off, the
oldest heard one's) makes it idle: the daemon forgets it. Only the heads are looked at, and only when
a record's ``ts`` passes the earliest deadline, so a record costs O(1).

The decision depends only on the source's last record and the records after it on its partition, so
a replay from any offset at or before that last record decides the same at the same record (the
restart rule in pipeline.py). It assumes a partition's records arrive in timestamp order (true for
records of one producer per partition; with several producers a source may be judged silent a little
late, never early: the heads are checked, not every source).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable

from .sources import TP, SourceState

__all__ = ["Liveness"]


class Liveness:
    """Silence and idle deadlines of every source, per partition (main thread only)."""

    def __init__(self, silent_after_s: float, idle_evict_s: float) -> None:
        self.silent_after = silent_after_s    # 0: silence is not watched, idle sources are simply forgotten
        self.idle = idle_evict_s
        self._heard: dict[TP, OrderedDict[str, SourceState]] = {}
        self._silent: dict[TP, OrderedDict[str, SourceState]] = {}
        self.due: dict[TP, float] = {}        # a record later than this may pass a deadline: scan

    def _first_limit(self) -> float:
        return self.silent_after or self.idle

    def _lower_due(self, tp: TP, deadline: float) -> None:
        if deadline < self.due.get(tp, math.inf):
            self.due[tp] = deadline

    def heard(self, st: SourceState, tp: TP) -> None:
        """``st`` just had a record accepted on ``tp`` (its ``last_ts`` is set): last in the queue."""
        name = st.name
        queue = self._heard.get(tp)
        if queue is None:
            queue = self._heard[tp] = OrderedDict()
        if name in queue and queue[name] is st:
            queue.move_to_end(name)
            return
        self.forget(st)   # silent until now, new, or moved from another partition
        queue[name] = st
        if len(queue) == 1:
            self._lower_due(tp, st.last_ts + self._first_limit())

    def forget(self, st: SourceState) -> None:
        """Take ``st`` out of every queue (evicted, or about to be re-queued)."""
        for queues in (self._heard, self._silent):
            for q in queues.values():
                if q.get(st.name) is st:
                    del q[st.name]
                    return

    def scan(self, tp: TP, ts: float) -> tuple[list[SourceState], list[SourceState]]:
        """Sources on ``tp`` that a record at ``ts`` shows silent, and those it shows idle (to forget).

        The silent ones move to the silent queue; the idle ones leave every queue. A source can be in
        both lists (silent and idle at once): it is silent first."""
        silent: list[SourceState] = []
        idle: list[SourceState] = []
        heard = self._heard.get(tp)
        if heard:
            first = self._first_limit()
            quiet = self._silent.get(tp)
            if quiet is None and self.silent_after:
                quiet = self._silent[tp] = OrderedDict()
            while heard:
                head = next(iter(heard.values()))
                if ts - head.last_ts <= first:
                    break
                del heard[head.name]
                if self.silent_after:
                    silent.append(head)
                    assert quiet is not None
                    quiet[head.name] = head
                else:
                    idle.append(head)
        quiet = self._silent.get(tp)
        if quiet:
            while quiet:
                head = next(iter(quiet.values()))
                if ts - head.last_ts <= self.idle:
                    break
                del quiet[head.name]
                idle.append(head)
        self._recompute_due(tp)
        return silent, idle

    def _recompute_due(self, tp: TP) -> None:
        due = math.inf
        heard, quiet = self._heard.get(tp), self._silent.get(tp)
        if heard:
            due = next(iter(heard.values())).last_ts + self._first_limit()
        if quiet:
            due = min(due, next(iter(quiet.values())).last_ts + self.idle)
        self.due[tp] = due

    def silence_all(self, tp: TP) -> list[SourceState]:
        """Every source still heard on ``tp``, moved to the silent queue (the partition went quiet by
        the wall clock: no record will come to show it in record time)."""
        heard = self._heard.get(tp)
        if not heard or not self.silent_after:
            return []
        out = list(heard.values())
        quiet = self._silent.setdefault(tp, OrderedDict())
        for st in out:
            quiet[st.name] = st
        heard.clear()
        self._recompute_due(tp)
        return out

    def drop(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._heard.pop(tp, None)
            self._silent.pop(tp, None)
            self.due.pop(tp, None)

    def silent_sources(self, tp: TP) -> list[SourceState]:
        q = self._silent.get(tp)
        return list(q.values()) if q else []
