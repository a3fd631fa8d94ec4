"""Thinned copies of training windows: the same testbed as it would show at a lower load."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from netsiam.features import RAW_METRICS, TIMEOUT_METRICS, derive, refused_calls
from netsiam.trainer.dataset import LabelledWindows

__all__ = ["thin_windows", "thinned_copies"]


def thin_windows(rng: np.random.Generator, raw: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Raw windows (N, T, R) as the same testbed would show them at ``keep`` (N,) times the load.

    Every call is kept with probability ``keep`` (binomial thinning of the per-interval counters);
    ``CurrentCall`` is rebuilt from a thinned start plus thinned arrivals minus thinned departures,
    so it stays a continuous gauge; a second whose calls were all thinned away reports no response
    time (0), as SIPp does for a second without answers. A recording at one load thus trains a
    model for many (the simulator spans loads anyway; a single real recording does not).
    """
    i = {m: j for j, m in enumerate(RAW_METRICS)}
    raw = np.asarray(raw, dtype=np.float64)
    p = np.asarray(keep, dtype=np.float64)[:, None]                               # (N, 1)
    out = raw.copy()

    def thin(counts: np.ndarray) -> np.ndarray:
        return rng.binomial(np.maximum(np.rint(counts), 0).astype(np.int64), p).astype(np.float64)

    for m in ("OutgoingCall", "SuccessfulCall", "Retransmissions", *TIMEOUT_METRICS):
        out[..., i[m]] = thin(raw[..., i[m]])
    # the failures that did not time out are thinned on their own, so FailedCall stays their sum with the timeouts
    out[..., i["FailedCall"]] = thin(refused_calls(raw)) + sum(out[..., i[m]] for m in TIMEOUT_METRICS)
    cur, offered = raw[..., i["CurrentCall"]], raw[..., i["OutgoingCall"]]
    departed = np.maximum(offered[:, 1:] - np.diff(cur, axis=1), 0.0)               # (N, T-1)
    start = rng.binomial(np.maximum(np.rint(cur[:, :1]), 0).astype(np.int64), p)    # (N, 1)
    steps = out[:, 1:, i["OutgoingCall"]] - thin(departed)
    out[..., i["CurrentCall"]] = np.maximum(np.concatenate([start, start + np.cumsum(steps, axis=1)], axis=1), 0)
    # answers ~ this second's calls (responses take milliseconds); a second without calls keeps its value
    kept = rng.binomial(np.maximum(np.rint(offered), 0).astype(np.int64), p)
    out[..., i["ResponseTime1"]] = np.where((kept > 0) | (offered <= 0), raw[..., i["ResponseTime1"]], 0.0)
    return out


def thinned_copies(rng: np.random.Generator, lw: LabelledWindows, copies: float, keep_range: Sequence[float],
                   features: Sequence[str]) -> LabelledWindows:
    """``round(copies * N)`` thinned copies of random windows of ``lw`` (keep ~ log-uniform in
    ``keep_range``), derived like any window; labels, sources and times are the originals'."""
    n = int(round(copies * len(lw)))
    if n == 0 or len(lw) == 0:
        return lw.subset(np.zeros(len(lw), dtype=bool))
    pick = rng.integers(len(lw), size=n)
    lo, hi = keep_range
    keep = lo * (hi / lo) ** rng.random(n)
    raw = thin_windows(rng, lw.raw[pick], keep)
    return LabelledWindows(raw, derive(raw, features), lw.end_ts[pick], lw.sources[pick], lw.labels[pick],
                           lw.straddle[pick])
