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
  (grace = one window span). A raised event detecting no episode is a false alarm;
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
from scipy.stats import rankdata

from netsiam.config import Config, DebounceConfig
from netsiam.debounce import NORMAL, FaultTracker
from netsiam.errors import NetsiamError
from netsiam.traceio import LabelInterval, atomic_write_bytes, read_labels
from netsiam.trainer.artifact import UNKNOWN, Artifact, load_artifact
from netsiam.trainer.baselines import RawNearestPrototype, ZScoreRule, normalisation_stats, split_support
from netsiam.trainer.dataset import LabelledWindows, build_windows

__all__ = [
    "MAX_PAIRS",
    "Episode",
    "Evaluation",
    "Event",
    "accuracy",
    "alarm_share",
    "cli_evaluate",
    "config_for_artifact",
    "confusion",
    "detect_events",
    "episodes_from_intervals",
    "episodes_from_windows",
    "evaluate",
    "evaluate_detailed",
    "false_alarms_per_hour",
    "format_summary",
    "load_labelled",
    "match_episodes",
    "open_set_truth",
    "pair_scores",
    "per_class_metrics",
    "roc_auc",
    "roc_curve",
]

MAX_PAIRS = 200_000
PAIR_SEED = 0


# --------------------------------------------------------------------------- window metrics


