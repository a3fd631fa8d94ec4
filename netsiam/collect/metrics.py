"""Every Prometheus metric the collectors export, in one place, with help text.

Names follow Prometheus rules (``_total`` counters, ``_seconds`` and ``_bytes`` base units) under
the ``netsiam_collect_`` prefix; every series carries ``collector`` (``sipp`` or ``pcap``) so one
Prometheus job can scrape both. Metrics take a ``registry`` so tests use a fresh one.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ERROR_REASONS", "SKIP_REASONS", "CollectMetrics"]

# netsiam_collect_errors_total{reason}: exported at zero from the start so rate() works at once
ERROR_REASONS = (
    "bad_row",          # a statistics line that does not parse (counted, skipped; the collector goes on)
    "not_statistics",   # a followed file that is not SIPp -trace_stat output (yet)
    "out_of_order",     # a row older than one already published for the source (two SIPp on one source?)
    "late_message",     # a SIP message that arrived after its second was published (pcap)
    "publish",          # a send the broker did not acknowledge (re-sent: nothing is lost)
    "capture",          # the capture process failed or exited
)
SKIP_REASONS = (
    "published",        # already published by an earlier run of the collector (state file)
    "partial_period",   # SIPp's start/exit fragment of a period, not comparable with whole ones
)


class CollectMetrics:
    def __init__(self, registry: CollectorRegistry, collector: str) -> None:
        r, lab = registry, ["collector"]
        self.registry, self.collector = registry, collector
        self._newest = 0.0
        self._rows_read = Counter(
            "netsiam_collect_rows_read_total",
            "Input rows read: SIPp statistics rows (sipp) or SIP messages decoded from the capture (pcap).",
            lab, registry=r)
        self._published = Counter(
            "netsiam_collect_records_published_total",
            "Records acknowledged by the broker (or written, with -o).", lab, registry=r)
        self._skipped = Counter(
            "netsiam_collect_rows_skipped_total",
            "Statistics rows not published, by reason: published by an earlier run, or a partial period.",
            [*lab, "reason"], registry=r)
        self._errors = Counter(
            "netsiam_collect_errors_total", "Input or publishing errors, by reason (the collector goes on).",
            [*lab, "reason"], registry=r)
        self._resets = Counter(
            "netsiam_collect_file_resets_total",
            "Followed statistics files truncated, recreated or restarted by a new SIPp run.", lab, registry=r)
        self._pending = Gauge(
            "netsiam_collect_pending_records",
            "Records handed to the broker and not acknowledged yet (bounded: reading blocks when full).",
            lab, registry=r)
        self._lag = Gauge(
            "netsiam_collect_lag_seconds",
            "Wall-clock age of the newest acknowledged record: now minus its ts (sample end).", lab, registry=r)
        self._backlog = Gauge(
            "netsiam_collect_backlog_bytes",
            "Bytes written to the followed statistics files and not read yet (sipp).", lab, registry=r)
        self._broker_up = Gauge(
            "netsiam_collect_broker_up",
            "1 while the broker answers and the samples topic exists, else 0 (records are held meanwhile).",
            lab, registry=r)
        self._sources = Gauge(
            "netsiam_collect_sources", "Sources the collector publishes records for.", lab, registry=r)
        self._last_ts = Gauge(
            "netsiam_collect_last_record_timestamp_seconds",
            "ts of the newest acknowledged record (Unix time).", lab, registry=r)
        self.rows_read = self._rows_read.labels(collector)
        self.published = self._published.labels(collector)
        self.resets = self._resets.labels(collector)
        self.pending = self._pending.labels(collector)
        self.lag = self._lag.labels(collector)
        self.backlog = self._backlog.labels(collector)
        self.broker_up = self._broker_up.labels(collector)
        self.sources = self._sources.labels(collector)
        self.last_ts = self._last_ts.labels(collector)
        for reason in ERROR_REASONS:
            self._errors.labels(collector, reason)
        for reason in SKIP_REASONS:
            self._skipped.labels(collector, reason)

    def error(self, reason: str, n: int = 1) -> None:
        self._errors.labels(self.collector, reason).inc(n)

    def skipped(self, reason: str, n: int = 1) -> None:
        self._skipped.labels(self.collector, reason).inc(n)

    def acked(self, ts: float, now: float) -> None:
        """A record with sample time ``ts`` was acknowledged (or written) at ``now``."""
        self.published.inc()
        if ts > self._newest:
            self._newest = ts
            self.last_ts.set(ts)
        self.refresh(now)

    def refresh(self, now: float) -> None:
        """Keep the lag current while nothing is acknowledged (broker away, input stopped)."""
        if self._newest > 0:
            self.lag.set(max(0.0, now - self._newest))
