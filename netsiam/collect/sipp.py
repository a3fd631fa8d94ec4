"""``netsiam collect sipp``: the statistics files of one SIPp source -> records, as they are written.

Several files are parts of one source (a SIPp restarted without ``-stf`` writes a new
``scenario_PID_.csv``); their rows go out in ``ts`` order, each as soon as its line is complete,
byte for byte what ``netsiam import sipp`` writes for it. A row is published once: rows at or before
the state's ``last_ts`` were published by an earlier run and are skipped, and ``last_ts`` advances
only over acknowledged rows (:mod:`netsiam.collect.state`). Several SIPp instances are several
sources: one collector each (``netsiam-collect-sipp@SOURCE.service``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from netsiam.collect.metrics import CollectMetrics
from netsiam.collect.sink import Sink, Stopped
from netsiam.collect.state import CollectState
from netsiam.collect.statfollow import StatFollower
from netsiam.errors import NetsiamError, UsageError
from netsiam.importers.sipp import StatRow

__all__ = ["POLL_S", "SippCollector", "check_paths"]

log = logging.getLogger("netsiam.collect")

POLL_S = 0.2             # how often the files are checked for new rows (a row is written every -fd period)
SAVE_EVERY_S = 0.2       # the state file is written at most this often (and at exit)
FLUSH_ON_EXIT_S = 10.0   # on stop: wait this long for outstanding acks


def check_paths(paths: Sequence[str | Path], follow: bool) -> None:
    """Refuse what cannot be collected, before any broker is tried: no file, a compressed one, or (read
    once, without ``follow``) one that does not exist. A followed file may appear later."""
    if not paths:
        raise UsageError("collect sipp: no statistics files given")
    for p in paths:
        if str(p).endswith(".gz"):
            raise NetsiamError(f"{p}: a compressed file is finished, not followed: use `netsiam import sipp`")
        if not follow and not Path(p).is_file():
            raise NetsiamError(f"{p}: no such file")


class SippCollector:
    def __init__(self, paths: Sequence[str | Path], source: str, sink: Sink, state: CollectState,
                 metrics: CollectMetrics, *, follow: bool = False, poll_s: float = POLL_S,
                 stop: threading.Event | None = None) -> None:
        if not source:
            raise UsageError("collect sipp: a source name is required")
        check_paths(paths, follow)
        self.followers = [StatFollower(p, metrics) for p in paths]
        self.source, self.sink, self.state, self.metrics = source, sink, state, metrics
        self.follow, self.poll_s = follow, poll_s
        self.stop = stop or threading.Event()
        self.published = 0
        self.tick: Callable[[], object] = lambda: None   # called every round (the systemd watchdog)
        self._last_put = state.last_ts
        self._last_save = 0.0
        metrics.sources.set(1)

    def run(self) -> int:
        """Publish rows until the files are read (no ``follow``) or stop is set; -> rows handed over.

        The files are read only while the sink has room: when the broker is away and the buffer is
        full, what SIPp writes stays in the file (``netsiam_collect_backlog_bytes``), not in memory."""
        waiting = {f.path for f in self.followers if not f.path.exists()}
        for p in sorted(waiting):
            log.info("waiting for %s", p)
        held: deque[StatRow] = deque()       # read, not handed over yet (at most one read's worth)
        try:
            while not self.stop.is_set():
                self.tick()
                if not held:
                    rows: list[StatRow] = []
                    for f in self.followers:
                        rows.extend(f.poll(final=not self.follow))
                        if f.path in waiting and f.path.exists():
                            waiting.discard(f.path)
                            log.info("following %s", f.path)
                    held.extend(sorted(rows, key=lambda r: r.ts))
                while held and self.sink.room > 0:
                    self._emit(held.popleft())
                self._acked()
                self.metrics.backlog.set(sum(f.backlog for f in self.followers))
                drained = not held and all(f.eof for f in self.followers)
                if drained and not self.follow:
                    break
                if (drained or held) and self.stop.wait(self.poll_s if drained else 0.05):
                    break
        except Stopped:
            pass
        finally:
            for f in self.followers:
                f.close()
            if not self.sink.flush(FLUSH_ON_EXIT_S):
                log.warning("%d record(s) not acknowledged at exit: the next run publishes them again",
                            self.sink.pending)
            self._acked(force_save=True)
        if not self.follow and not self.stop.is_set():
            for f in self.followers:
                if not f.headers:
                    raise NetsiamError(f"{f.path}: not SIPp statistics (no -trace_stat header)")
        return self.published

    def _emit(self, r: StatRow) -> None:
        if self.state.published(r.ts):
            self.metrics.skipped("published")
            return
        if r.ts <= self._last_put:
            self.metrics.error("out_of_order")
            log.warning("row at %.6f is older than one already published for %s: skipped (two SIPp writing "
                        "for one source? give each its own --source)", r.ts, self.source)
            return
        value = orjson.dumps({"source": self.source, "ts": r.ts, "metrics": r.metrics})
        self.sink.put(self.source, value, r.ts, r.ts)
        self._last_put = r.ts
        self.published += 1

    def _acked(self, force_save: bool = False) -> None:
        for ts in self.sink.poll():
            assert isinstance(ts, float)
            self.state.advance(ts)
        now = time.monotonic()
        if force_save or now - self._last_save >= SAVE_EVERY_S:
            self.state.save()
            self._last_save = now
