"""Learning-free baselines that ``evaluate`` scores beside the encoder, on the same windows.

* :class:`ExpertRule` -- the per-second rule an operator would write for the built-in faults, fitted
  on nothing. It reads the last second of each window (the raw counters)::

      offered = max(OutgoingCall, 1)
      if Retransmissions / offered >= 0.3:   blocked          # INVITEs nobody answers are resent from 0.5 s
      elif FailedCall / offered >= 0.05:     capacity_limit   # calls refused at once, or after a timeout
      else:                                  normal

  Fed through the daemon's debounce (two anomalous seconds in a row by default) it raises a fault
  one to three seconds after the counters show it. It knows only these two faults: it never says
  ``unknown`` and cannot learn a new class. Its two bounds were set on the validation recordings
  of the real-SIPp corpus (``deploy/testbed/corpus.yaml``, names ``val_*``), never on reported ones:
  0.05, not 0.1, for failures because a 10 % rejection share (val_r120_h1) flickers around 0.1.

The other two are fitted on *support* windows (the artifact's training windows, stored in its
manifest by ``netsiam train``, or a split of the evaluated data for older artifacts) and scored
on windows they never saw, like the encoder:

* :class:`RawNearestPrototype` -- each window's derived features, normalised with the artifact's
  stored mean/std and flattened to T*F numbers; one prototype per class (element-wise median of
  its support windows); nearest prototype wins, and a window farther than that class's threshold
  is ``unknown``. The threshold uses the same rule as the encoder's prototypes
  (``prototypes.threshold_quantile`` of the support distances x ``prototypes.threshold_scale``).
* :class:`ZScoreRule` -- the classic "3 sigma" alarm: per feature, the mean over the window;
  mean and std of those fitted on *normal* support windows; a window is anomalous when any
  feature has |z| > 3. An anomalous window is named after the nearest fault-class centroid in
  z-space (no novelty: it never says ``unknown``); a quiet one is ``normal``. Its natural score
  is normal-vs-anomalous (``binary_accuracy``), which ``evaluate`` reports for every model.

Where the support comes from (:func:`split_support`): unless the caller passes support windows,
each source's windows are split in time -- windows ending in the first half of that source's
span are support, windows *starting* after that point are scored, and windows overlapping the
cut are dropped, so no sample is in both parts. ``evaluate`` then scores the encoder on the
same scored part, so the three columns are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from netsiam.config import PrototypeConfig
from netsiam.errors import NetsiamError
from netsiam.features import RAW_METRICS
from netsiam.schemas.classes import NORMAL, UNKNOWN

__all__ = ["Z_LIMIT", "ExpertRule", "RawNearestPrototype", "ZScoreRule", "normalisation_stats", "split_support"]

Z_LIMIT = 3.0
# Floor on a feature's normal-window std: a feature that is constant by construction in normal
# windows (offered_rel averages to exactly 1) must not turn float noise into |z| > 3.
MIN_STD = 1e-3


class ExpertRule:
    """The per-second expert rule (module docstring): raw windows (N, T, R) in RAW_METRICS order -> class."""

    classes = (NORMAL, "blocked", "capacity_limit")

    def __init__(self, retrans_share: float = 0.3, failed_share: float = 0.05) -> None:
        self.retrans_share, self.failed_share = retrans_share, failed_share

    def predict(self, raw: np.ndarray) -> np.ndarray:
        last = np.asarray(raw, dtype=np.float64)[:, -1, :]                       # (N, R): the window's last second
        col = {m: last[:, i] for i, m in enumerate(RAW_METRICS)}
        offered = np.maximum(col["OutgoingCall"], 1.0)
        out = np.full(len(last), NORMAL, dtype=object)
        out[col["FailedCall"] / offered >= self.failed_share] = "capacity_limit"
        out[col["Retransmissions"] / offered >= self.retrans_share] = "blocked"
        return out


def split_support(sources: np.ndarray, end_ts: np.ndarray, window_span_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Per source, cut at the middle of its time span: (support mask, scored mask).

    Support: windows ending at or before the cut. Scored: windows whose first sample is after
    it (``end_ts - window_span_s > cut``), so the two parts share no sample.
    """
    support = np.zeros(len(end_ts), dtype=bool)
    scored = np.zeros(len(end_ts), dtype=bool)
    for s in np.unique(sources):
        m = sources == s
        t = end_ts[m]
        cut = (float(t.min()) + float(t.max())) / 2.0
        support[m] = t <= cut
        scored[m] = t - window_span_s > cut
    return support, scored


