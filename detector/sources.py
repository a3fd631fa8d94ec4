"""Per-source state in the daemon, and the restart rule it keeps.

:meth:`SourceState.resync_offset` is an offset from which replaying the partition rebuilds the
source's state exactly: the first record of the last window embedded (the window buffer: records have
strictly increasing slots, so the record ``T`` records back lies at or before the window's first slot,
gap fill included) or, earlier, the first record of the first window since the source's tracker was
last quiet (a :class:`~netsiam.debounce.FaultTracker` whose ``quiet`` is true acts like a new one,
whatever came before; tests/test_pipeline.py checks this property). With ``detector.max_replay_s``
set, a long episode is replayed from a later window instead, one after which every tracker, wherever
it started, makes the same transitions but for ``started_at``
(:attr:`~netsiam.debounce.FaultTracker.restart_span`): the replayed tracker raises (or switches to)
the fault again there, unpublished, and its later events carry that start. The one thing a replay
rebuilds otherwise is the source's answer-time level (:mod:`netsiam.slowanswers`), which it starts
afresh from the first window it replays: the level of the source's traffic before the episode.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from typing import NamedTuple

from netsiam.config import DebounceConfig, WindowConfig
from netsiam.debounce import FaultTracker
from netsiam.features import RAW_METRICS
from netsiam.slowanswers import AnswerLevel
from netsiam.windowing import WindowBuffer

__all__ = ["TP", "Evicted", "SourceState"]

TP = Hashable  # a kafka TopicPartition (a (topic, partition) named tuple) or any hashable in tests


class Evicted(NamedTuple):
    """An evicted source's resync offset, kept while a commit taken before the eviction may need it."""

    seq: int      # eviction sequence number
    tp: TP
    resync: int


class SourceState:
    """Everything held for one source: window ring buffer, debounce state, rewind bookkeeping."""

    __slots__ = ("alive", "anchor", "anchor_ts", "buf", "cand", "cand_run", "cand_ts", "epoch", "first_offset",
                 "last_ts", "last_win_start", "level", "name", "offsets", "silence", "silent_fault", "tp", "tracker")

    def __init__(self, name: str, tp: TP, offset: int, window: WindowConfig, debounce: DebounceConfig) -> None:
        self.name = name
        self.tp = tp
        self.buf = WindowBuffer(window, len(RAW_METRICS))
        self.tracker = FaultTracker(debounce)
        self.level = AnswerLevel()              # its answer times' level (netsiam.slowanswers)
        self.offsets: deque[int] = deque(maxlen=window.length)  # offsets of the last T records
        self.first_offset = offset
        self.last_ts = -math.inf
        self.last_win_start: int | None = None  # first record of the last applied window
        self.epoch: int | None = None           # first record of the first window since the tracker was quiet
        # detector.max_replay_s (_move_epoch): the window a replay may start from in place of the
        # epoch (first record, end), and a later candidate for it, with the tracker's given_run there
        self.anchor = 0
        self.anchor_ts = 0.0
        self.cand: int | None = None
        self.cand_ts = 0.0
        self.cand_run = 0
        self.alive = True                       # False once its eviction is applied (or its partition dropped)
        # the silent fault: as feed() decided it (started_at, or None) and as apply() has published it;
        # they differ while the decision waits in the queue behind the source's earlier windows
        self.silence: float | None = None
        self.silent_fault: float | None = None

    def reset_buffer(self, window: WindowConfig) -> None:
        self.buf = WindowBuffer(window, len(RAW_METRICS))
        self.offsets = deque(maxlen=window.length)

    def windowed(self, start: int, end_ts: float, half_replay: float) -> None:
        """The tracker has taken a window (its first record's offset ``start``, its end ``end_ts``): keep
        where a replay must start. ``half_replay``: half of ``detector.max_replay_s`` (0: no bound)."""
        self.last_win_start = start
        if self.tracker.quiet:
            self.epoch = None  # a replay may start after this window
        elif self.epoch is None:
            self.epoch = self.anchor = start
            self.anchor_ts, self.cand = end_ts, None
        elif half_replay:
            self._move_epoch(start, end_ts, half_replay)

    def _move_epoch(self, start: int, end_ts: float, half: float) -> None:
        """``detector.max_replay_s``: move a long episode's replay-from window up, to the latest anchor at
        least ``half`` old. A window becomes an anchor once the run of one class it lies in covers the
        tracker's ``restart_span`` from it on (a replay from it, or from any earlier offset, makes the same
        transitions, ``started_at`` aside); the next one is looked for from the moment the last is ``half``
        old, so while the windows carry the fault the epoch stays between ``half`` and about twice that back."""
        t = self.tracker
        if self.cand is not None and t.given_run == 1:  # the candidate's run of one class broke
            self.cand = None
        if end_ts - self.anchor_ts < half:
            return
        self.epoch = self.anchor
        if self.cand is None:
            self.cand, self.cand_ts, self.cand_run = start, end_ts, t.given_run
        span = t.restart_span
        if span and t.given_run - self.cand_run + 1 >= span:
            self.anchor, self.anchor_ts, self.cand = self.cand, self.cand_ts, None

    def resync_offset(self) -> int:
        """Oldest offset a replay must start from to rebuild this state exactly (module docstring)."""
        if self.epoch is not None:
            return self.epoch
        if self.last_win_start is not None:
            return self.last_win_start
        return self.first_offset
