"""The netsiam dashboard's panels: one list that both the Grafana JSON and the picture are built from.

Every query uses only metrics defined in detector/metrics.py and, in the feedback row,
trainer/learnmetrics.py (plus Prometheus' own ``up``); the Grafana variables in them (``$source``,
``$instance``, ``$__rate_interval``, ``$__range``) are expanded by
:func:`netsiam.dashboard.prometheus.expand` for the picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ANNOTATIONS", "DASHBOARD_UID", "DETECTOR_JOB", "LEARN_JOB", "PANELS", "VARIABLES", "Annotation", "Panel",
           "PanelKind", "Target"]

DASHBOARD_UID = "netsiam"
DETECTOR_JOB = "netsiam-detector"  # job_names in deploy/prometheus/prometheus.yml
LEARN_JOB = "netsiam-learn"

PanelKind = Literal["timeseries", "stat", "state-timeline"]


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    key: str                          # stable id (code and tests refer to a panel by it, never by title)
    title: str
    kind: PanelKind
    targets: tuple[Target, ...]
    grid: tuple[int, int, int, int]  # x, y, w, h on Grafana's 24-column grid
    unit: str = "short"  # Grafana unit id: short, s, ops, percentunit, none
    description: str = ""
    mappings: tuple[tuple[float, str, str], ...] = ()  # value -> (text, color)
    red_above: float | None = None  # stat: background turns red above this value
    shows: Literal["value", "legend"] = "value"  # stat: the last value, or the series' legend (a version)


_I = 'instance=~"$instance"'
_SRC = 'source=~"$source"'


def _sel(metric: str, *matchers: str) -> str:
    return metric + "{" + ", ".join((*matchers, _I)) + "}"


def _rate(metric: str, *matchers: str) -> str:
    return f"rate({_sel(metric, *matchers)}[$__rate_interval])"


def _quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (le) ({_rate(histogram + '_bucket')}))"


# `netsiam learn` is one service beside any number of detectors: its panels select it by job, not by
# the detector's $instance
_L = f'job="{LEARN_JOB}"'


def _learn_increase(metric: str) -> str:
    return f"increase({metric}{{{_L}}}[$__rate_interval])"


_UPDOWN = ((0.0, "DOWN", "red"), (1.0, "UP", "green"))

PANELS: tuple[Panel, ...] = (
    # --- row 0: stats ------------------------------------------------------------------------
    Panel("active_faults", "Active faults", "stat",
          (Target(f'count({_sel("netsiam_fault_active", _SRC)}) or vector(0)'),),
          (0, 0, 3, 4), unit="none", red_above=0.5,
          description="Sources with a raised fault now (netsiam_fault_active)."),
    Panel("detector_up", "Detector up", "stat",
          (Target(f'up{{job="{DETECTOR_JOB}", {_I}}}', "{{instance}}"),),
          (3, 0, 3, 4), unit="none", mappings=_UPDOWN,
          description="Prometheus can scrape the detector's /metrics."),
    Panel("broker_up", "Broker up", "stat",
          (Target(_sel("netsiam_broker_up"), "{{instance}}"),),
          (6, 0, 3, 4), unit="none", mappings=_UPDOWN,
          description="The detector reaches the broker and has partitions assigned."),
    Panel("model_version", "Model version", "stat",
          (Target(_sel("netsiam_model_info") + " == 1", "{{version}}"),),
          (9, 0, 3, 4), unit="none", shows="legend",
          description="The model artifact serving now (netsiam_model_info)."),
    Panel("model_age", "Model age", "stat",
          (Target(f'time() - max({_sel("netsiam_model_loaded_timestamp_seconds")} > 0)'),),
          (12, 0, 3, 4), unit="s",
          description="Time since the serving model was loaded."),
    Panel("model_reloads", "Model reloads (range)", "stat",
          (Target(f'sum(increase({_sel("netsiam_model_reloads_total")}[$__range]))', "reloads"),),
          (15, 0, 3, 4), unit="none",
          description="Successful model reloads in the dashboard's time range."),
    Panel("reload_failures", "Reload failures (range)", "stat",
          (Target(f'sum(increase({_sel("netsiam_model_reload_failures_total")}[$__range]))', "failures"),),
          (18, 0, 3, 4), unit="none", red_above=0.5,
          description="Model reloads refused in the time range (the old model kept serving)."),
    Panel("sources_tracked", "Sources tracked", "stat",
          (Target(f'sum({_sel("netsiam_sources_tracked")})'),),
          (21, 0, 3, 4), unit="none",
          description="Sources with window state held in memory."),
    # --- row 1: fault timeline -----------------------------------------------------------------
    Panel("fault_timeline", "Fault timeline", "state-timeline",
          (Target(f'max by (source, fault) ({_sel("netsiam_fault_active", _SRC)})',
                  "{{source}} {{fault}}"),),
          (0, 4, 24, 8), unit="none", mappings=((1.0, "active", "red"),),
          description="Per source and fault: when the fault was raised (bar) until it cleared."),
    # --- row 2: classification and throughput -------------------------------------------------
    Panel("classifications", "Classifications by class", "timeseries",
          (Target(f'sum by (class) ({_rate("netsiam_classifications_total")})', "{{class}}"),),
          (0, 12, 12, 8), unit="ops",
          description="Windows classified per second, by class (unknown = beyond every threshold)."),
    Panel("throughput", "Throughput", "timeseries",
          (Target(f'sum({_rate("netsiam_records_consumed_total")})', "records consumed"),
           Target(f'sum({_rate("netsiam_records_valid_total")})', "records valid"),
           Target(f'sum({_rate("netsiam_windows_embedded_total")})', "windows embedded")),
          (12, 12, 12, 8), unit="ops",
          description="Records read and accepted, and windows embedded, per second."),
    # --- row 3: latency --------------------------------------------------------------------
    Panel("embed_latency", "Embed batch latency", "timeseries",
          (Target(_quantile(0.5, "netsiam_embed_batch_seconds"), "p50"),
           Target(_quantile(0.99, "netsiam_embed_batch_seconds"), "p99")),
          (0, 20, 8, 8), unit="s",
          description="Time to embed and classify one micro-batch."),
    Panel("embed_batch_size", "Embed batch size", "timeseries",
          (Target(_quantile(0.5, "netsiam_embed_batch_size"), "p50"),
           Target(_quantile(0.99, "netsiam_embed_batch_size"), "p99")),
          (8, 20, 8, 8), unit="none",
          description="Windows per micro-batch."),
    Panel("record_to_event_latency", "Record to event latency", "timeseries",
          (Target(_quantile(0.5, "netsiam_record_to_event_seconds"), "p50"),
           Target(_quantile(0.99, "netsiam_record_to_event_seconds"), "p99")),
          (16, 20, 8, 8), unit="s",
          description="Triggering record appended to the broker -> fault event acknowledged "
                      "(alert above 250 ms p99)."),
    # --- row 4: input health -----------------------------------------------------------------
    Panel("consumer_lag", "Consumer lag by partition", "timeseries",
          (Target(f'sum by (topic, partition) ({_sel("netsiam_consumer_lag")})', "{{topic}}/{{partition}}"),),
          (0, 28, 8, 8), unit="short",
          description="Records behind the end of each assigned partition."),
    Panel("dead_letters", "Dead letters by reason", "timeseries",
          (Target(f'sum by (reason) ({_rate("netsiam_records_invalid_total")})', "{{reason}}"),),
          (8, 28, 8, 8), unit="ops",
          description="Records sent to netsiam.deadletter per second, by reason."),
    Panel("fault_events", "Fault events", "timeseries",
          (Target(f'sum by (fault, state) (increase({_sel("netsiam_fault_events_total")}[$__rate_interval]))',
                  "{{fault}} {{state}}"),),
          (16, 28, 8, 8), unit="short",
          description="Fault events published and acknowledged, by fault and state."),
    # --- row 5: output health ----------------------------------------------------------------
    Panel("events_pending", "Events awaiting ack", "timeseries",
          (Target(f'sum({_sel("netsiam_events_pending")})', "pending"),),
          (0, 36, 8, 7), unit="short",
          description="Events and dead letters produced but not yet acknowledged by the broker."),
    Panel("last_commit_age", "Since last offset commit", "timeseries",
          (Target(f'time() - max({_sel("netsiam_last_commit_timestamp_seconds")} > 0)', "age"),),
          (8, 36, 8, 7), unit="s",
          description="Offsets are committed only after every produce they cover is acknowledged."),
    Panel("sources_evicted", "Sources evicted", "timeseries",
          (Target(f'sum({_rate("netsiam_sources_evicted_total")})', "evicted/s"),),
          (16, 36, 8, 7), unit="ops",
          description="Sources whose window state was dropped (idle or over detector.max_sources)."),
    # --- row 6: operators' feedback (netsiam learn) -----------------------------------------------
    Panel("learn_up", "Learn up", "stat",
          (Target(f"up{{{_L}}}", "{{instance}}"),),
          (0, 43, 4, 7), unit="none", mappings=_UPDOWN,
          description="Prometheus can scrape netsiam learn's /metrics (feedback topic -> served model)."),
    Panel("feedback_applied", "Feedback applied by action", "timeseries",
          (Target(f'sum by (action) ({_learn_increase("netsiam_feedback_applied_total")})', "{{action}}"),),
          (4, 43, 10, 7), unit="short",
          description="Feedback messages applied to the served model: a new class, more support for one, a "
                      "false alarm taught normal, or one already applied."),
    Panel("feedback_dead_letters", "Feedback dead letters by reason", "timeseries",
          (Target(f'sum by (reason) ({_learn_increase("netsiam_feedback_dead_letters_total")})', "{{reason}}"),),
          (14, 43, 10, 7), unit="short",
          description="Feedback messages netsiam learn could not apply, sent to netsiam.deadletter: not JSON, "
                      "not a feedback message (schema), or refused (the reason is in the dead letter)."),
)

# Template variables: name -> (query, label). DS_PROMETHEUS is the datasource variable. $source lists
# every source the detector tracks (one series each, at most detector.max_sources, present whether or
# not the source has a fault), not only the faulted ones.
VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("instance", "label_values(netsiam_records_consumed_total, instance)", "Detector"),
    ("source", "label_values(netsiam_source_last_record_timestamp_seconds, source)", "Source"),
)


@dataclass(frozen=True)
class Annotation:
    """A Grafana annotation query: a region from each series' first to last sample in the range."""

    name: str
    expr: str
    title: str            # Grafana's titleFormat ({{label}} placeholders)
    tags: tuple[str, ...]
    color: str
    text: str = ""        # Grafana's textFormat (same placeholders)


# A fault's region starts at its raised event and ends at its cleared one, on every time-series panel,
# with the raised event's evidence and id (for `netsiam feedback`) as its text: the daemon sets netsiam_fault_evidence_info (beside
# netsiam_fault_active, for every raised fault) on raise and removes the series on clear.
ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation("Faults (raised → cleared)",
               f'max by (source, fault, evidence, event_id) ({_sel("netsiam_fault_evidence_info", _SRC)}) == 1',
               "{{fault}} on {{source}}", ("source", "fault"), "red", text="{{evidence}} (event {{event_id}})"),
)
