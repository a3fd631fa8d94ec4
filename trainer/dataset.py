"""Traces + labels -> labelled windows, with the exact windowing and features the daemon uses."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netsiam.config import Config
from netsiam.errors import NetsiamError
from netsiam.features import RAW_METRICS, derive, required_metrics
from netsiam.schemas.classes import NORMAL, VERDICTS
from netsiam.schemas.record import RecordError, decode_record
from netsiam.traceio import LabelInterval, read_labels, read_trace
from netsiam.windowing import Windows, windows_from_records

__all__ = ["LabelledWindows", "build_windows", "label_at", "load_trace", "refuse_verdicts", "windows_and_features"]


@dataclass(frozen=True)
class LabelledWindows:
    raw: np.ndarray        # (N, T, R) raw metrics in RAW_METRICS order
    x: np.ndarray          # (N, T, F) derived features (model input, before normalisation)
    end_ts: np.ndarray     # (N,)
    sources: np.ndarray    # (N,) str
    labels: np.ndarray     # (N,) str: the label covering the window's last sample
    straddle: np.ndarray   # (N,) bool: the window's first and last samples carry different labels

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, mask: np.ndarray) -> LabelledWindows:
        return LabelledWindows(self.raw[mask], self.x[mask], self.end_ts[mask], self.sources[mask],
                               self.labels[mask], self.straddle[mask])

    @classmethod
    def concat(cls, parts: Sequence[LabelledWindows]) -> LabelledWindows:
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(cls)})


def load_trace(path: str | Path, cfg: Config) -> list[tuple[str, float, tuple[float, ...]]]:
    """Decode every line strictly: a corrupt line is an error naming file, line and reason."""
    required = frozenset(required_metrics(cfg.features))
    out = []
    for lineno, raw in read_trace(path):
        try:
            r = decode_record(raw, RAW_METRICS, required, cfg.detector.max_record_bytes)
        except RecordError as e:
            raise NetsiamError(f"{path}:{lineno}: {e}") from None
        out.append((r.source, r.ts, r.values))
    if not out:
        raise NetsiamError(f"{path}: no records")
    return out


def label_at(intervals: Sequence[LabelInterval], sources: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Label of each (source, ts): the interval covering it (start <= ts < end), else normal."""
    out = np.full(len(ts), NORMAL, dtype=object)
    for iv in intervals:
        hit = (sources == iv.source) & (ts >= iv.start) & (ts < iv.end)
        out[hit] = iv.label
    return out


def windows_and_features(windows: Windows, cfg: Config) -> np.ndarray:
    """(N, T, R) raw -> (N, T, F) model input."""
    if len(windows) == 0:
        return np.zeros((0, cfg.window.length, len(cfg.features)), dtype=np.float32)
    return derive(windows.raw, cfg.features)


def build_windows(data: Sequence[str | Path], labels: Sequence[str | Path], cfg: Config) -> LabelledWindows:
    """Window every trace (sources never mix) and label each window by its last sample."""
    records: list[tuple[str, float, tuple[float, ...]]] = []
    for i, path in enumerate(data):
        # the same source name in two traces is two recordings: keep their windows apart
        prefix = f"{i}:" if len(data) > 1 else ""
        records.extend((prefix + s, t, v) for s, t, v in load_trace(path, cfg))
    # labels pair with traces by position when counts match; otherwise every label file applies to all
    paired = len(labels) == len(data)
    intervals: list[LabelInterval] = []
    for i, path in enumerate(labels):
        targets = [i] if paired else list(range(len(data)))
        for iv in read_labels(path):
            for j in targets:
                src = f"{j}:{iv.source}" if len(data) > 1 else iv.source
                intervals.append(LabelInterval(src, iv.start, iv.end, iv.label))
    w = windows_from_records(records, cfg.window, len(RAW_METRICS))
    if len(w) == 0:
        raise NetsiamError(f"no complete window (length {cfg.window.length}) in {', '.join(map(str, data))}")
    x = windows_and_features(w, cfg)
    end_lab = label_at(intervals, w.sources, w.end_ts)
    start_ts = w.end_ts - (cfg.window.length - 1) * cfg.window.interval_s
    start_lab = label_at(intervals, w.sources, start_ts)
    sources = np.array([s.split(":", 1)[1] if len(data) > 1 else s for s in w.sources], dtype=object)
    return LabelledWindows(w.raw, x, w.end_ts, sources, end_lab, start_lab != end_lab)


def refuse_verdicts(labels: Iterable[str], hint: str = "") -> None:
    """Refuse the labels ``unknown`` and ``silent``: a class of that name could not be told from the
    daemon's own novelty / silence verdicts, and scored as truth they would count those verdicts right."""
    found = sorted(set(labels) & set(VERDICTS))
    if found:
        raise NetsiamError(f"label(s) {', '.join(found)}: the detector's verdicts, not classes; rename them to what "
                           f"the fault was (a `netsiam dump --labels` draft says unknown where the model could not "
                           f"tell){hint}")
