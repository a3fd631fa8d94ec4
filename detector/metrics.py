"""Every Prometheus metric the daemon exports, in one place, with help text.

Names follow Prometheus rules (``_total`` counters, ``_seconds`` base units) under the
``netsiam_`` prefix; the alert rules and the Grafana dashboard in deploy/ query exactly these.
Metrics take a ``registry`` so tests use a fresh one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from netsiam.schemas.record import RECORD_REASONS

__all__ = ["DetectorMetrics", "RaisedFaults", "SourceTimes"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class SourceTimes(Collector):
    """``netsiam_source_last_record_timestamp_seconds{source}``: one series per tracked source (at most
    detector.max_sources), read from the daemon's state at scrape time rather than set per record. The
    dashboard lists its sources from it, and a silent one shows how long it has been quiet."""

    NAME = "netsiam_source_last_record_timestamp_seconds"
    HELP = "Record time (ts) of the newest record of each tracked source (Unix time)."

    def __init__(self, read: Callable[[], Iterable[tuple[str, float]]]) -> None:
        self._read = read

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.NAME, self.HELP, labels=["source"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        fam = GaugeMetricFamily(self.NAME, self.HELP, labels=["source"])
        for source, ts in self._read():
            fam.add_metric([source], ts)
        yield fam


class RaisedFaults(Collector):
    """The raised faults, one entry per (source, fault), exported at scrape time as
    ``netsiam_fault_active{source, fault}``, ``netsiam_fault_evidence_info{source, fault, evidence,
    event_id}`` and ``netsiam_active_faults{fault}``.

    Labelled gauges would build and validate a new child per raise (prometheus_client does that for
    every new label set), which a cold start pays thousands of times at once; a dict entry is cheap.
    The series are those of the gauges they replace: removed at the clear, and a fault's count stays
    at 0 once it has been raised.
    """

    ACTIVE = ("netsiam_fault_active", "1 while a fault is raised on a source (series removed when it clears).")
    # Grafana cannot read the faults topic: this series carries an event's evidence to its annotations.
    # Bounded like netsiam_fault_active: one series per raised fault, removed when it clears.
    EVIDENCE = ("netsiam_fault_evidence_info",
                "1 while a fault is raised on a source, with its raised event's evidence (the model inputs furthest "
                "outside their normal range, 'feature value (normal lo to hi); ...', empty when there is none) "
                "in the evidence label, and the raised event's event_id (what `netsiam feedback` takes); series "
                "removed when it clears.")
    COUNT = ("netsiam_active_faults", "Sources with a raised fault, by fault.")

    def __init__(self) -> None:
        self._raised: dict[tuple[str, str], tuple[str, str]] = {}   # (source, fault) -> (evidence, event_id)
        self._faults: dict[str, None] = {}                          # every fault raised so far, in order
        self._lock = threading.Lock()                               # scrapes run on the HTTP server's thread

    def set(self, source: str, fault: str, evidence: str = "", event_id: str = "") -> None:
        with self._lock:
            self._raised[(source, fault)] = (evidence, event_id)
            self._faults.setdefault(fault)

    def clear(self, source: str, fault: str) -> None:
        with self._lock:
            self._raised.pop((source, fault), None)

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily(*self.ACTIVE, labels=["source", "fault"]),
                GaugeMetricFamily(*self.EVIDENCE, labels=["source", "fault", "evidence", "event_id"]),
                GaugeMetricFamily(*self.COUNT, labels=["fault"]))

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            raised, faults = list(self._raised.items()), list(self._faults)
        active, info, count = self._families()
        n = dict.fromkeys(faults, 0)
        for (source, fault), (evidence, event_id) in raised:
            active.add_metric([source, fault], 1)
            info.add_metric([source, fault, evidence, event_id], 1)
            n[fault] += 1
        for fault, k in n.items():
            count.add_metric([fault], k)
        yield from (active, info, count)


class DetectorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.records_consumed = Counter(
            "netsiam_records_consumed_total", "Records read from the samples topic.", registry=r)
        self.records_valid = Counter(
            "netsiam_records_valid_total", "Records that passed validation and entered a window.", registry=r)
        self.records_invalid = Counter(
            "netsiam_records_invalid_total", "Records sent to the dead-letter topic, by reason.",
            ["reason"], registry=r)
        for reason in RECORD_REASONS:  # export zeros so rate() works before the first bad record
            self.records_invalid.labels(reason=reason)
        self.metric_values_ignored = Counter(
            "netsiam_metric_values_ignored_total",
            "Values of metrics the model does not use that were out of range (e.g. SIPp's int64 sentinel) "
            "and were left out; the record itself was used.", registry=r)
        self.windows_embedded = Counter(
            "netsiam_windows_embedded_total", "Windows embedded by the encoder.", registry=r)
        self.classifications = Counter(
            "netsiam_classifications_total",
            "Windows classified, by class (unknown = beyond every threshold, or answered slower than its source's own).",
            ["class"], registry=r)
        self.fault_events = Counter(
            "netsiam_fault_events_total", "Fault events published and acknowledged, by fault and state.",
            ["fault", "state"], registry=r)
        self.raised = RaisedFaults()
        r.register(self.raised)
        self.embed_batch_seconds = Histogram(
            "netsiam_embed_batch_seconds", "Time to embed and classify one micro-batch of windows.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.embed_batch_size = Histogram(
            "netsiam_embed_batch_size", "Windows per embedded micro-batch.", buckets=_BATCH_BUCKETS, registry=r)
        self.record_to_event_seconds = Histogram(
            "netsiam_record_to_event_seconds",
            "From the triggering record's append to the broker to the event's acknowledgement.",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.consumer_lag = Gauge(
            "netsiam_consumer_lag", "Records behind the end of each assigned partition.",
            ["topic", "partition"], registry=r)
        self.sources_tracked = Gauge(
            "netsiam_sources_tracked", "Sources with window state held in memory.", registry=r)
        self.sources_evicted = Counter(
            "netsiam_sources_evicted_total", "Sources whose state was dropped (idle or over the limit).",
            registry=r)
        self.model_info = Gauge(
            "netsiam_model_info", "The model serving now (value 1), by version.", ["version"], registry=r)
        self.model_loaded = Gauge(
            "netsiam_model_loaded_timestamp_seconds", "When the serving model was loaded (Unix time).",
            registry=r)
        self.model_reloads = Counter(
            "netsiam_model_reloads_total", "Successful model reloads.", registry=r)
        self.model_reload_failures = Counter(
            "netsiam_model_reload_failures_total", "Model reloads refused (the old model kept serving).",
            registry=r)
        self.broker_up = Gauge(
            "netsiam_broker_up", "1 when the broker is reachable, the consumer is assigned and publishes are "
            "acknowledged in time, else 0.",
            registry=r)
        self.events_pending = Gauge(
            "netsiam_events_pending", "Events and dead letters produced but not yet acknowledged.", registry=r)
        self.commits = Counter(
            "netsiam_commits_total", "Offset commits (only after every produce they cover was acked).",
            registry=r)
        self.last_commit = Gauge(
            "netsiam_last_commit_timestamp_seconds", "Unix time of the last offset commit.", registry=r)

    def track_sources(self, read: Callable[[], Iterable[tuple[str, float]]]) -> None:
        """Export :class:`SourceTimes` from ``read`` (the daemon's tracked sources)."""
        self.registry.register(SourceTimes(read))

    def set_model(self, version: str, old: str | None) -> None:
        """The serving model: its info series (the previous version's removed) and load time."""
        if old is not None and old != version:
            with contextlib.suppress(KeyError):
                self.model_info.remove(old)
        self.model_info.labels(version=version).set(1)
        self.model_loaded.set(time.time())
