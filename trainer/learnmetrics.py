"""Every Prometheus metric ``netsiam learn`` exports, in one place, with help text.

Names follow Prometheus rules under the ``netsiam_feedback_`` prefix. A message is counted once however
often the broker made it wait; a dead letter once the broker acknowledged it. Metrics take a ``registry``
so tests use a fresh one.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from .feedback import ACTIONS

__all__ = ["ACTIONS", "FEEDBACK_REASONS", "LearnMetrics"]

# exported at zero from the start so rate() works at once; ACTIONS: what an applied message did
FEEDBACK_REASONS = ("not_json", "schema", "refused")   # a dead-lettered one's: FeedbackError's, or learn's refusal


class LearnMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.registry = registry
        self.consumed = Counter(
            "netsiam_feedback_consumed_total", "Feedback messages read from the feedback topic.", registry=r)
        self.applied = Counter(
            "netsiam_feedback_applied_total",
            "Feedback messages applied to the served model, by what they did (a new class, more support for "
            "one, a false alarm taught normal, or already in the model's lineage).", ["action"], registry=r)
        self.dead_letters = Counter(
            "netsiam_feedback_dead_letters_total",
            "Feedback messages sent to the dead-letter topic (acknowledged), by reason.", ["reason"], registry=r)
        self.last_applied = Gauge(
            "netsiam_feedback_last_applied_timestamp_seconds",
            "When the last feedback message was applied (Unix time; 0: none since start).", registry=r)
        for a in ACTIONS:
            self.applied.labels(action=a)
        for reason in FEEDBACK_REASONS:
            self.dead_letters.labels(reason=reason)
