"""``netsiam evaluate``: artifact + trace + labels -> report (JSON, a summary table, plots).

Metrics (windows *straddling* a label change are left out of all window metrics and reported
apart, since their one label is half wrong by construction):

* ``window_accuracy`` -- predicted class (thresholds applied) == open-set truth, where the truth
  of a window whose label has no prototype is ``unknown`` (so ``unknown`` is wrong for a known
  label and right for a novel one).
* ``n_way_accuracy`` -- nearest prototype ignoring thresholds == label, over windows whose label
  has a prototype.
* ``auc`` -- pair ROC AUC: score = -distance between two windows' embeddings, positive = same
  label; all pairs up to ``MAX_PAIRS``, else that many random pairs (fixed seed).
* ``per_class`` / ``confusion`` -- precision/recall/F1 per open-set class (zero when undefined,
  as scikit-learn's ``zero_division=0``); confusion rows = true label, columns = predicted.
* detection -- per source, the windows' classes go through :class:`netsiam.debounce.FaultTracker`
  in ``end_ts`` order, exactly as the daemon does. An event detects a labelled episode when its
  ``[started_at, end]`` overlaps the episode or it is raised within ``[start, end + grace]``
  (grace: ``GRACE_S`` = 10 s). A raised event detecting no episode is a false alarm;
  ``false_alarms_per_hour`` divides their count by the hours of normal-labelled stream (each
  window stands for ``stride`` intervals).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from netsiam.config import Config, DebounceConfig, PrototypeConfig
from netsiam.errors import NetsiamError, UsageError
from netsiam.schemas.classes import NORMAL, UNKNOWN
from netsiam.serving import Artifact, load_artifact
from netsiam.traceio import LabelInterval, atomic_write_bytes, read_labels
from netsiam.trainer.baselines import (
    ExpertRule,
    RawNearestPrototype,
    ZScoreRule,
    normalisation_stats,
    split_support,
)
from netsiam.trainer.dataset import LabelledWindows, build_windows, refuse_verdicts
from netsiam.trainer.detection import (
    GRACE_S,
    Detected,
    Episode,
    Event,
    alarm_share,
    debounce_givens,
    episodes_from_intervals,
    episodes_from_windows,
    score_detection,
)
from netsiam.trainer.scores import (
    accuracy,
    confusion,
    open_set_truth,
    pair_scores,
    per_class_metrics,
    roc_auc,
    roc_curve,
)

__all__ = ["Evaluation", "cli_evaluate", "config_for_artifact", "evaluate", "evaluate_detailed", "format_summary",
           "load_labelled"]

# --------------------------------------------------------------------------- the report


@dataclass
class Evaluation:
    """The JSON report plus the arrays behind it (for plots)."""

    report: dict[str, Any]
    windows: LabelledWindows
    emb: np.ndarray
    pred: np.ndarray
    nway: np.ndarray
    classes: list[str]
    prototype_points: list[np.ndarray]
    events: list[Event]
    episodes: list[Episode]
    roc: tuple[np.ndarray, np.ndarray]
    history: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _scores(pred: np.ndarray, nway: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The accuracy keys shared by the encoder and the baselines (non-straddling windows only)."""
    known = np.isin(labels, list(classes))
    return {
        "window_accuracy": accuracy(pred, open_set_truth(labels, classes)),
        "n_way_accuracy": accuracy(nway[known], labels[known]),
        # normal vs anything else (unknown included): the score an alarm threshold is judged by
        "binary_accuracy": accuracy(pred != NORMAL, labels != NORMAL),
        "n_windows": int(len(labels)),
    }


