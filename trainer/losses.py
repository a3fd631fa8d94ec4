"""Triplet losses and online triplet mining, in ``keras.ops`` only (TensorFlow, PyTorch and JAX alike).

Distances are SQUARED Euclidean distances between embeddings in the unit cube [0, 1]^D, so they lie
in [0, D].

Two per-triplet losses, chosen by ``training.loss``:

* ``triplet``: the hinge ``max(d_ap - d_an + margin, 0)`` (FaceNet).
* ``lossless``: Arnaud de Brouwer's "lossless triplet loss" for sigmoid outputs, with beta = D:
  ``-ln(-d_ap / beta + 1 + eps) - ln(-(D - d_an) / beta + 1 + eps)``. It never reaches zero, so
  every triplet keeps a gradient, and it grows steeply as a positive approaches the far corner of
  the cube or a negative approaches the anchor.

Online mining (:func:`semi_hard_negatives`): within one batch of embeddings with integer labels,
every ordered anchor-positive pair (a, p), a != p, gets ONE negative n (a row whose label differs
from a's): the hardest semi-hard negative, i.e. the smallest d(a, n) with
``d(a, p) < d(a, n) < d(a, p) + margin``; when a pair has no semi-hard negative, the hardest negative
(the smallest d(a, n) of all). Everything is indexed by row, never by position in a class block,
so the batch may be in any order (tests permute it).

:func:`mixed_triplet_loss` is the training objective: per anchor row,
``f * mean over its positives p of loss(a, p, mined n) + (1 - f) * loss(a, p_r, n_r)`` where
``f = training.semi_hard_fraction`` and ``(p_r, n_r)`` is a random valid positive and negative the
batch generator drew for that anchor (passed in ``y_true`` as row indices into the same batch).
Mined triplets focus the gradient on the boundary; random ones keep all of each class pulled
together and stop the early collapse that hard-negative fallback alone can cause.
"""

from __future__ import annotations

from typing import Any

from keras import ops

__all__ = [
    "LOSSES",
    "batch_all_triplet_loss",
    "lossless_triplet_loss",
    "make_training_loss",
    "mixed_triplet_loss",
    "pairwise_sq_distances",
    "semi_hard_negatives",
    "semi_hard_triplet_loss",
    "triplet_loss",
]

LOSSES = ("triplet", "lossless")
# The lossless loss's epsilon. de Brouwer's 1e-8 lets a collapsed triplet (a negative on its anchor,
# d_an = 0, as untrained saturated sigmoids give) push a gradient of 1 / (D * eps) = 3e7: on the real
# corpus every training went NaN within its first 5-54 batches. 1e-3 bounds it at 333 and changes the
# loss only within a thousandth of the cube's diagonal of its ends.
EPS = 1e-3
_BIG = 1e9  # stands in for +inf in masked minima (inf would turn 0 * inf gradients into NaN)

Tensor = Any  # a backend tensor (tf.Tensor, torch.Tensor, jax.Array) or a numpy array


def pairwise_sq_distances(emb: Tensor) -> Tensor:
    """(B, D) -> (B, B): squared Euclidean distances between every pair of rows.

    Computed from differences rather than ``|a|^2 - 2ab + |b|^2``: exact zeros on the diagonal
    and no cancellation, at a cost (B * B * D) that is nothing for training batch sizes.
    """
    diff = ops.expand_dims(emb, 1) - ops.expand_dims(emb, 0)  # (B, 1, D) - (1, B, D) -> (B, B, D)
    return ops.sum(ops.square(diff), axis=-1)                   # (B, B)


def triplet_loss(d_ap: Tensor, d_an: Tensor, margin: float) -> Tensor:
    """Hinge triplet loss on squared distances, elementwise: max(d_ap - d_an + margin, 0)."""
    return ops.relu(d_ap - d_an + margin)


def lossless_triplet_loss(d_ap: Tensor, d_an: Tensor, dim: int, eps: float = EPS) -> Tensor:
    """de Brouwer's lossless triplet loss for embeddings in [0, 1]^dim, elementwise (beta = dim)."""
    beta = float(dim)
    d_ap = ops.clip(d_ap, 0.0, beta)  # float error can push a distance a hair outside [0, dim]
    d_an = ops.clip(d_an, 0.0, beta)
    return -ops.log(-d_ap / beta + 1.0 + eps) - ops.log(-(beta - d_an) / beta + 1.0 + eps)


def _per_triplet(kind: str, d_ap: Tensor, d_an: Tensor, margin: float, dim: int) -> Tensor:
    if kind == "triplet":
        return triplet_loss(d_ap, d_an, margin)
    if kind == "lossless":
        return lossless_triplet_loss(d_ap, d_an, dim)
    raise ValueError(f"unknown loss {kind!r}; known: {', '.join(LOSSES)}")


