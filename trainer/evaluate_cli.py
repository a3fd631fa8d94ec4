"""``netsiam evaluate``: artifact + trace + labels -> report (JSON, a summary table, plots). The metrics:
:mod:`netsiam.trainer.evaluate`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from netsiam.config import Config
from netsiam.errors import UsageError
from netsiam.serving import load_artifact
from netsiam.traceio import LabelInterval, atomic_write_bytes, read_labels, require_inputs
from netsiam.trainer.dataset import LabelledWindows, refuse_verdicts
from netsiam.trainer.evaluate import config_for_artifact, evaluate_detailed, load_labelled

__all__ = ["cli_evaluate", "format_summary", "per_class_lines"]


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


_BASELINE_TITLES = {"encoder": "encoder", "expert_rule": "expert rule", "raw_nearest_prototype": "raw prototype",
                    "zscore_rule": "z-score rule"}


def _share(det: dict[str, Any], key: str) -> str:
    return f"{det[key]}/{det['episodes']}"


def _pair(det: dict[str, Any], key: str) -> str:
    lo, hi = det[f"median_{key}"], det[f"max_{key}"]
    return "-" if lo is None else f"{lo:.1f} / {hi:.1f}"


def per_class_lines(per_class: dict[str, dict[str, Any]], conf: dict[str, Any] | None) -> list[str]:
    """The summary's rows of precision, recall, f1, support: a ratio the data leave undefined (no window of
    the class, or none called it; f1 with no window of the class) reads ``-`` here; the JSON keeps 0 (sklearn's
    ``zero_division=0``)."""
    conf = conf or {"labels": [], "matrix": []}
    called = dict(zip(conf["labels"], np.asarray(conf["matrix"], dtype=np.int64).reshape(len(conf["labels"]), -1)
                      .sum(axis=0).tolist(), strict=True))
    out = []
    for c, m in per_class.items():
        p_ok, r_ok = called.get(c, 1) > 0, m["support"] > 0
        cells = [f"{m[k]:>10.3f}" if ok else f"{'-':>10}"
                 for k, ok in (("precision", p_ok), ("recall", r_ok), ("f1", r_ok))]
        out.append(f"{c:<18}{''.join(cells)}{m['support']:>10d}")
    return out


def format_summary(report: dict[str, Any]) -> str:
    """A short human-readable table of the report."""
    det = report["detection"]
    lines = [f"model {report['model_version']}: {report['n_windows']} windows "
             f"({report['straddling']['n_windows']} straddling a label change, scored apart), "
             f"classes {', '.join(report['classes'])}",
             f"pair AUC {_f(report['auc'])}   window accuracy {_f(report['window_accuracy'])}   "
             f"n-way accuracy {_f(report['n_way_accuracy'])}   binary accuracy {_f(report['binary_accuracy'])}",
             "",
             f"{'class':<18}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
             *per_class_lines(report["per_class"], report.get("confusion"))]
    lines += ["",
              f"episodes detected {det['detected']}/{det['episodes']} (right label {det['label_correct']}), "
              f"median delay {_f(det['median_delay_s'], '{:.1f}')} s, false alarms "
              f"{_f(report['false_alarms_per_hour'], '{:.2f}')}/h ({det['false_alarms']} in "
              f"{det['normal_hours']:.2f} h normal, alarm up {_f(det['normal_time_in_alarm'], '{:.1%}')} of it)"]
    for lab, nv in report["novelty"].items():
        lines.append(f"novel '{lab}': {_f(nv['unknown_rate'])} of {nv['n_windows']} windows unknown")
    b = report["baselines"]
    cols = [k for k in _BASELINE_TITLES if k in b and "error" not in b[k]]
    lines += ["", f"beside the baselines ({b['support']}):",
              f"{'':<22}" + "".join(f"{_BASELINE_TITLES[c]:>15}" for c in cols)]
    rows = [("window accuracy", lambda d: d.get("window_accuracy"), "{:.3f}"),
            ("first label right", lambda d: _share(d["detection"], "first_label_correct"), "{}"),
            ("raised once", lambda d: _share(d["detection"], "raised_once"), "{}"),
            ("median / max delay s", lambda d: _pair(d["detection"], "delay_s"), "{}"),
            ("median / max clear s", lambda d: _pair(d["detection"], "clear_s"), "{}"),
            ("false raises / h", lambda d: d["detection"]["false_raises_per_hour"], "{:.2f}")]
    for title, get, fmt in rows:
        lines.append(f"{title:<22}" + "".join(f"{_f(get(b[c]), fmt):>15}" for c in cols))
    for c in _BASELINE_TITLES:
        if c in b and "error" in b[c]:
            lines.append(f"{_BASELINE_TITLES[c]}: {b[c]['error']}")
    if "error" in b:
        lines.append(f"baselines: {b['error']}")
    return "\n".join(lines)


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _warn_unmatched(lw: LabelledWindows, intervals: Sequence[LabelInterval], novel: Sequence[str]) -> None:
    """Say what a mismatched pair of files looks like before it reads as a report: labels whose sources
    the trace does not have (every window then normal), a --novel class no label names."""
    named = {iv.source for iv in intervals}
    have = {str(s) for s in np.unique(lw.sources)}
    if named and named.isdisjoint(have):
        print(f"warning: the labels name none of the trace's sources (labels: {', '.join(sorted(named)[:5])}; "
              f"trace: {', '.join(sorted(have)[:5])}): every window is scored as normal", file=sys.stderr)
    labelled = {iv.label for iv in intervals}
    for cls in novel:
        if cls not in labelled:
            print(f"warning: --novel {cls}: no label interval names it", file=sys.stderr)


def cli_evaluate(args: argparse.Namespace, cfg: Config) -> int:
    # check inputs before loading the model: a typo fails in a moment, not after importing Keras
    require_inputs(args.data, args.labels)
    if args.plots and Path(args.plots).exists() and not Path(args.plots).is_dir():
        raise UsageError(f"--plots {args.plots}: a file, not a folder to write the plots into")
    refuse_verdicts(iv.label for p in args.labels for iv in read_labels(p))   # before the slow model load
    artifact = load_artifact(args.model)
    cfg = config_for_artifact(cfg, artifact, explicit=getattr(args, "config", None) is not None)
    lw, intervals = load_labelled(args.data, args.labels, cfg)
    _warn_unmatched(lw, intervals, args.novel)
    ev = evaluate_detailed(artifact, lw, cfg, novel_labels=args.novel, intervals=intervals)
    if args.json_out:
        atomic_write_bytes(args.json_out, orjson.dumps(_json_ready(ev.report), option=orjson.OPT_INDENT_2))
    if args.plots:
        from netsiam.trainer.plots import write_plots  # matplotlib only when asked for

        written = write_plots(ev, Path(args.plots))
        ev.extra["plots"] = [str(p) for p in written]
    print(format_summary(ev.report))
    if args.plots:
        print(f"plots: {len(ev.extra['plots'])} files in {args.plots}")
    sys.stdout.flush()
    return 0