def _confusion(labels: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The confusion matrix over the model's classes, any other label or prediction, then ``unknown``."""
    others = sorted((set(labels.tolist()) | set(pred.tolist())) - set(classes) - {UNKNOWN})
    names = [*classes, *others, UNKNOWN]
    return {"labels": names, "matrix": confusion(labels, pred, names).tolist()}


def _per_class(labels: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Precision, recall, f1, support per class, and for ``unknown`` when the truth or a prediction holds it."""
    truth = open_set_truth(labels, classes)
    pc = [*classes, *([UNKNOWN] if np.any(truth == UNKNOWN) or np.any(pred == UNKNOWN) else [])]
    return per_class_metrics(truth, pred, pc)


@dataclass(frozen=True)
class _Judge:
    """What every detector is scored on: the windows, their episodes, the debounce and the clock."""

    lw: LabelledWindows
    episodes: list[Episode]
    debounce: DebounceConfig
    grace_s: float
    seconds_per_window: float
    in_range: np.ndarray | None = None   # (N,) every input's tail in its normal range (the debounce's release)
    held: list[frozenset[str]] | None = None   # (N,) the faults whose signature each window shows (its hold)
    marked: list[frozenset[str]] | None = None   # (N,) the faults whose mark each window shows

    def detect(self, pred: np.ndarray, classes: Sequence[str], mask: np.ndarray, nearest: np.ndarray,
               within: np.ndarray | None = None, added: np.ndarray | None = None,
               slow: np.ndarray | None = None) -> Detected:
        """The daemon's debounce over every window of ``mask``, judged on the episodes whose time those
        windows' ends reach (``nearest``, ``added``: what the debounce is given,
        :func:`~netsiam.serving.debounce_view`; ``slow``: read unknown for their slow answers)."""
        return score_detection(
            self.lw.sources[mask], self.lw.end_ts[mask], pred[mask], self.lw.labels[mask],
            _covered(self.episodes, self.lw.subset(mask), 0.0), self.debounce, self.grace_s, self.seconds_per_window,
            known=classes, nearest=nearest[mask], within=None if within is None else within[mask],
            in_range=None if self.in_range is None else self.in_range[mask],
            added=None if added is None else added[mask],
            held=None if self.held is None else [self.held[i] for i in np.flatnonzero(mask)],
            marked=None if self.marked is None else [self.marked[i] for i in np.flatnonzero(mask)],
            slow=None if slow is None else slow[mask])

    def score(self, pred: np.ndarray, nway: np.ndarray, classes: Sequence[str], mask: np.ndarray,
              within: np.ndarray | None = None, nearest: np.ndarray | None = None,
              added: np.ndarray | None = None, slow: np.ndarray | None = None,
              detected: Detected | None = None) -> dict[str, Any]:
        """Window scores on ``mask`` minus straddling windows, and :meth:`detect` (``nearest`` defaults
        to ``nway``; ``detected``: its result for this ``mask``, already at hand)."""
        ok = mask & ~self.lw.straddle
        if detected is None:
            detected = self.detect(pred, classes, mask, nway if nearest is None else nearest, within, added, slow)
        det, episodes = dict(detected[0]), [dict(e) for e in detected[1]]   # the top level keeps its own
        lab, p = self.lw.labels[ok], pred[ok]
        # the encoder's own figures, so every column of the report compares like with like
        return _scores(p, nway[ok], lab, classes) | {"per_class": _per_class(lab, p, classes),
                                                     "confusion": _confusion(lab, p, classes),
                                                     "false_alarms_per_hour": det["false_raises_per_hour"],
                                                     "detection": det, "episodes": episodes}


def _baselines(artifact: Artifact, judge: _Judge, pred: np.ndarray, nway: np.ndarray, within: np.ndarray,
               support: LabelledWindows | None, pcfg: PrototypeConfig, nearest: np.ndarray,
               added: np.ndarray | None, slow: np.ndarray,
               detected: Detected) -> dict[str, Any]:
    """The encoder and the no-learning baselines, scored on the same windows and episodes (``detected``:
    the encoder's :meth:`_Judge.detect` over every window, reused where every window is scored).

    The raw-prototype and z-score baselines are fitted on the artifact's own training windows (stored
    in its manifest by ``netsiam train``), on ``support`` when given, or else on the first half of each
    source's evaluated windows; in that last case every column is scored on the second half only.
    """
    lw = judge.lw
    classes = artifact.prototypes.classes
    mean, std = normalisation_stats(artifact.manifest, lw.x.shape[2])
    raw, zs = RawNearestPrototype(mean, std, pcfg), ZScoreRule()
    stored = artifact.manifest.get("baselines")
    scored = np.ones(len(lw), dtype=bool)
    out: dict[str, Any] = {}
    try:
        if support is not None:
            sup = support.subset(~support.straddle)
            how, n_sup = "caller-supplied support windows fit the baselines; all evaluation windows are scored", len(sup)
            fitted = {"raw_nearest_prototype": raw.fit(sup.x, sup.labels, classes),
                      "zscore_rule": zs.fit(sup.x, sup.labels, classes)}
        elif isinstance(stored, dict) and {"raw_nearest_prototype", "zscore_rule"} <= set(stored):
            how, n_sup = "fitted on the model's training windows (stored in its manifest); all windows are scored", None
            fitted = {"raw_nearest_prototype": raw.load_json(stored["raw_nearest_prototype"]),
                      "zscore_rule": zs.load_json(stored["zscore_rule"])}
        else:
            span = (lw.x.shape[1] - 1) * judge.seconds_per_window
            sup_mask, scored = split_support(lw.sources, lw.end_ts, span)
            sup = lw.subset(sup_mask & ~lw.straddle)
            how = ("per source: windows ending in the first half of its time span fit the baselines; windows "
                   "starting after that are scored (every column)")
            n_sup = len(sup)
            fitted = {"raw_nearest_prototype": raw.fit(sup.x, sup.labels, classes),
                      "zscore_rule": zs.fit(sup.x, sup.labels, classes)}
    except NetsiamError as e:
        fitted, how, n_sup = {}, f"no fitted baselines: {e}", 0
    out["support"], out["n_support"] = how, n_sup
    if not np.any(scored):
        return out | {"error": "no window left to score after the support split"}
    out["encoder"] = judge.score(pred, nway, classes, scored, within, nearest, added, slow,
                                 detected if scored.all() else None)
    rule = ExpertRule().predict(lw.raw)
    out["expert_rule"] = judge.score(rule, rule, list(ExpertRule.classes), scored) | {
        "rule": {"retrans_share": ExpertRule().retrans_share, "failed_share": ExpertRule().failed_share}}
    for name, model in fitted.items():
        bp, bn = model.predict(lw.x)
        missing = [c for c in classes if c not in model.classes]
        out[name] = judge.score(bp, bn, classes, scored) | {"classes_without_support": missing}
    return out


def evaluate_detailed(artifact: Artifact, lw: LabelledWindows, cfg: Config, novel_labels: Sequence[str] = (),
                      intervals: Sequence[LabelInterval] | None = None,
                      support: LabelledWindows | None = None) -> Evaluation:
    """Score ``artifact`` on ``lw``; see the module docstring for every metric.

    ``cfg`` supplies the window settings ``lw`` was built with and the debounce; ``intervals``
    (the label file) gives exact episode bounds, else episodes come from the windows' labels;
    ``support`` fits the baselines (default: a per-source time split of ``lw``).
    """
    if len(lw) == 0:
        raise NetsiamError("no windows to evaluate")
    try:
        emb = artifact.embed(lw.x)
    except ValueError as e:
        raise NetsiamError(f"windows do not fit the model: {e}") from None
    protos = artifact.prototypes
    classes = list(protos.classes)
    # (N,) each: what the daemon's debounce is given, the class read first (unknown where answered slowly)
    g = debounce_givens(artifact, lw.sources, lw.end_ts, lw.raw, lw.x, emb, cfg.detector.debounce, cfg.features)
    pred, nearest, added, within, slow = g.classes, g.nearest, g.added, g.within, g.slow
    nway = protos.nearest(g.dists)
    labels = np.asarray(lw.labels, dtype=object)
    ok = ~np.asarray(lw.straddle, dtype=bool)

    lab_ok, pred_ok = labels[ok], pred[ok]
    scores = _scores(pred_ok, nway[ok], lab_ok, classes)

    s, positive = pair_scores(emb[ok], lab_ok)
    auc = roc_auc(s, positive)
    roc = roc_curve(s, positive) if auc is not None else (np.zeros(0), np.zeros(0))

    w = cfg.window
    episodes = (episodes_from_intervals(intervals) if intervals is not None
                else episodes_from_windows(lw.sources, lw.end_ts, labels, w.interval_s))
    episodes = _covered(episodes, lw, (w.length - 1) * w.interval_s)
    in_range, held, marked = g.in_range, g.held, g.marked
    judge = _Judge(lw, episodes, cfg.detector.debounce, grace_s=GRACE_S,
                   seconds_per_window=w.stride * w.interval_s, in_range=in_range, held=held, marked=marked)
    # judged as every baseline column is: on the episodes the windows' ends reach
    detected = judge.detect(pred, classes, np.ones(len(lw), dtype=bool), nearest, within, added, slow)
    det, ep_report, events = detected

    novel = sorted(set(novel_labels) | (set(lab_ok.tolist()) - set(classes)))
    novelty: dict[str, Any] = {}
    for lab in novel:
        m = lab_ok == lab
        got, counts = np.unique(pred_ok[m], return_counts=True)
        novelty[lab] = {"n_windows": int(m.sum()),
                        "unknown_rate": float(np.mean(pred_ok[m] == UNKNOWN)) if m.any() else None,
                        "predicted": {str(g): int(c) for g, c in zip(got, counts, strict=True)}}

    st = ~ok
    report: dict[str, Any] = {
        "model_version": artifact.version,
        "classes": classes,
        "n_windows": len(lw),
        **{k: v for k, v in scores.items() if k != "n_windows"},
        "auc": auc,
        "n_pairs": int(len(s)),
        "per_class": _per_class(lab_ok, pred_ok, classes),
        "confusion": _confusion(lab_ok, pred_ok, classes),
        "straddling": {"n_windows": int(st.sum()),
                       "accuracy": accuracy(pred[st], open_set_truth(labels[st], classes))},
        "novelty": novelty,
        "false_alarms_per_hour": det["false_raises_per_hour"],
        "detection": det | {
            "label_correct": sum(e["label_correct"] for e in ep_report),
            "false_alarms": det["false_raises"],
            "normal_time_in_alarm": alarm_share(lw.sources[labels == NORMAL], lw.end_ts[labels == NORMAL], events),
            "grace_s": judge.grace_s, "debounce": dataclasses.asdict(cfg.detector.debounce),
        },
        "episodes": ep_report,
        "baselines": _baselines(artifact, judge, pred, nway, within, support, cfg.prototypes, nearest, added, slow,
                                detected),
        "window": dataclasses.asdict(w),
        "features": list(cfg.features),
    }
    judged = _covered(episodes, lw, 0.0)   # the episodes detection judged (the plots shade these)
    return Evaluation(report, lw, emb, pred, nway, classes, list(protos.points), events, judged, roc,
                      history=artifact.manifest.get("history"))


def evaluate(artifact: Artifact, lw: LabelledWindows, cfg: Config, novel_labels: Sequence[str] = (),
             intervals: Sequence[LabelInterval] | None = None,
             support: LabelledWindows | None = None) -> dict[str, Any]:
    """The JSON-ready report (see :func:`evaluate_detailed`)."""
    return evaluate_detailed(artifact, lw, cfg, novel_labels, intervals, support).report


def _covered(episodes: list[Episode], lw: LabelledWindows, span_s: float) -> list[Episode]:
    """Keep episodes of windowed sources that overlap the time their windows cover."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for s, t in zip(lw.sources.tolist(), lw.end_ts.tolist(), strict=True):
        lo[s], hi[s] = min(lo.get(s, t), t - span_s), max(hi.get(s, t), t)
    return [e for e in episodes if e.source in lo and e.end > lo[e.source] and e.start <= hi[e.source]]


# --------------------------------------------------------------------------- summary + CLI


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


def config_for_artifact(cfg: Config, artifact: Artifact, explicit: bool) -> Config:
    """Window settings and features come from the artifact unless a config file was given; an
    explicit config must agree with the model on what it consumes (length, interval, features)."""
    if not explicit:
        return dataclasses.replace(cfg, window=artifact.window, features=artifact.features)
    if (tuple(cfg.features) != artifact.features or cfg.window.length != artifact.window.length
            or cfg.window.interval_s != artifact.window.interval_s):
        raise NetsiamError(f"config window/features ({cfg.window.length} x {cfg.window.interval_s} s, "
                           f"{', '.join(cfg.features)}) do not match the model ({artifact.window.length} x "
                           f"{artifact.window.interval_s} s, {', '.join(artifact.features)})")
    return cfg


def load_labelled(data: Sequence[str], labels: Sequence[str],
                  cfg: Config) -> tuple[LabelledWindows, list[LabelInterval]]:
    """Windows + label intervals. Several traces are windowed one by one and their sources
    prefixed ``i:``, so two recordings of one source never feed one debounce."""
    paired = len(labels) == len(data)
    parts: list[LabelledWindows] = []
    intervals: list[LabelInterval] = []
    for i, d in enumerate(data):
        lab = [labels[i]] if paired else list(labels)
        lw = build_windows([d], lab, cfg)
        ivs = [iv for p in lab for iv in read_labels(p)]
        if len(data) > 1:
            lw = dataclasses.replace(lw, sources=np.array([f"{i}:{s}" for s in lw.sources], dtype=object))
            ivs = [dataclasses.replace(iv, source=f"{i}:{iv.source}") for iv in ivs]
        parts.append(lw)
        intervals.extend(ivs)
    if len(parts) == 1:
        return parts[0], intervals
    cat = {f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(LabelledWindows)}
    return LabelledWindows(**cat), intervals


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
    for kind, paths in (("trace", args.data), ("labels", args.labels)):
        for p in paths:
            if not Path(p).is_file():
                raise NetsiamError(f"{kind} file not found: {p}")
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