def _masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(B,) int labels -> positive-pair mask (B, B) [a, p] (same label, a != p), negative mask [a, n]."""
    labels = ops.reshape(labels, (-1,))
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))  # (B, B)
    eye = ops.cast(ops.eye(ops.shape(labels)[0]), "bool")
    return ops.logical_and(same, ops.logical_not(eye)), ops.logical_not(same)


def semi_hard_negatives(d: Tensor, labels: Tensor, margin: float) -> tuple[Tensor, Tensor, Tensor]:
    """Mine one negative per anchor-positive pair from a distance matrix.

    d: (B, B) squared distances, labels: (B,) ints. Returns
    ``neg`` (B, B) int: row index of the negative chosen for pair [a, p];
    ``valid`` (B, B) bool: [a, p] is a real anchor-positive pair and a has at least one negative;
    ``semi`` (B, B) bool: the chosen negative is semi-hard (else it is the hardest-negative fallback).
    """
    pos_mask, neg_mask = _masks(labels)                         # (B, B) each
    d_ap = ops.expand_dims(d, 2)                                # (B, B, 1)  [a, p, .]
    d_an = ops.expand_dims(d, 1)                                # (B, 1, B)  [a, ., n]
    is_neg = ops.expand_dims(neg_mask, 1)                       # (B, 1, B)
    semi = ops.logical_and(is_neg, ops.logical_and(d_an > d_ap, d_an < d_ap + margin))  # (B, B, B) [a, p, n]
    has_semi = ops.any(semi, axis=2)                            # (B, B)
    semi_neg = ops.argmin(ops.where(semi, d_an, _BIG), axis=2)  # (B, B): hardest semi-hard n
    hardest = ops.argmin(ops.where(neg_mask, d, _BIG), axis=1)  # (B,): hardest n of anchor a
    neg = ops.where(has_semi, semi_neg, ops.expand_dims(hardest, 1))             # (B, B)
    valid = ops.logical_and(pos_mask, ops.expand_dims(ops.any(neg_mask, axis=1), 1))  # (B, B)
    return ops.cast(neg, "int32"), valid, ops.logical_and(has_semi, valid)


def semi_hard_triplet_loss(emb: Tensor, labels: Tensor, margin: float, kind: str = "triplet") -> Tensor:
    """Per anchor-positive pair loss with a mined negative: (B, D), (B,) -> (B, B), 0 where not valid."""
    d = pairwise_sq_distances(emb)                               # (B, B)
    neg, valid, _ = semi_hard_negatives(ops.stop_gradient(d), labels, margin)
    d_an = ops.take_along_axis(d, neg, axis=1)                   # (B, B): [a, p] -> d(a, neg[a, p])
    loss = _per_triplet(kind, d, d_an, margin, int(emb.shape[-1]))
    return ops.where(valid, loss, 0.0)


def batch_all_triplet_loss(emb: Tensor, labels: Tensor, margin: float) -> Tensor:
    """Batch-all hinge loss: mean over every valid (a, p, n) triplet with a positive loss (a scalar).

    Not the training objective (semi-hard mining is); kept as a reference strategy for experiments.
    """
    d = pairwise_sq_distances(emb)
    pos_mask, neg_mask = _masks(labels)
    loss = triplet_loss(ops.expand_dims(d, 2), ops.expand_dims(d, 1), margin)   # (B, B, B) [a, p, n]
    valid = ops.logical_and(ops.expand_dims(pos_mask, 2), ops.expand_dims(neg_mask, 1))
    loss = ops.where(valid, loss, 0.0)
    n_active = ops.sum(ops.cast(loss > 1e-12, "float32"))
    return ops.sum(loss) / ops.maximum(n_active, 1.0)


def mixed_triplet_loss(emb: Tensor, labels: Tensor, rand_pos: Tensor, rand_neg: Tensor, *, margin: float,
                       semi_hard_fraction: float, kind: str = "triplet") -> Tensor:
    """The training objective, one value per anchor row: (B, D) -> (B,).

    ``f * mean_p loss(a, p, mined n) + (1 - f) * loss(a, rand_pos[a], rand_neg[a])``; ``rand_pos`` and
    ``rand_neg`` (B,) are row indices into the same batch (the generator guarantees they are a
    valid positive and negative of row a).
    """
    f = float(semi_hard_fraction)
    dim = int(emb.shape[-1])
    d = pairwise_sq_distances(emb)                                              # (B, B)
    out = 0.0
    if f > 0.0:
        pair = semi_hard_triplet_loss(emb, labels, margin, kind)               # (B, B)
        n_pos = ops.sum(ops.cast(_masks(labels)[0], "float32"), axis=1)        # (B,)
        out = f * ops.sum(pair, axis=1) / ops.maximum(n_pos, 1.0)
    if f < 1.0:
        rows = ops.expand_dims(ops.cast(ops.reshape(rand_pos, (-1,)), "int32"), 1)  # (B, 1)
        negs = ops.expand_dims(ops.cast(ops.reshape(rand_neg, (-1,)), "int32"), 1)
        d_ap = ops.take_along_axis(d, rows, axis=1)[:, 0]                     # (B,): d(a, rand_pos[a])
        d_an = ops.take_along_axis(d, negs, axis=1)[:, 0]                     # (B,): d(a, rand_neg[a])
        out = out + (1.0 - f) * _per_triplet(kind, d_ap, d_an, margin, dim)
    return out


def make_training_loss(kind: str, margin: float, semi_hard_fraction: float) -> Any:
    """A Keras loss ``fn(y_true, y_pred) -> (B,)`` where y_true is (B, 3): [label, rand_pos, rand_neg]."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; known: {', '.join(LOSSES)}")

    def netsiam_triplet(y_true: Tensor, y_pred: Tensor) -> Tensor:
        y = ops.cast(y_true, "int32")                       # (B, 3)
        return mixed_triplet_loss(y_pred, y[:, 0], y[:, 1], y[:, 2], margin=margin,
                                  semi_hard_fraction=semi_hard_fraction, kind=kind)

    return netsiam_triplet
