"""Outlier exposure: synthetic windows no known class produces, negatives of every class.

Without them the triplet loss is satisfied by any map that separates the known classes, and a new
fault lands wherever that map happens to send it (often onto a known class); with them the encoder
learns to send what no known class looks like away from all of them, where the distance thresholds
call it ``unknown``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from netsiam.trainer.mining import balanced_batch, random_triplets

__all__ = ["Exposure", "outlier_scales", "synthetic_outliers"]


def outlier_scales(x: np.ndarray, class_ids: np.ndarray, floor_share: float = 0.25) -> np.ndarray:
    """(C, F) how far each class's windows spread in each feature: the std of its windows' means,
    at least ``floor_share`` of the feature's std over all training values (so a feature that is
    ~constant in a class, like retransmissions in normal traffic, still gets a sensible step)."""
    means = x.mean(axis=1)                                                       # (N, F)
    floor = floor_share * x.reshape(-1, x.shape[-1]).std(axis=0)                 # (F,)
    return np.stack([np.maximum(means[class_ids == c].std(axis=0), floor) for c in range(int(class_ids.max()) + 1)])


def synthetic_outliers(rng: np.random.Generator, x: np.ndarray, class_ids: np.ndarray, n: int, scales: np.ndarray,
                       lo_hi: Sequence[float], floor: np.ndarray, min_span: int = 10) -> np.ndarray:
    """``n`` windows no known class produces: training windows with one or two features shifted.

    x: (N, T, F) training windows of classes ``class_ids``. Each outlier starts from a random
    training window and shifts 1 or 2 random features by ``U(low, high)`` times that class's spread
    in the feature (``scales`` (C, F), :func:`outlier_scales`), over the whole window or from a
    random step on (an onset), up or down at random; a shift down that would take the feature
    below ``floor`` (its smallest training value: counters and times do not go negative) goes up
    instead. -> (n, T, F).
    """
    n_win, t_len, n_feat = x.shape
    base = rng.integers(n_win, size=n)
    out = x[base].astype(np.float32)                                             # (n, T, F)
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    for i in range(n):
        feats = rng.choice(n_feat, size=1 + int(rng.random() < 0.5), replace=False)
        start = 0 if rng.random() < 0.5 else int(rng.integers(0, t_len - min_span + 1))
        for f in feats:
            shift = rng.uniform(lo, hi) * scales[class_ids[base[i]], f]
            seg = out[i, start:, f]
            if rng.random() < 0.5 and (seg - shift).min() >= floor[f]:
                shift = -shift
            out[i, start:, f] = seg + shift
    return out


class Exposure:
    """P x K class-balanced batches plus ``n_out`` synthetic outliers (outlier exposure).

    Each outlier row gets a label of its own (P, P+1, ...): it has no positive, so it is never
    an anchor of the mined loss, only a negative of every known row; its random triplet is
    (itself, itself, a random known row), whose hinge pushes it ``margin`` away from that row. The
    encoder thus learns to map what no known class looks like away from every class, so the
    per-class distance thresholds can call a new fault ``unknown``. Outliers are always made from
    the windows given to :meth:`batch`, with the spreads and floors of the TRAINING windows.
    """

    def __init__(self, x_train: np.ndarray, ids_train: np.ndarray, k: int, n_out: int, lo_hi: Sequence[float]):
        self.ids = np.asarray(ids_train, dtype=np.int64)
        self.k, self.n_out, self.lo_hi = k, n_out, tuple(lo_hi)
        self.scales = outlier_scales(x_train, self.ids)                          # (C, F)
        self.floor = x_train.min(axis=(0, 1))                                    # (F,)

    def batch(self, rng: np.random.Generator, x: np.ndarray, class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One batch from windows ``x`` of ``class_ids``: (P*K + n_out, T, F), (P*K + n_out, 3)."""
        present = np.unique(class_ids)
        rows, ids = balanced_batch(rng, [np.flatnonzero(class_ids == c) for c in present], self.k)
        ids = present[ids]
        pos, neg = random_triplets(rng, ids)
        n_known, n_out = len(ids), self.n_out
        xo = synthetic_outliers(rng, x, class_ids, n_out, self.scales, self.lo_hi, self.floor)
        out_rows = n_known + np.arange(n_out)
        # a known row's random negative may be an outlier too (they are negatives of every class)
        neg = np.where(rng.random(n_known) < n_out / (n_known + n_out), rng.choice(out_rows, n_known), neg)
        first_id = len(self.scales)
        y = np.concatenate([np.stack([ids, pos, neg], axis=1),
                            np.stack([first_id + np.arange(n_out), out_rows, rng.integers(0, n_known, n_out)], axis=1)])
        return np.concatenate([x[rows], xo]), y.astype(np.float32)

    def batches(self, rng: np.random.Generator, x: np.ndarray, class_ids: np.ndarray
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Endless training batches."""
        while True:
            yield self.batch(rng, x, class_ids)

    def fixed(self, rng: np.random.Generator, x: np.ndarray, class_ids: np.ndarray, n_batches: int
              ) -> tuple[np.ndarray, np.ndarray]:
        """``n_batches`` batches stacked (the validation set: the same every epoch)."""
        parts = [self.batch(rng, x, class_ids) for _ in range(n_batches)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