def open_set_truth(labels: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """A label with a prototype stays; any other label's right answer is ``unknown``."""
    known = set(classes)
    return np.array([lab if lab in known else UNKNOWN for lab in labels], dtype=object)


def accuracy(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Share of equal entries; None for no entries."""
    return float(np.mean(np.asarray(pred) == np.asarray(truth))) if len(truth) else None


def confusion(truth: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """(L, L) counts, rows = true label, columns = predicted, both in ``labels`` order."""
    idx = {lab: i for i, lab in enumerate(labels)}
    m = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(m, (np.array([idx[t] for t in truth], dtype=np.int64),
                  np.array([idx[p] for p in pred], dtype=np.int64)), 1)
    return m


def per_class_metrics(truth: np.ndarray, pred: np.ndarray, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """{label: precision, recall, f1, support}; an undefined ratio is 0 (sklearn ``zero_division=0``)."""
    out: dict[str, dict[str, Any]] = {}
    for c in labels:
        tp = int(np.sum((truth == c) & (pred == c)))
        n_pred, n_true = int(np.sum(pred == c)), int(np.sum(truth == c))
        p = tp / n_pred if n_pred else 0.0
        r = tp / n_true if n_true else 0.0
        out[c] = {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "support": n_true}
    return out


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC = P(score of a random positive > a random negative), ties 1/2 (Mann-Whitney U)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)  # average ranks: a tie counts one half
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1)."""
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, pos = np.asarray(scores)[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each group of tied scores
    tp, fp = np.cumsum(pos)[last], np.cumsum(~pos)[last]
    n_pos, n_neg = max(int(positive.sum()), 1), max(int((~positive).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def pair_scores(emb: np.ndarray, labels: np.ndarray, max_pairs: int = MAX_PAIRS,
                seed: int = PAIR_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(score = -distance, same label) for all pairs i < j, or ``max_pairs`` random pairs i != j."""
    n = len(emb)
    if n < 2:
        return np.zeros(0), np.zeros(0, dtype=bool)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, max_pairs)
        j = rng.integers(0, n - 1, max_pairs)
        j = j + (j >= i)  # uniform over j != i
    d = np.sqrt(((np.asarray(emb, np.float64)[i] - np.asarray(emb, np.float64)[j]) ** 2).sum(axis=1))
    return -d, np.asarray(labels)[i] == np.asarray(labels)[j]


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class Event:
    """One raised fault as the daemon would publish it, with when it cleared (None: still active)."""

    source: str
    fault: str
    started_at: float
    raised_at: float          # window_end of the raising window
    cleared_at: float | None
    end: float                # cleared_at, or the source's last window end when still active


@dataclass(frozen=True)
class Episode:
    """A labelled fault: a contiguous interval of one non-normal label on one source."""

    source: str
    label: str
    start: float
    end: float


def detect_events(sources: np.ndarray, end_ts: np.ndarray, classes: np.ndarray,
                  debounce: DebounceConfig) -> list[Event]:
    """Run one FaultTracker per source over its windows in ``end_ts`` order (the daemon's loop)."""
    events: list[Event] = []
    for src in sorted(set(sources.tolist())):
        idx = np.flatnonzero(sources == src)
        idx = idx[np.argsort(end_ts[idx], kind="stable")]
        tracker = FaultTracker(debounce)
        open_: dict[str, tuple[float, float]] = {}   # fault -> (started_at, raised_at)
        last_t = float(end_ts[idx[-1]])
        for k in idx:
            for tr in tracker.update(str(classes[k]), float(end_ts[k])):
                if tr.state == "raised":
                    open_[tr.fault] = (tr.started_at, tr.window_end)
                else:
                    started, raised = open_.pop(tr.fault)
                    events.append(Event(src, tr.fault, started, raised, tr.window_end, tr.window_end))
        for fault, (started, raised) in open_.items():
            events.append(Event(src, fault, started, raised, None, last_t))
    return sorted(events, key=lambda e: (e.source, e.raised_at))


def episodes_from_intervals(intervals: Sequence[LabelInterval]) -> list[Episode]:
    """Non-normal label intervals, with touching/overlapping ones of the same label merged."""
    eps: list[Episode] = []
    for iv in sorted(intervals, key=lambda v: (v.source, v.label, v.start)):
        if iv.label == NORMAL:
            continue
        last = eps[-1] if eps else None
        if last and last.source == iv.source and last.label == iv.label and iv.start <= last.end:
            eps[-1] = Episode(last.source, last.label, last.start, max(last.end, iv.end))
        else:
            eps.append(Episode(iv.source, iv.label, iv.start, iv.end))
    return sorted(eps, key=lambda e: (e.source, e.start))


def episodes_from_windows(sources: np.ndarray, end_ts: np.ndarray, labels: np.ndarray,
                          interval_s: float) -> list[Episode]:
    """Fallback without label intervals: runs of one non-normal label in consecutive windows of a
    source, from the first such window's end to one interval past the last one's end."""
    eps: list[Episode] = []
    for src in sorted(set(sources.tolist())):
        idx = np.flatnonzero(sources == src)
        idx = idx[np.argsort(end_ts[idx], kind="stable")]
        run: list[int] = []
        for k in [*idx.tolist(), -1]:
            if run and (k < 0 or labels[k] != labels[run[0]]):
                if labels[run[0]] != NORMAL:
                    eps.append(Episode(src, str(labels[run[0]]), float(end_ts[run[0]]),
                                       float(end_ts[run[-1]]) + interval_s))
                run = []
            if k >= 0:
                run.append(k)
    return eps


def _matches(ev: Event, ep: Episode, grace_s: float) -> bool:
    overlaps = ev.started_at <= ep.end and ev.end >= ep.start
    raised_in = ep.start <= ev.raised_at <= ep.end + grace_s
    return ev.source == ep.source and (overlaps or raised_in)


def match_episodes(episodes: Sequence[Episode], events: Sequence[Event], grace_s: float,
                   classes: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], list[bool]]:
    """-> (one report entry per episode, per event whether it detected any episode).

    The detecting event is the first matching one raised at or after the episode start; failing
    that, one already active when the episode began (``delay_s`` 0, ``already_active``).
    ``label_correct``: some matching event names the episode's label -- or ``unknown`` for a label
    outside ``classes`` (when given), the right answer for a fault the model never learnt.
    """
    by_src: dict[str, list[int]] = {}
    for n, ev in enumerate(events):
        by_src.setdefault(ev.source, []).append(n)
    useful = [False] * len(events)
    out: list[dict[str, Any]] = []
    for ep in episodes:
        hits = [n for n in by_src.get(ep.source, []) if _matches(events[n], ep, grace_s)]
        for n in hits:
            useful[n] = True
        hits.sort(key=lambda n: events[n].raised_at)
        later = [n for n in hits if events[n].raised_at >= ep.start]
        first = events[later[0]] if later else (events[hits[0]] if hits else None)
        want = ep.label if classes is None or ep.label in classes else UNKNOWN
        out.append({
            "source": ep.source, "label": ep.label, "start": ep.start, "end": ep.end,
            "detected": first is not None,
            "detected_label": first.fault if first else None,
            "delay_s": max(0.0, first.raised_at - ep.start) if first else None,
            "already_active": bool(first is not None and first.raised_at < ep.start),
            "label_correct": any(events[n].fault == want for n in hits),
            "raised": [events[n].fault for n in hits],
        })
    return out, useful


def false_alarms_per_hour(n_false: int, normal_hours: float) -> float | None:
    return n_false / normal_hours if normal_hours > 0 else None


def alarm_share(sources: np.ndarray, end_ts: np.ndarray, events: Sequence[Event]) -> float | None:
    """Share of the given windows that end while an alarm is up (``raised_at <= t < cleared_at``).

    Fed the normal-labelled windows it exposes an alarm that never clears: one endless event
    overlaps every episode, so it "detects" them all and counts as a single false alarm.
    """
    if len(end_ts) == 0:
        return None
    up = np.zeros(len(end_ts), dtype=bool)
    for ev in events:
        until = np.inf if ev.cleared_at is None else ev.cleared_at
        up |= (sources == ev.source) & (end_ts >= ev.raised_at) & (end_ts < until)
    return float(up.mean())


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


def _baselines(artifact: Artifact, lw: LabelledWindows, cfg: Config, pred: np.ndarray, nway: np.ndarray,
               support: LabelledWindows | None) -> dict[str, Any]:
    classes = artifact.prototypes.classes
    span = (cfg.window.length - 1) * cfg.window.interval_s
    if support is None:
        sup_mask, ev_mask = split_support(lw.sources, lw.end_ts, span)
        sup = lw.subset(sup_mask & ~lw.straddle)
        how = "per source: windows ending in the first half of its time span fit the baselines; " \
              "windows starting after that are scored (encoder too)"
    else:
        sup, ev_mask = support.subset(~support.straddle), np.ones(len(lw), dtype=bool)
        how = "caller-supplied support windows fit the baselines; all evaluation windows are scored"
    ev_mask &= ~lw.straddle
    labels = lw.labels[ev_mask]
    out: dict[str, Any] = {"support": how, "n_support": len(sup),
                           "encoder": _scores(pred[ev_mask], nway[ev_mask], labels, classes)}
    if not np.any(ev_mask):
        return out | {"error": "no window left to score after the support split"}
    mean, std = normalisation_stats(artifact.manifest, lw.x.shape[2])
    models = {"raw_nearest_prototype": RawNearestPrototype(mean, std, cfg.prototypes), "zscore_rule": ZScoreRule()}
    for name, model in models.items():
        try:
            model.fit(sup.x, sup.labels, classes)
        except NetsiamError as e:
            out[name] = {"error": str(e)}
            continue
        bp, bn = model.predict(lw.x[ev_mask])
        missing = [c for c in classes if c not in model.classes]
        out[name] = _scores(bp, bn, labels, classes) | {"classes_without_support": missing}
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
    pred, _, dists = protos.classify(emb)
    nway = np.asarray(classes, dtype=object)[dists.argmin(axis=1)]
    labels = np.asarray(lw.labels, dtype=object)
    ok = ~np.asarray(lw.straddle, dtype=bool)

    lab_ok, pred_ok = labels[ok], pred[ok]
    truth_ok = open_set_truth(lab_ok, classes)
    scores = _scores(pred_ok, nway[ok], lab_ok, classes)
    others = sorted((set(lab_ok.tolist()) | set(pred_ok.tolist())) - set(classes) - {UNKNOWN})
    conf_labels = [*classes, *others, UNKNOWN]
    pc_labels = [*classes, *([UNKNOWN] if np.any(truth_ok == UNKNOWN) or np.any(pred_ok == UNKNOWN) else [])]

    s, positive = pair_scores(emb[ok], lab_ok)
    auc = roc_auc(s, positive)
    roc = roc_curve(s, positive) if auc is not None else (np.zeros(0), np.zeros(0))

    w = cfg.window
    events = detect_events(np.asarray(lw.sources), np.asarray(lw.end_ts, np.float64), pred, cfg.detector.debounce)
    episodes = (episodes_from_intervals(intervals) if intervals is not None
                else episodes_from_windows(lw.sources, lw.end_ts, labels, w.interval_s))
    episodes = _covered(episodes, lw, (w.length - 1) * w.interval_s)
    ep_report, useful = match_episodes(episodes, events, grace_s=w.length * w.interval_s, classes=classes)
    n_false = useful.count(False)
    normal_hours = float(np.sum(labels == NORMAL)) * w.stride * w.interval_s / 3600.0
    detected = [e for e in ep_report if e["detected"]]

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
        "per_class": per_class_metrics(truth_ok, pred_ok, pc_labels),
        "confusion": {"labels": conf_labels, "matrix": confusion(lab_ok, pred_ok, conf_labels).tolist()},
        "straddling": {"n_windows": int(st.sum()),
                       "accuracy": accuracy(pred[st], open_set_truth(labels[st], classes))},
        "novelty": novelty,
        "false_alarms_per_hour": false_alarms_per_hour(n_false, normal_hours),
        "detection": {
            "episodes": len(ep_report), "detected": len(detected),
            "label_correct": sum(e["label_correct"] for e in ep_report),
            "median_delay_s": float(np.median([e["delay_s"] for e in detected])) if detected else None,
            "events_raised": len(events), "false_alarms": n_false, "normal_hours": normal_hours,
            "normal_time_in_alarm": alarm_share(lw.sources[labels == NORMAL], lw.end_ts[labels == NORMAL], events),
            "grace_s": w.length * w.interval_s, "debounce": dataclasses.asdict(cfg.detector.debounce),
        },
        "episodes": ep_report,
        "baselines": _baselines(artifact, lw, cfg, pred, nway, support),
        "window": dataclasses.asdict(w),
        "features": list(cfg.features),
    }
    return Evaluation(report, lw, emb, pred, nway, classes, list(protos.points), events, episodes, roc,
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


_BASELINE_TITLES = {"encoder": "encoder", "raw_nearest_prototype": "raw prototype", "zscore_rule": "z-score rule"}


def format_summary(report: dict[str, Any]) -> str:
    """A short human-readable table of the report."""
    det = report["detection"]
    lines = [f"model {report['model_version']}: {report['n_windows']} windows "
             f"({report['straddling']['n_windows']} straddling a label change, scored apart), "
             f"classes {', '.join(report['classes'])}",
             f"pair AUC {_f(report['auc'])}   window accuracy {_f(report['window_accuracy'])}   "
             f"n-way accuracy {_f(report['n_way_accuracy'])}   binary accuracy {_f(report['binary_accuracy'])}",
             "",
             f"{'class':<18}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for c, m in report["per_class"].items():
        lines.append(f"{c:<18}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>10d}")
    lines += ["",
              f"episodes detected {det['detected']}/{det['episodes']} (right label {det['label_correct']}), "
              f"median delay {_f(det['median_delay_s'], '{:.1f}')} s, false alarms "
              f"{_f(report['false_alarms_per_hour'], '{:.2f}')}/h ({det['false_alarms']} in "
              f"{det['normal_hours']:.2f} h normal, alarm up {_f(det['normal_time_in_alarm'], '{:.1%}')} of it)"]
    for lab, nv in report["novelty"].items():
        lines.append(f"novel '{lab}': {_f(nv['unknown_rate'])} of {nv['n_windows']} windows unknown")
    b = report["baselines"]
    cols = [k for k in _BASELINE_TITLES if k in b]
    lines += ["", f"baselines, scored on windows none of them was fitted on ({b['n_support']} support windows):",
              f"{'':<18}" + "".join(f"{_BASELINE_TITLES[c]:>16}" for c in cols)]
    for key in ("window_accuracy", "n_way_accuracy", "binary_accuracy", "n_windows"):
        cells = [b[c].get(key) if "error" not in b[c] else None for c in cols]
        lines.append(f"{key:<18}" + "".join(f"{_f(v, '{:d}' if key == 'n_windows' else '{:.3f}'):>16}"
                                             for v in cells))
    for c in cols:
        if "error" in b[c]:
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


def cli_evaluate(args: argparse.Namespace, cfg: Config) -> int:
    # check inputs before loading the model: a typo fails in a moment, not after importing Keras
    for kind, paths in (("trace", args.data), ("labels", args.labels)):
        for p in paths:
            if not Path(p).is_file():
                raise NetsiamError(f"{kind} file not found: {p}")
    artifact = load_artifact(args.model)
    cfg = config_for_artifact(cfg, artifact, explicit=getattr(args, "config", None) is not None)
    lw, intervals = load_labelled(args.data, args.labels, cfg)
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
