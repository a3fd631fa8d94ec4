"""``netsiam evaluate``'s report: artifact + windows + labels -> every metric (the CLI and its summary table:
:mod:`netsiam.trainer.evaluate_cli`).

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

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from netsiam.config import Config, DebounceConfig, PrototypeConfig
from netsiam.errors import NetsiamError
from netsiam.schemas.classes import NORMAL, UNKNOWN
from netsiam.serving import Artifact
from netsiam.traceio import LabelInterval, read_labels
from netsiam.trainer.baselines import (
    ExpertRule,
    RawNearestPrototype,
    ZScoreRule,
    normalisation_stats,
    split_support,
)
from netsiam.trainer.dataset import LabelledWindows, build_windows
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

__all__ = ["Evaluation", "config_for_artifact", "evaluate", "evaluate_detailed", "load_labelled"]

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
        :func:`~netsiam.givens.debounce_view`; ``slow``: read unknown for their slow answers)."""
        return score_detection(
            self.lw.sources[mask], self.lw.end_ts[mask], pred[mask], self.lw.labels[mask],
            _covered(self.episodes, self.lw.sources[mask], self.lw.end_ts[mask]), self.debounce, self.grace_s,
            self.seconds_per_window,
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
    episodes = _covered(episodes, lw.sources, lw.end_ts)   # every column judges these (the plots shade them)
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
    return Evaluation(report, lw, emb, pred, nway, classes, list(protos.points), events, episodes, roc,
                      history=artifact.manifest.get("history"))


def evaluate(artifact: Artifact, lw: LabelledWindows, cfg: Config, novel_labels: Sequence[str] = (),
             intervals: Sequence[LabelInterval] | None = None,
             support: LabelledWindows | None = None) -> dict[str, Any]:
    """The JSON-ready report (see :func:`evaluate_detailed`)."""
    return evaluate_detailed(artifact, lw, cfg, novel_labels, intervals, support).report


def _covered(episodes: list[Episode], sources: np.ndarray, end_ts: np.ndarray) -> list[Episode]:
    """Keep episodes of windowed sources that some window's end reaches (one that ended before a source's first
    window did is judged by no detector)."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for s, t in zip(sources.tolist(), end_ts.tolist(), strict=True):
        lo[s], hi[s] = min(lo.get(s, t), t), max(hi.get(s, t), t)
    return [e for e in episodes if e.source in lo and e.end > lo[e.source] and e.start <= hi[e.source]]


# --------------------------------------------------------------------------- loading


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
    return LabelledWindows.concat(parts), intervals
