"""The dashboard as one PNG (matplotlib), laid out like the Grafana dashboard, from a Prometheus.

``netsiam plot dashboard --prometheus URL -o dashboard.png`` runs the same queries as the Grafana
panels (:func:`render_dashboard`) and draws stats, the fault timeline and time series on the same
24-column grid.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from netsiam.errors import UsageError

from .prometheus import PanelData, fetch_panels, parse_duration

__all__ = ["DEFAULT_PROMETHEUS", "cli_plot_dashboard", "draw_dashboard", "fmt_value", "render_dashboard"]


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


DEFAULT_PROMETHEUS = "http://127.0.0.1:9090"   # `plot dashboard` without --prometheus
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
        if pd.panel.shows == "legend":  # the value is the legend (Grafana's textMode "name")
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
    try:
        range_s = parse_duration(rng) if isinstance(rng, str) else float(rng or 3600.0)
    except ValueError as e:
        raise UsageError(f"--range: {e} (e.g. 15m, 1h, 1h30m)") from None
    out = render_dashboard(args.prometheus or DEFAULT_PROMETHEUS, args.output, source=getattr(args, "source", None),
                           range_s=range_s, instance=getattr(args, "instance", None))
    print(out)
    return 0
