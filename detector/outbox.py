"""What the pipeline emits, handed to the publisher as Kafka messages, with a log that stays readable.

Events go to the faults topic keyed by source, dead letters to the dead-letter topic under the
original key. One log line per event up to EVENT_LOG_BURST per housekeeping round, then a summary;
dead letters are summarised by reason every DEADLETTER_LOG_S (a flood of bad records must not flood
the log too).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence

from netsiam.config import TopicsConfig
from netsiam.schemas.deadletter import DeadLetter

from .delivery import Publisher
from .pipeline import EventOut

__all__ = ["DEADLETTER_LOG_S", "EVENT_LOG_BURST", "Outbox"]

log = logging.getLogger("netsiam.detector")

DEADLETTER_LOG_S = 10.0     # one summary line per interval instead of one per bad record
EVENT_LOG_BURST = 20        # fault events logged one by one per round; beyond, one summary line


class Outbox:
    """Publishes pipeline outputs; :meth:`log_round` writes the summaries (from housekeeping)."""

    def __init__(self, publisher: Publisher, topics: TopicsConfig, round_s: float) -> None:
        self.publisher = publisher
        self.topics = topics
        self.round_s = round_s
        self._event_budget = EVENT_LOG_BURST
        self._events_unlogged = 0
        self._dl_counts: Counter[str] = Counter()
        self._last_dl_log = time.monotonic()

    def publish(self, items: Sequence[DeadLetter | EventOut]) -> None:
        now = time.time()
        info = log.isEnabledFor(logging.INFO)
        pub = self.publisher
        for item in items:
            if isinstance(item, EventOut):
                ev = item.event
                pub.send(self.topics.faults, ev.source.encode(), ev.to_bytes(), fault=ev.fault, state=ev.state,
                         record_ts_ms=item.record_ts_ms)
                if info and self._event_budget > 0:
                    self._event_budget -= 1
                    log.info("fault %s source=%s fault=%s started_at=%.3f window_end=%.3f distance=%.3f "
                             "event_id=%s", ev.state, ev.source, ev.fault, ev.started_at, ev.window_end,
                             ev.distance, ev.event_id)
                else:
                    self._events_unlogged += 1
            else:
                pub.send(self.topics.deadletter, item.key, item.to_bytes(now))
                self._dl_counts[item.reason] += 1
                log.debug("dead letter reason=%s partition=%d offset=%d detail=%s", item.reason, item.partition,
                          item.offset, item.detail)

    def log_round(self, now: float) -> None:
        """End of a housekeeping round: the events not logged one by one, the dead letters by reason."""
        self.log_unlogged()
        self._event_budget = EVENT_LOG_BURST
        if self._dl_counts and now - self._last_dl_log >= DEADLETTER_LOG_S:
            log.info("dead-lettered %d record(s): %s", sum(self._dl_counts.values()),
                     " ".join(f"{r}={n}" for r, n in sorted(self._dl_counts.items())))
            self._dl_counts.clear()
            self._last_dl_log = now

    def log_unlogged(self) -> None:
        if self._events_unlogged:
            log.info("%d more fault event(s) published without a log line each (over %d per %.0f s; all are on "
                     "topic %s)", self._events_unlogged, EVENT_LOG_BURST, self.round_s, self.topics.faults)
            self._events_unlogged = 0
