"""Class-balanced P x K batches and random valid triplets (numpy; the online mining is in losses.py).

A training batch holds K = ``training.batch_per_class`` windows of each of the P classes (drawn
without replacement while a class has at least K windows, with replacement otherwise), in a
random row order. With it the generator draws, for every row a, one random positive (another
row with a's label) and one random negative (a row with another label). Those are ROW INDICES
into the same batch, shipped as ``y`` = (B, 3) ``[label, pos_row, neg_row]``, so the loss gathers
them from the batch's own embeddings and an anchor can never be paired with a row of another
batch or a shifted row (the classic bug of concatenating anchor/positive/negative tensors that
were shuffled or mined separately).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["balanced_batch", "fixed_batches", "random_triplets", "triplet_batches"]


def balanced_batch(rng: np.random.Generator, by_class: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """K windows of each class, shuffled: -> (window indices (P*K,), class ids (P*K,))."""
    rows, ids = [], []
    for c, pool in enumerate(by_class):
        rows.append(rng.choice(pool, size=k, replace=len(pool) < k))
        ids.append(np.full(k, c, dtype=np.int64))
    order = rng.permutation(len(by_class) * k)
    return np.concatenate(rows)[order], np.concatenate(ids)[order]


def random_triplets(rng: np.random.Generator, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row a: a random other row with a's label and a random row with another label.

    (B,) -> (pos (B,), neg (B,)); a row with no positive gets itself (a zero-distance pair), a row
    with no negative gets itself too (callers only build batches of >= 2 classes).
    """
    labels = np.asarray(labels)
    n = len(labels)
    pos = np.arange(n)
    neg = np.arange(n)
    for a in range(n):
        same = np.flatnonzero(labels == labels[a])
        same = same[same != a]
        other = np.flatnonzero(labels != labels[a])
        if len(same):
            pos[a] = same[rng.integers(len(same))]
        if len(other):
            neg[a] = other[rng.integers(len(other))]
    return pos, neg


def _batch(rng: np.random.Generator, x: np.ndarray, class_ids: np.ndarray, k: int
           ) -> tuple[np.ndarray, np.ndarray]:
    present = np.unique(class_ids)
    rows, ids = balanced_batch(rng, [np.flatnonzero(class_ids == c) for c in present], k)
    ids = present[ids]                                          # batch-local -> the caller's class ids
    pos, neg = random_triplets(rng, ids)
    y = np.stack([ids, pos, neg], axis=1).astype(np.float32)   # (B, 3): [label, pos_row, neg_row]
    return x[rows], y                                           # (B, T, F), (B, 3)


def triplet_batches(x: np.ndarray, class_ids: np.ndarray, k: int, rng: np.random.Generator
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless P x K training batches: (B, T, F) windows and (B, 3) ``[label, pos_row, neg_row]``."""
    class_ids = np.asarray(class_ids, dtype=np.int64)
    while True:
        yield _batch(rng, x, class_ids, k)


def fixed_batches(x: np.ndarray, class_ids: np.ndarray, k: int, n_batches: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``n_batches`` P x K batches stacked: (n*B, T, F), (n*B, 3). Evaluate with batch size P*K, in order.

    Used for the validation loss: the same batches every epoch, so epochs compare fairly.
    """
    class_ids = np.asarray(class_ids, dtype=np.int64)
    parts = [_batch(rng, x, class_ids, k) for _ in range(n_batches)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
