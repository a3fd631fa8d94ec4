"""Window-level scores shared by ``netsiam evaluate`` and ``netsiam train``: accuracy with ``unknown``,
per-class precision/recall, the confusion matrix and the pair ROC AUC of the embedding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from netsiam.schemas.classes import UNKNOWN

__all__ = ["MAX_PAIRS", "accuracy", "confusion", "open_set_truth", "pair_scores", "per_class_metrics", "roc_auc",
           "roc_curve"]

MAX_PAIRS = 200_000
PAIR_SEED = 0


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
