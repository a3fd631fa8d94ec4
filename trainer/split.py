"""How ``netsiam train`` cuts its data: windows per recording, runs of one label, validation per class.

Validation is chosen per class, never the wall-clock tail of a recording: a user cannot choose where
the faults fall in a capture, and an 11-minute recording with its faults early left a tail of one
class. Training windows never share a sample with a validation window of their recording.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from netsiam.config import Config
from netsiam.errors import NetsiamError
from netsiam.schemas.classes import KNOWN_LABELS, NORMAL
from netsiam.trainer.dataset import LabelledWindows, build_windows

__all__ = ["AFTERMATH_S", "aftermath_of", "class_order", "clean_normal", "in_aftermath", "label_runs", "load_windows", "split_validation",
           "split_windows"]

AFTERMATH_S = 35.0        # after a fault: its calls time out (SIP timer B, 32 s) and its backlog is answered


def load_windows(cfg: Config, data_paths: Sequence[str | Path],
                 label_paths: Sequence[str | Path]) -> tuple[LabelledWindows, np.ndarray]:
    """Window each trace on its own -> (windows, group (N,): "file:source", what the time split runs on).

    Labels pair with traces by position when the counts match, else every label file applies to
    every trace (the rule of build_windows).
    """
    if not data_paths or not label_paths:
        raise NetsiamError("need at least one --data trace and one --labels file")
    paired = len(label_paths) == len(data_paths)
    parts, groups = [], []
    for i, path in enumerate(data_paths):
        lw = build_windows([path], [label_paths[i]] if paired else list(label_paths), cfg)
        parts.append(lw)
        groups.append(np.array([f"{i}:{s}" for s in lw.sources], dtype=object))
    return LabelledWindows.concat(parts), np.concatenate(groups)


def label_runs(end_ts: np.ndarray, groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) run id: consecutive windows (by time) of one group carrying one label share a run."""
    order = np.lexsort((end_ts, groups))
    g, lab = groups[order], labels[order]
    new_run = np.r_[True, (g[1:] != g[:-1]) | (lab[1:] != lab[:-1])]
    runs = np.empty(len(end_ts), dtype=np.int64)
    runs[order] = np.cumsum(new_run) - 1
    return runs


def aftermath_of(end_ts: np.ndarray, groups: np.ndarray, labels: np.ndarray, seconds: float) -> np.ndarray:
    """(N,) the fault whose aftermath each normal window lies in (ending within ``seconds`` after its
    group's last fault window: the backlog answered in a burst, retransmissions draining, the fault's
    calls timing out; normal by label, far from clean normal traffic), "" for any other window."""
    out = np.full(len(end_ts), "", dtype=object)
    order = np.lexsort((end_ts, groups))
    last_fault: dict[object, tuple[float, str]] = {}
    for k in order:
        g = groups[k]
        if labels[k] != NORMAL:
            last_fault[g] = (end_ts[k], str(labels[k]))
        elif g in last_fault and end_ts[k] - last_fault[g][0] <= seconds:
            out[k] = last_fault[g][1]
    return out


def in_aftermath(end_ts: np.ndarray, groups: np.ndarray, labels: np.ndarray, seconds: float) -> np.ndarray:
    """(N,) normal windows in a fault's aftermath (:func:`aftermath_of`)."""
    return aftermath_of(end_ts, groups, labels, seconds) != ""


def clean_normal(lw: LabelledWindows, aftermath: np.ndarray) -> np.ndarray:
    """(N,) clean normal windows: inside one label and outside a fault's aftermath (``aftermath``, from
    :func:`in_aftermath`), whose timeouts and answered backlog are normal by label only."""
    return (lw.labels == NORMAL) & ~lw.straddle & ~aftermath


def split_validation(end_ts: np.ndarray, groups: np.ndarray, labels: np.ndarray, val_fraction: float,
                     span_s: float) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validation chosen per class, never the wall-clock tail of a recording.

    A class with at least 3 runs (episodes, or normal stretches between them) holds out whole
    runs: every ``round(1 / val_fraction)``-th of its runs in time order, the last one of each
    block. A class with fewer runs holds out the last ``val_fraction`` of each run's windows.
    Training windows never share a sample with a validation window of their group (``span_s``: a
    window's first to last sample); where that would leave a class fewer than 2 training windows
    (a very short single episode) the overlap is allowed and the class is named in the returned
    list. -> (train mask, validation mask, classes whose validation overlaps training).
    """
    n = len(end_ts)
    runs = label_runs(end_ts, groups, labels)
    val = np.zeros(n, dtype=bool)
    every = max(2, int(round(1.0 / val_fraction))) if val_fraction > 0 else 0
    for c in np.unique(labels):
        ids = np.unique(runs[labels == c])
        ids = ids[np.argsort([end_ts[runs == r].min() for r in ids], kind="stable")]
        if every and len(ids) >= 3:
            val |= np.isin(runs, ids[every - 1::every] if len(ids) >= every else ids[-1:])
            continue
        for r in ids:
            idx = np.flatnonzero(runs == r)
            idx = idx[np.argsort(end_ts[idx], kind="stable")]
            k = int(np.ceil(val_fraction * len(idx))) if len(idx) >= 3 else 0
            if k:
                val[idx[-k:]] = True
    train = ~val & ~_overlaps(end_ts, groups, val, span_s)
    overlapping = []
    for c in np.unique(labels):
        m = labels == c
        if np.sum(train & m) < 2 and np.sum(~val & m) >= 2:
            train |= ~val & m
            overlapping.append(str(c))
    return train, val, overlapping


def _overlaps(end_ts: np.ndarray, groups: np.ndarray, mask: np.ndarray, span_s: float) -> np.ndarray:
    """(N,) whether each window shares a sample with a window of ``mask`` in its group."""
    out = np.zeros(len(end_ts), dtype=bool)
    for g in np.unique(groups[mask]):
        in_g = groups == g
        ref = np.sort(end_ts[in_g & mask])
        t = end_ts[in_g]
        j = np.searchsorted(ref, t)
        near = np.full(len(t), np.inf)
        near = np.minimum(near, np.abs(ref[np.minimum(j, len(ref) - 1)] - t))
        near = np.minimum(near, np.abs(ref[np.maximum(j - 1, 0)] - t))
        out[in_g] = near <= span_s
    return out


def class_order(labels: np.ndarray) -> list[str]:
    """normal, the known faults, then any other label alphabetically."""
    present = set(labels.tolist())
    return [c for c in KNOWN_LABELS if c in present] + sorted(present - set(KNOWN_LABELS))


def split_windows(cfg: Config, data_paths: Sequence[str | Path], label_paths: Sequence[str | Path],
                  exclude_labels: Sequence[str] = ()) -> tuple[LabelledWindows, np.ndarray, np.ndarray, np.ndarray,
                                                               list[str]]:
    """Step 1: every trace windowed, excluded labels dropped, validation chosen per class.

    -> (windows, group (N,), train mask, validation mask, classes whose validation overlaps training).
    """
    w = cfg.window
    lw, groups = load_windows(cfg, data_paths, label_paths)                     # x: (N, T, F)
    # Every window is labelled by its last sample, onset and offset windows (straddling a label change)
    # included: they teach the encoder to name a fault from its first seconds, and normal soon after it.
    keep = ~np.isin(lw.labels, list(exclude_labels))
    lw, groups = lw.subset(keep), groups[keep]
    in_train, in_val, overlapping = split_validation(lw.end_ts, groups, lw.labels, cfg.training.val_fraction,
                                                     span_s=(w.length - 1) * w.interval_s)
    return lw, groups, in_train, in_val, overlapping