def normalisation_stats(manifest: dict[str, object], n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per feature from the artifact manifest (``std``, or ``variance`` as a fallback)."""
    norm = manifest.get("normalisation")
    if not isinstance(norm, dict) or "mean" not in norm or not ("std" in norm or "variance" in norm):
        raise NetsiamError("manifest normalisation: expected {'mean': [...], 'std': [...]}")
    mean = np.asarray(norm["mean"], dtype=np.float64).reshape(-1)
    std = (np.asarray(norm["std"], dtype=np.float64) if "std" in norm
           else np.sqrt(np.asarray(norm["variance"], dtype=np.float64))).reshape(-1)
    if mean.shape != (n_features,) or std.shape != (n_features,):
        raise NetsiamError(f"manifest normalisation: expected {n_features} values, got {mean.shape}/{std.shape}")
    return mean, np.where(std > 1e-12, std, 1.0)


class RawNearestPrototype:
    """Nearest per-class median prototype on flattened, normalised raw feature windows."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, pcfg: PrototypeConfig) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.pcfg = pcfg
        self.classes: list[str] = []
        self.points = np.zeros((0, 0))
        self.thresholds = np.zeros(0)

    def _flat(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.std   # (N, T, F)
        # divide by sqrt(T*F) so distances are per-element RMS, comparable across window sizes
        return z.reshape(len(z), -1) / np.sqrt(z.shape[1] * z.shape[2])

    def fit(self, x: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> RawNearestPrototype:
        """Fit one prototype per class in ``classes`` that has support windows (others are skipped)."""
        flat = self._flat(x)
        pts, thr, kept = [], [], []
        for c in classes:
            m = labels == c
            if not np.any(m):
                continue
            p = np.median(flat[m], axis=0)
            d = np.sqrt(((flat[m] - p) ** 2).sum(axis=1))
            kept.append(c)
            pts.append(p)
            thr.append(float(np.quantile(d, self.pcfg.threshold_quantile)) * self.pcfg.threshold_scale)
        if not kept:
            raise NetsiamError("raw-prototype baseline: no support window of any known class")
        self.classes, self.points, self.thresholds = kept, np.stack(pts), np.asarray(thr)
        return self

    def to_json(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "points": self.points.tolist(), "thresholds": self.thresholds.tolist()}

    def load_json(self, obj: dict[str, Any]) -> RawNearestPrototype:
        self.classes = [str(c) for c in obj["classes"]]
        self.points = np.asarray(obj["points"], dtype=np.float64)
        self.thresholds = np.asarray(obj["thresholds"], dtype=np.float64)
        return self

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (class with ``unknown`` beyond the threshold, nearest class ignoring thresholds)."""
        flat = self._flat(x)
        # one class at a time: (N, T*F) temporaries, and exact zeros (the |a|^2 - 2ab + |b|^2 expansion
        # leaves rounding noise that a zero threshold, from identical support windows, would call unknown)
        d = np.stack([np.sqrt(((flat - p) ** 2).sum(axis=1)) for p in self.points], axis=1)   # (N, C)
        j = d.argmin(axis=1)
        nway = np.asarray(self.classes, dtype=object)[j]
        pred = nway.copy()
        pred[d[np.arange(len(j)), j] > self.thresholds[j]] = UNKNOWN
        return pred, nway


class ZScoreRule:
    """|z| > 3 on any feature's window mean (fitted on normal windows); class by nearest centroid."""

    def __init__(self, z_limit: float = Z_LIMIT) -> None:
        self.z_limit = z_limit
        self.mu = np.zeros(0)
        self.sd = np.zeros(0)
        self.classes: list[str] = []
        self.centroids = np.zeros((0, 0))

    def _z(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64).mean(axis=1) - self.mu) / self.sd   # (N, F)

    def fit(self, x: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> ZScoreRule:
        means = np.asarray(x, dtype=np.float64).mean(axis=1)
        normal = labels == NORMAL
        if not np.any(normal):
            raise NetsiamError("z-score baseline: no normal support window to fit mean/std on")
        self.mu = means[normal].mean(axis=0)
        self.sd = np.maximum(means[normal].std(axis=0), MIN_STD)
        z = self._z(x)
        kept = [c for c in classes if np.any(labels == c)]
        if not kept:
            raise NetsiamError("z-score baseline: no support window of any known class")
        self.classes = kept
        self.centroids = np.stack([z[labels == c].mean(axis=0) for c in kept])
        return self

    def to_json(self) -> dict[str, Any]:
        return {"mu": self.mu.tolist(), "sd": self.sd.tolist(), "classes": list(self.classes),
                "centroids": self.centroids.tolist()}

    def load_json(self, obj: dict[str, Any]) -> ZScoreRule:
        self.mu, self.sd = np.asarray(obj["mu"], np.float64), np.asarray(obj["sd"], np.float64)
        self.classes = [str(c) for c in obj["classes"]]
        self.centroids = np.asarray(obj["centroids"], dtype=np.float64)
        return self

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (rule's class: normal, nearest fault centroid, or ``unknown`` if no fault class was
        fitted; nearest centroid of every class, ignoring the rule)."""
        z = self._z(x)
        d = np.sqrt(((z[:, None, :] - self.centroids[None, :, :]) ** 2).sum(-1))   # (N, C)
        names = np.asarray(self.classes, dtype=object)
        nway = names[d.argmin(axis=1)]
        anomalous = (np.abs(z) > self.z_limit).any(axis=1)
        pred = np.full(len(z), NORMAL, dtype=object)
        faults = np.asarray([c != NORMAL for c in self.classes])
        if faults.any():
            df = np.where(faults[None, :], d, np.inf)
            pred[anomalous] = names[df.argmin(axis=1)][anomalous]
        else:
            pred[anomalous] = UNKNOWN
        return pred, nway
