"""A small Prometheus HTTP API client: the panels' queries over a time range, for the picture.

:func:`fetch_panels` expands each panel's Grafana variables (:func:`expand`) and runs the queries with
``/api/v1/query_range``; a query Prometheus rejects is kept as that panel's error.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from netsiam.errors import NetsiamError, ServiceError

from .panels import DETECTOR_JOB, PANELS, Panel, Target

__all__ = ["PanelData", "Series", "expand", "fetch_panels", "parse_duration", "scrape_interval"]


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
            raise ServiceError(f"Prometheus {base}: HTTP {e.code} for {path}") from None
    except urllib.error.URLError as e:
        raise ServiceError(f"cannot reach Prometheus at {base}: {e.reason}") from None
    except (TimeoutError, ValueError, OSError) as e:
        raise ServiceError(f"Prometheus {base}: {e}") from None
    if not isinstance(body, dict) or "status" not in body:
        raise ServiceError(f"Prometheus {base}: unexpected answer for {path}")
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

    Raises ServiceError (a NetsiamError) when Prometheus cannot be reached; a query Prometheus rejects is
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
