"""The Grafana dashboard JSON (``deploy/grafana/dashboards/netsiam.json``) built from the panel list.

Regenerate the shipped file with ``python -m netsiam.dashboard grafana -o
deploy/grafana/dashboards/netsiam.json``; a test fails when the file and this module disagree.
"""

from __future__ import annotations

import json
from typing import Any

from .panels import ANNOTATIONS, DASHBOARD_UID, PANELS, VARIABLES, Panel

__all__ = ["grafana_dashboard", "grafana_json"]

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


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
            "textMode": "name" if p.shows == "legend" else "auto",
            "showPercentChange": False, "wideLayout": True,
        }
    if p.kind == "state-timeline":
        return {"showValue": "never", "mergeValues": True, "rowHeight": 0.8, "alignValue": "left",
                "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"},
                "tooltip": {"mode": "single", "sort": "none"}}
    return {"legend": {"showLegend": True, "displayMode": "list", "placement": "bottom", "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"}}


def _annotations() -> list[dict[str, Any]]:
    builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
               "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}
    return [builtin, *({
        "name": a.name, "datasource": dict(DS), "enable": True, "hide": False, "iconColor": a.color,
        "expr": a.expr, "step": "5s", "titleFormat": a.title, "tagKeys": ",".join(a.tags), "textFormat": a.text,
        "useValueForTime": False,
    } for a in ANNOTATIONS)]


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
        "annotations": {"list": _annotations()},
        "templating": {"list": templating},
        "panels": panels,
    }


def grafana_json() -> str:
    return json.dumps(grafana_dashboard(), indent=2, ensure_ascii=False) + "\n"
