"""How the daemon survives an outage of the embedded broker (Tansu 0.6.0): the delivery workarounds.

Measured: Tansu acknowledges a produce to a topic that does not exist and drops it, and a Tansu
restarted empty does not know the producer it talked to. An old producer retrying into such a broker
before its topics are recreated lost acknowledged events. So when the broker stops answering, the
producer is retired at once, and a new one sends again only once the output topics the daemon saw
at start exist again. (The producer is also non-idempotent: :func:`netsiam.kafka_io.producer_kwargs`.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from kafka.errors import KafkaError

__all__ = ["TansuWorkarounds"]

log = logging.getLogger("netsiam.detector")


class TansuWorkarounds:
    """:class:`~netsiam.detector.delivery.OutageRules` for Tansu: retire the producer on an outage,
    re-send only once ``outputs`` (those that existed at start) exist again."""

    def __init__(self, list_topics: Callable[[], Iterable[str]], outputs: Iterable[str]) -> None:
        self._list_topics = list_topics  # a metadata round trip, not a cache
        self.outputs = frozenset(outputs) & set(list_topics())
        self._awaiting = False           # the broker was away: check the topics before re-sending
        self._logged = False

    def on_outage(self) -> bool:
        self._awaiting = True
        return True

    def may_resend(self, held: Callable[[], int]) -> bool:
        if not self._awaiting:
            return True
        missing = self._missing()
        if missing:
            if not self._logged:
                self._logged = True
                log.warning("broker back without topic(s) %s: waiting for them before publishing again "
                            "(%d message(s) held)", ",".join(missing), held())
            return False
        if self._logged:
            log.info("output topics present again")
        self._awaiting = self._logged = False
        return True

    def _missing(self) -> list[str]:
        try:
            present = set(self._list_topics())
        except (KafkaError, OSError):
            return sorted(self.outputs)
        return sorted(self.outputs - present)
