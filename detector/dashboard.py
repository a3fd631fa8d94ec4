"""The netsiam dashboard: one panel list, rendered two ways.

* :func:`grafana_dashboard` turns :data:`PANELS` into the Grafana dashboard JSON shipped as
  ``deploy/grafana/dashboards/netsiam.json`` (regenerate it with
  ``python -m netsiam.detector.dashboard grafana -o deploy/grafana/dashboards/netsiam.json``;
  a test fails when the file and this module disagree).
* :func:`render_dashboard` runs the same queries against a Prometheus HTTP API
  (``/api/v1/query_range``) and draws one PNG with matplotlib, laid out like the Grafana
  dashboard: ``netsiam plot dashboard --prometheus URL -o dashboard.png``.

Every query uses only metrics defined in ``detector/metrics.py`` (plus Prometheus' own ``up``).
The Grafana variables in the expressions (``$source``, ``$instance``, ``$__rate_interval``,
``$__range``) are expanded by :func:`expand` for the PNG.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from netsiam.errors import NetsiamError

__all__ = [
    "DASHBOARD_UID",
    "DETECTOR_JOB",
    "PANELS",
    "Panel",
    "PanelData",
    "Series",
    "Target",
    "cli_plot_dashboard",
    "expand",
    "fetch_panels",
    "grafana_dashboard",
    "render_dashboard",
]

DASHBOARD_UID = "netsiam"
DETECTOR_JOB = "netsiam-detector"  # job_name in deploy/prometheus/prometheus.yml
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

PanelKind = Literal["timeseries", "stat", "state-timeline"]


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    kind: PanelKind
    targets: tuple[Target, ...]
    grid: tuple[int, int, int, int]  # x, y, w, h on Grafana's 24-column grid
    unit: str = "short"  # Grafana unit id: short, s, ops, percentunit, none
    description: str = ""
    mappings: tuple[tuple[float, str, str], ...] = ()  # value -> (text, color)
    red_above: float | None = None  # stat: background turns red above this value


_I = 'instance=~"$instance"'
_SRC = 'source=~"$source"'


def _sel(metric: str, *matchers: str) -> str:
    return metric + "{" + ", ".join((*matchers, _I)) + "}"


def _rate(metric: str, *matchers: str) -> str:
    return f"rate({_sel(metric, *matchers)}[$__rate_interval])"


def _quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (le) ({_rate(histogram + '_bucket')}))"


_UPDOWN = ((0.0, "DOWN", "red"), (1.0, "UP", "green"))

PANELS: tuple[Panel, ...] = (
    # --- row 0: stats ------------------------------------------------------------------------
    Panel("Active faults", "stat",
          (Target(f'count({_sel("netsiam_fault_active", _SRC)}) or vector(0)'),),
          (0, 0, 3, 4), unit="none", red_above=0.5,
          description="Sources with a raised fault now (netsiam_fault_active)."),
    Panel("Detector up", "stat",
          (Target(f'up{{job="{DETECTOR_JOB}", {_I}}}', "{{instance}}"),),
          (3, 0, 3, 4), unit="none", mappings=_UPDOWN,
          description="Prometheus can scrape the detector's /metrics."),
    Panel("Broker up", "stat",
          (Target(_sel("netsiam_broker_up"), "{{instance}}"),),
          (6, 0, 3, 4), unit="none", mappings=_UPDOWN,
          description="The detector reaches the broker and has partitions assigned."),
    Panel("Model version", "stat",
          (Target(_sel("netsiam_model_info") + " == 1", "{{version}}"),),
          (9, 0, 3, 4), unit="none",
          description="The model artifact serving now (netsiam_model_info)."),
    Panel("Model age", "stat",
          (Target(f'time() - max({_sel("netsiam_model_loaded_timestamp_seconds")} > 0)'),),
          (12, 0, 3, 4), unit="s",
          description="Time since the serving model was loaded."),
    Panel("Model reloads (range)", "stat",
          (Target(f'sum(increase({_sel("netsiam_model_reloads_total")}[$__range]))', "reloads"),),
          (15, 0, 3, 4), unit="none",
          description="Successful model reloads in the dashboard's time range."),
    Panel("Reload failures (range)", "stat",
          (Target(f'sum(increase({_sel("netsiam_model_reload_failures_total")}[$__range]))', "failures"),),
          (18, 0, 3, 4), unit="none", red_above=0.5,
          description="Model reloads refused in the time range (the old model kept serving)."),
    Panel("Sources tracked", "stat",
          (Target(f'sum({_sel("netsiam_sources_tracked")})'),),
          (21, 0, 3, 4), unit="none",
          description="Sources with window state held in memory."),
    # --- row 1: fault timeline -----------------------------------------------------------------
    Panel("Fault timeline", "state-timeline",
          (Target(f'max by (source, fault) ({_sel("netsiam_fault_active", _SRC)})',
                  "{{source}} {{fault}}"),),
          (0, 4, 24, 8), unit="none", mappings=((1.0, "active", "red"),),
          description="Per source and fault: when the fault was raised (bar) until it cleared."),
    # --- row 2: classification and throughput -------------------------------------------------
    Panel("Classifications by class", "timeseries",
          (Target(f'sum by (class) ({_rate("netsiam_classifications_total")})', "{{class}}"),),
          (0, 12, 12, 8), unit="ops",
          description="Windows classified per second, by class (unknown = beyond every threshold)."),
    Panel("Throughput", "timeseries",
          (Target(f'sum({_rate("netsiam_records_consumed_total")})', "records consumed"),
           Target(f'sum({_rate("netsiam_records_valid_total")})', "records valid"),
           Target(f'sum({_rate("netsiam_windows_embedded_total")})', "windows embedded")),
          (12, 12, 12, 8), unit="ops",
          description="Records read and accepted, and windows embedded, per second."),
    # --- row 3: latency --------------------------------------------------------------------
    Panel("Embed batch latency", "timeseries",
          (Target(_quantile(0.5, "netsiam_embed_batch_seconds"), "p50"),
           Target(_quantile(0.99, "netsiam_embed_batch_seconds"), "p99")),
          (0, 20, 8, 8), unit="s",
          description="Time to embed and classify one micro-batch."),
    Panel("Embed batch size", "timeseries",
          (Target(_quantile(0.5, "netsiam_embed_batch_size"), "p50"),
           Target(_quantile(0.99, "netsiam_embed_batch_size"), "p99")),
          (8, 20, 8, 8), unit="none",
          description="Windows per micro-batch."),
    Panel("Record to event latency", "timeseries",
          (Target(_quantile(0.5, "netsiam_record_to_event_seconds"), "p50"),
           Target(_quantile(0.99, "netsiam_record_to_event_seconds"), "p99")),
          (16, 20, 8, 8), unit="s",
          description="Triggering record appended to the broker -> fault event acknowledged "
                      "(alert above 250 ms p99)."),
    # --- row 4: input health -----------------------------------------------------------------
    Panel("Consumer lag by partition", "timeseries",
          (Target(f'sum by (topic, partition) ({_sel("netsiam_consumer_lag")})', "{{topic}}/{{partition}}"),),
          (0, 28, 8, 8), unit="short",
          description="Records behind the end of each assigned partition."),
    Panel("Dead letters by reason", "timeseries",
          (Target(f'sum by (reason) ({_rate("netsiam_records_invalid_total")})', "{{reason}}"),),
          (8, 28, 8, 8), unit="ops",
          description="Records sent to netsiam.deadletter per second, by reason."),
    Panel("Fault events", "timeseries",
          (Target(f'sum by (fault, state) (increase({_sel("netsiam_fault_events_total")}[$__rate_interval]))',
                  "{{fault}} {{state}}"),),
          (16, 28, 8, 8), unit="short",
          description="Fault events published and acknowledged, by fault and state."),
    # --- row 5: output health ----------------------------------------------------------------
    Panel("Events awaiting ack", "timeseries",
          (Target(f'sum({_sel("netsiam_events_pending")})', "pending"),),
          (0, 36, 8, 7), unit="short",
          description="Events and dead letters produced but not yet acknowledged by the broker."),
    Panel("Since last offset commit", "timeseries",
          (Target(f'time() - max({_sel("netsiam_last_commit_timestamp_seconds")} > 0)', "age"),),
          (8, 36, 8, 7), unit="s",
          description="Offsets are committed only after every produce they cover is acknowledged."),
    Panel("Sources evicted", "timeseries",
          (Target(f'sum({_rate("netsiam_sources_evicted_total")})', "evicted/s"),),
          (16, 36, 8, 7), unit="ops",
          description="Sources whose window state was dropped (idle or over detector.max_sources)."),
)

# Template variables: name -> (query, label). DS_PROMETHEUS is the datasource variable.
VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("instance", "label_values(netsiam_records_consumed_total, instance)", "Detector"),
    ("source", "label_values(netsiam_fault_active, source)", "Source"),
)


# ---------------------------------------------------------------------------------------------
# Grafana JSON
# ---------------------------------------------------------------------------------------------


def _field_config(p: Panel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if p.red_above is not None:
        steps.append({"color": "red", "value": p.red_above})
    defaults: dict[str, Any] = {
        "unit": p.unit,
        "color": {"mode": "thresholds" if p.kind != "timeseries" else "palette-classic"},
        "thresholds": {"mode": "absolute", "steps": steps},
        "mappings": [],
    }
    if p.mappings:
        defaults["mappings"] = [{
            "type": "value",
            "options": {_num(v): {"text": text, "color": color, "index": i}
                        for i, (v, text, color) in enumerate(p.mappings)},
        }]
    if p.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                              "showPoints": "never", "spanNulls": False}
        defaults["min"] = 0
    elif p.kind == "state-timeline":
        defaults["custom"] = {"fillOpacity": 80, "lineWidth": 0}
    return {"defaults": defaults, "overrides": []}


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _options(p: Panel) -> dict[str, Any]:
    if p.kind == "stat":
        return {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background" if (p.mappings or p.red_above is not None) else "value",
            "graphMode": "none", "justifyMode": "auto", "orientation": "auto",
            "textMode": "name" if p.title == "Model version" else "auto",
            "showPercentChange": False, "wideLayout": True,
        }
    if p.kind == "state-timeline":
        return {"showValue": "never", "mergeValues": True, "rowHeight": 0.8, "alignValue": "left",
                "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"},
                "tooltip": {"mode": "single", "sort": "none"}}
    return {"legend": {"showLegend": True, "displayMode": "list", "placement": "bottom", "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"}}


def grafana_dashboard() -> dict[str, Any]:
    """The Grafana (10/11, schemaVersion 39) dashboard model for :data:`PANELS`."""
    panels: list[dict[str, Any]] = []
    for i, p in enumerate(PANELS, start=1):
        x, y, w, h = p.grid
        panels.append({
            "id": i,
            "type": p.kind,
            "title": p.title,
            "description": p.description,
            "datasource": dict(DS),
            "gridPos": {"x": x, "y": y, "w": w, "h": h},
            "fieldConfig": _field_config(p),
            "options": _options(p),
            "targets": [
                {"refId": chr(ord("A") + j), "datasource": dict(DS), "expr": t.expr,
                 "legendFormat": t.legend or "__auto", "range": True, "instant": False,
                 "editorMode": "code"}
                for j, t in enumerate(p.targets)
            ],
        })
    templating: list[dict[str, Any]] = [{
        "name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "query": "prometheus",
        "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": [], "includeAll": False,
        "multi": False,
    }]
    for name, query, label in VARIABLES:
        templating.append({
            "name": name, "label": label, "type": "query", "datasource": dict(DS),
            "definition": query,
            "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2, "sort": 1, "regex": "", "hide": 0, "options": [],
            "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        })
    return {
        "uid": DASHBOARD_UID,
        "title": "netsiam detector",
        "description": "Fault detection on signalling telemetry: faults per source, classification, "
                       "throughput, latency, lag, dead letters, model and broker health.",
        "tags": ["netsiam"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "links": [],
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "templating": {"list": templating},
        "panels": panels,
    }


def grafana_json() -> str:
    return json.dumps(grafana_dashboard(), indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Prometheus queries
# ---------------------------------------------------------------------------------------------


def _dur(seconds: float) -> str:
    return f"{max(1, int(math.ceil(seconds)))}s"


def _regex(values: str | Sequence[str] | None) -> str:
    """A Grafana-style multi-value regex for a label matcher (None = all)."""
    if values is None:
        return ".*"
    vals = [values] if isinstance(values, str) else list(values)
    if not vals:
        return ".*"
    escaped = [re.escape(v).replace("\\", "\\\\").replace('"', '\\"') for v in vals]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def expand(expr: str, *, source: str | Sequence[str] | None = None,
           instance: str | Sequence[str] | None = None,
           rate_interval_s: float = 60.0, range_s: float = 3600.0) -> str:
    """Replace the Grafana variables in a panel expression with concrete values."""
    out = expr.replace("$__rate_interval", _dur(rate_interval_s)).replace("$__range", _dur(range_s))
    out = out.replace("$source", _regex(source)).replace("$instance", _regex(instance))
    if "$" in out:
        raise ValueError(f"unexpanded variable in {out!r}")
    return out


@dataclass(frozen=True)
class Series:
    labels: dict[str, str]
    times: list[float]
    values: list[float]

    def name(self, legend: str) -> str:
        if not legend:
            inner = ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items()) if k != "__name__")
            return self.labels.get("__name__", "") + ("{" + inner + "}" if inner else "")
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: self.labels.get(m.group(1), ""), legend)


@dataclass
class PanelData:
    panel: Panel
    series: list[tuple[Target, Series]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def has_data(self) -> bool:
        return any(any(not math.isnan(v) for v in s.values) for _, s in self.series)


def _get(base: str, path: str, params: Mapping[str, str] | None, timeout_s: float) -> Any:
    url = base.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - operator-given URL
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:  # Prometheus answers 400/422 with a JSON error body
        try:
            body = json.loads(e.read())
        except (ValueError, OSError):
            raise NetsiamError(f"Prometheus {base}: HTTP {e.code} for {path}") from None
    except urllib.error.URLError as e:
        raise NetsiamError(f"cannot reach Prometheus at {base}: {e.reason}") from None
    except (TimeoutError, ValueError, OSError) as e:
        raise NetsiamError(f"Prometheus {base}: {e}") from None
    if not isinstance(body, dict) or "status" not in body:
        raise NetsiamError(f"Prometheus {base}: unexpected answer for {path}")
    return body


_DUR_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_DUR_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def parse_duration(text: str) -> float:
    """Prometheus duration (``15s``, ``1m30s``, ``1h``) -> seconds."""
    parts = _DUR_RE.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _DUR_S[u] for n, u in parts)


def scrape_interval(prometheus_url: str, job: str = DETECTOR_JOB, timeout_s: float = 10.0) -> float:
    """The detector job's scrape interval from the server's loaded config (15 s if unknown)."""
    import yaml

    try:
        body = _get(prometheus_url, "/api/v1/status/config", None, timeout_s)
        cfg = yaml.safe_load(body["data"]["yaml"]) or {}
        interval = str((cfg.get("global") or {}).get("scrape_interval", "15s"))
        for sc in cfg.get("scrape_configs") or []:
            if sc.get("job_name") == job and sc.get("scrape_interval"):
                interval = str(sc["scrape_interval"])
        return parse_duration(interval)
    except (NetsiamError, KeyError, TypeError, ValueError, AttributeError, yaml.YAMLError):
        return 15.0


def fetch_panels(prometheus_url: str, *, source: str | Sequence[str] | None = None,
                 instance: str | Sequence[str] | None = None, range_s: float = 3600.0,
                 end: float | None = None, step_s: float | None = None,
                 scrape_interval_s: float | None = None, timeout_s: float = 10.0,
                 panels: Sequence[Panel] = PANELS) -> list[PanelData]:
    """Run every panel's queries over ``[end - range_s, end]`` with ``/api/v1/query_range``.

    Raises NetsiamError when Prometheus cannot be reached; a query Prometheus rejects is
    recorded in ``PanelData.errors`` and the other panels still load.
    """
    if range_s <= 0:
        raise NetsiamError("dashboard range must be > 0 seconds")
    end_t = time.time() if end is None else end
    start_t = end_t - range_s
    scrape = scrape_interval_s if scrape_interval_s is not None else scrape_interval(prometheus_url)
    step = step_s if step_s is not None else max(1.0, math.ceil(range_s / 240.0))
    # Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval)
    rate_interval = max(step + scrape, 4.0 * scrape)
    _get(prometheus_url, "/api/v1/status/buildinfo", None, timeout_s)  # fail fast if unreachable
    out: list[PanelData] = []
    for panel in panels:
        pd = PanelData(panel)
        for target in panel.targets:
            expr = expand(target.expr, source=source, instance=instance,
                          rate_interval_s=rate_interval, range_s=range_s)
            body = _get(prometheus_url, "/api/v1/query_range",
                        {"query": expr, "start": f"{start_t:.3f}", "end": f"{end_t:.3f}",
                         "step": f"{step:g}"}, timeout_s)
            if body.get("status") != "success":
                pd.errors.append(f"{target.legend or 'query'}: {body.get('error', 'query failed')}")
                continue
            for item in body["data"]["result"]:
                pairs = item.get("values", [])
                pd.series.append((target, Series(
                    labels=dict(item.get("metric", {})),
                    times=[float(t) for t, _ in pairs],
                    values=[_float(v) for _, v in pairs],
                )))
        out.append(pd)
    return out


def _float(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return math.nan


# ---------------------------------------------------------------------------------------------
# PNG
# ---------------------------------------------------------------------------------------------


def fmt_value(v: float, unit: str) -> str:
    if math.isnan(v):
        return "-"
    if math.isinf(v):
        return "inf"
    if unit == "s":
        a = abs(v)
        if a < 1e-3:
            return f"{v * 1e6:.0f} µs"
        if a < 1:
            return f"{v * 1e3:.3g} ms"
        if a < 120:
            return f"{v:.3g} s"
        if a < 7200:
            return f"{v / 60:.3g} min"
        if a < 172800:
            return f"{v / 3600:.3g} h"
        return f"{v / 86400:.3g} d"
    if unit == "percentunit":
        return f"{v * 100:.3g} %"
    suffix = "/s" if unit == "ops" else ""
    a = abs(v)
    for div, sym in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{sym}{suffix}"
    if float(v).is_integer():
        return f"{int(v)}{suffix}"
    return f"{v:.3g}{suffix}"


_COLORS = {"red": "#d44a3a", "green": "#37872d", "orange": "#ff9830", "grey": "#8e8e8e"}


def _last(values: Sequence[float]) -> float:
    for v in reversed(values):
        if not math.isnan(v):
            return v
    return math.nan


def _draw_stat(ax: Any, pd: PanelData) -> None:
    ax.set_axis_off()
    rows: list[tuple[str, str, str]] = []  # (label, text, color)
    for target, s in pd.series:
        v = _last(s.values)
        text = fmt_value(v, pd.panel.unit)
        color = _COLORS["green"]
        for mv, mtext, mcolor in pd.panel.mappings:
            if not math.isnan(v) and v == mv:
                text, color = mtext, _COLORS.get(mcolor, mcolor)
        if pd.panel.red_above is not None and not math.isnan(v) and v > pd.panel.red_above:
            color = _COLORS["red"]
        label = s.name(target.legend)
        if pd.panel.title == "Model version":  # the value is the label (textMode "name")
            text, label = label.replace("+", "\n+"), ""   # version + prototypes hash on two lines
        rows.append((label, text, color))
    rows = rows[:4]
    n = len(rows)
    fig = ax.get_figure()
    width_pt = ax.get_position().width * fig.get_figwidth() * 72 if fig is not None else 200.0
    for i, (label, text, color) in enumerate(rows):
        y = 1.0 - (i + 0.5) / n
        longest = max(len(line) for line in text.split("\n")) or 1
        # bold digits are ~0.65 em wide: shrink a long value to its own panel, never into the next
        size = min(16 if n == 1 else 11, 0.9 * width_pt / (0.65 * longest))
        ax.text(0.5, y + (0.06 if label and n == 1 else 0), text, ha="center", va="center",
                fontsize=size, fontweight="bold", color=color, transform=ax.transAxes)
        if label and n > 1:
            ax.text(0.02, y, label, ha="left", va="center", fontsize=6, color="#555555",
                    transform=ax.transAxes)
        elif label:
            ax.text(0.5, y - 0.28, label, ha="center", va="center", fontsize=7, color="#555555",
                    transform=ax.transAxes)


def _draw_timeline(ax: Any, pd: PanelData, start: float, end: float, step: float) -> None:
    rows = sorted(((s.name(t.legend), s) for t, s in pd.series), key=lambda r: r[0])
    palette = ["#d44a3a", "#ff9830", "#8f3bb8", "#1f60c4", "#c4162a", "#fade2a"]
    faults = sorted({s.labels.get("fault", "") for _, s in rows})
    for i, (_name, s) in enumerate(rows):
        spans: list[tuple[float, float]] = []
        run_start: float | None = None
        prev = -math.inf
        for t, v in zip(s.times, s.values, strict=True):
            on = not math.isnan(v) and v > 0
            if on and (run_start is None or t - prev > 1.5 * step):
                if run_start is not None:
                    spans.append((run_start, prev + step - run_start))
                run_start = t
            elif not on and run_start is not None:
                spans.append((run_start, prev + step - run_start))
                run_start = None
            if on:
                prev = t
        if run_start is not None:
            spans.append((run_start, prev + step - run_start))
        color = palette[faults.index(s.labels.get("fault", "")) % len(palette)]
        ax.broken_barh([(_dt_num(a), w / 86400.0) for a, w in spans], (i - 0.4, 0.8), color=color)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([name for name, _ in rows], fontsize=6)
    ax.set_ylim(-0.6, max(len(rows), 1) - 0.4)
    ax.set_xlim(_dt_num(start), _dt_num(end))
    ax.invert_yaxis()


def _dt_num(t: float) -> float:
    import matplotlib.dates as mdates

    return float(mdates.date2num(datetime.fromtimestamp(t, tz=UTC)))


def _draw_timeseries(ax: Any, pd: PanelData, start: float, end: float) -> None:
    import matplotlib.ticker as mticker

    for target, s in pd.series[:12]:
        ax.plot([_dt_num(t) for t in s.times], s.values, linewidth=1.0, label=s.name(target.legend))
    ax.set_xlim(_dt_num(start), _dt_num(end))
    finite = [v for _, s in pd.series for v in s.values if math.isfinite(v)]
    if finite and min(finite) >= 0:
        ax.set_ylim(bottom=0, top=max(max(finite) * 1.1, 1e-9))
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _pos: fmt_value(v, pd.panel.unit)))
    ax.tick_params(axis="y", labelsize=6)
    if pd.series:
        ax.legend(fontsize=5.5, loc="upper left", frameon=False, ncol=2 if len(pd.series) > 4 else 1)
    ax.grid(True, alpha=0.3, linewidth=0.5)


def draw_dashboard(data: Sequence[PanelData], out_png: str | Path, *, start: float, end: float,
                   step: float, subtitle: str = "", dpi: int = 110) -> Path:
    """Draw fetched panels into one PNG, laid out on the Grafana grid (24 columns)."""
    import matplotlib.dates as mdates
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max((pd.panel.grid[1] + pd.panel.grid[3] for pd in data), default=1)
    width_in, unit_in, header_in, margin_in = 18.0, 0.3, 0.55, 0.15
    height_in = header_in + rows * unit_in + margin_in
    col_in = (width_in - 2 * margin_in) / 24.0
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    fig.text(margin_in / width_in, 1 - 0.3 / height_in,
             "netsiam detector" + (f"  —  {subtitle}" if subtitle else ""), fontsize=12, va="center")
    for pd in data:
        x, y, w, h = pd.panel.grid
        plotted = pd.panel.kind != "stat"
        # room inside the grid cell: title above, tick labels left and below
        pad_l = (1.25 if pd.panel.kind == "state-timeline" else 0.6) if plotted else 0.05
        pad_t, pad_b, pad_r = 0.25, (0.3 if plotted else 0.05), 0.15
        left = margin_in + x * col_in + pad_l
        top = header_in + y * unit_in + pad_t
        ax = fig.add_axes((left / width_in, 1 - (top + h * unit_in - pad_t - pad_b) / height_in,
                           (w * col_in - pad_l - pad_r) / width_in, (h * unit_in - pad_t - pad_b) / height_in))
        ax.set_title(pd.panel.title, fontsize=8, loc="left")
        if pd.panel.kind == "stat":
            _draw_stat(ax, pd)
        else:
            if pd.panel.kind == "state-timeline":
                _draw_timeline(ax, pd, start, end, step)
            else:
                _draw_timeseries(ax, pd, start, end)
            locator = mdates.AutoDateLocator(minticks=3, maxticks=7, tz=UTC)
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC, show_offset=False))
            ax.tick_params(axis="x", labelsize=6)
        if pd.errors:
            ax.text(0.5, 0.5, "query error:\n" + "\n".join(e[:80] for e in pd.errors), ha="center",
                    va="center", fontsize=6, color=_COLORS["red"], transform=ax.transAxes, wrap=True)
        elif not pd.has_data:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=9, color=_COLORS["grey"],
                    transform=ax.transAxes)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def render_dashboard(prometheus_url: str, out_png: str | Path, source: str | Sequence[str] | None = None,
                     range_s: float = 3600.0, *, instance: str | Sequence[str] | None = None,
                     end: float | None = None, step_s: float | None = None,
                     scrape_interval_s: float | None = None, timeout_s: float = 10.0) -> Path:
    """Query ``prometheus_url`` for every dashboard panel over the last ``range_s`` seconds (up
    to ``end``, default now) and write one PNG to ``out_png``; returns its path.

    ``source``/``instance`` filter like the Grafana variables (None = all). Raises NetsiamError
    when Prometheus cannot be reached; a panel whose query fails shows the error instead.
    """
    end_t = time.time() if end is None else end
    step = step_s if step_s is not None else max(1.0, math.ceil(range_s / 240.0))
    data = fetch_panels(prometheus_url, source=source, instance=instance, range_s=range_s, end=end_t,
                        step_s=step, scrape_interval_s=scrape_interval_s, timeout_s=timeout_s)
    when = datetime.fromtimestamp(end_t, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    sub = f"last {_human_range(range_s)} to {when}"
    if source is not None:
        sub += f"  —  source {source if isinstance(source, str) else ', '.join(source)}"
    if instance is not None:
        sub += f"  —  instance {instance if isinstance(instance, str) else ', '.join(instance)}"
    sub += f"  —  {prometheus_url}"
    return draw_dashboard(data, out_png, start=end_t - range_s, end=end_t, step=step, subtitle=sub)


def _human_range(s: float) -> str:
    if s % 3600 == 0:
        return f"{int(s // 3600)}h"
    if s % 60 == 0:
        return f"{int(s // 60)}m"
    return f"{s:g}s"


def cli_plot_dashboard(args: argparse.Namespace, cfg: object = None) -> int:
    """``netsiam plot dashboard --prometheus URL -o out.png`` (optional ``--source``, ``--range``)."""
    rng = getattr(args, "range", None)
    range_s = parse_duration(rng) if isinstance(rng, str) else float(rng or 3600.0)
    out = render_dashboard(args.prometheus, args.output, source=getattr(args, "source", None),
                           range_s=range_s, instance=getattr(args, "instance", None))
    print(out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netsiam.detector.dashboard")
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grafana", help="write the Grafana dashboard JSON")
    g.add_argument("-o", "--output", default="-")
    r = sub.add_parser("png", help="render the dashboard from a Prometheus to a PNG")
    r.add_argument("--prometheus", default="http://127.0.0.1:9090")
    r.add_argument("--source", default=None)
    r.add_argument("--instance", default=None)
    r.add_argument("--range", default="1h")
    r.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "grafana":
        text = grafana_json()
        if args.output == "-":
            sys.stdout.write(text)
        else:
            Path(args.output).write_text(text)
        return 0
    try:
        return cli_plot_dashboard(args)
    except (NetsiamError, ValueError) as e:
        print(f"dashboard: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
