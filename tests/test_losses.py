"""Triplet losses and mining against brute-force numpy references; class-balanced batches."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from netsiam.trainer.losses import (
    batch_all_triplet_loss,
    lossless_triplet_loss,
    make_training_loss,
    mixed_triplet_loss,
    pairwise_sq_distances,
    semi_hard_negatives,
    semi_hard_triplet_loss,
    triplet_loss,
)
from netsiam.trainer.mining import balanced_batch, fixed_batches, random_triplets, triplet_batches

MARGIN = 0.2
D = 3

# ------------------------------------------------------------------------------------ numpy references


def ref_sq_dist(emb: np.ndarray) -> np.ndarray:
    n = len(emb)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = float(np.sum((emb[i] - emb[j]) ** 2))
    return out


def ref_loss(kind: str, d_ap: float, d_an: float, margin: float = MARGIN, dim: int = D) -> float:
    if kind == "triplet":
        return max(d_ap - d_an + margin, 0.0)
    beta, eps = float(dim), 1e-3
    return -np.log(-d_ap / beta + 1 + eps) - np.log(-(dim - d_an) / beta + 1 + eps)


def ref_mine(emb: np.ndarray, labels: np.ndarray, margin: float = MARGIN) -> tuple[dict, dict]:
    """(a, p) -> chosen negative row, and (a, p) -> whether it is semi-hard; loops over every triplet."""
    d = ref_sq_dist(emb)
    chosen, semi = {}, {}
    n = len(labels)
    for a in range(n):
        negs = [k for k in range(n) if labels[k] != labels[a]]
        if not negs:
            continue
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            cands = [k for k in negs if d[a, p] < d[a, k] < d[a, p] + margin]
            if cands:
                chosen[a, p], semi[a, p] = min(cands, key=lambda k: d[a, k]), True
            else:
                chosen[a, p], semi[a, p] = min(negs, key=lambda k: d[a, k]), False
    return chosen, semi


def ref_pair_loss(emb: np.ndarray, labels: np.ndarray, kind: str = "triplet") -> np.ndarray:
    d = ref_sq_dist(emb)
    out = np.zeros((len(emb), len(emb)))
    for (a, p), n in ref_mine(emb, labels)[0].items():
        out[a, p] = ref_loss(kind, d[a, p], d[a, n])
    return out


def ref_mixed(emb: np.ndarray, labels: np.ndarray, pos: np.ndarray, neg: np.ndarray, f: float,
              kind: str = "triplet") -> np.ndarray:
    d = ref_sq_dist(emb)
    pair = ref_pair_loss(emb, labels, kind)
    out = np.zeros(len(emb))
    for a in range(len(emb)):
        n_pos = sum(1 for p in range(len(emb)) if p != a and labels[p] == labels[a])
        mined = pair[a].sum() / max(n_pos, 1)
        out[a] = f * mined + (1 - f) * ref_loss(kind, d[a, pos[a]], d[a, neg[a]])
    return out


def np_(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x))


def random_batch(seed: int, n: int = 18, classes: int = 3, spread: float = 0.35) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings in [0,1]^3 loosely clustered by class, labels in random (not blocked) order."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes)
    centres = rng.random((classes, D))
    emb = np.clip(centres[labels] + rng.normal(0, spread, (n, D)), 0, 1).astype(np.float32)
    return emb, labels.astype(np.int32)


# ------------------------------------------------------------------------------------ losses


def test_pairwise_sq_distances_match_numpy() -> None:
    emb, _ = random_batch(0)
    np.testing.assert_allclose(np_(pairwise_sq_distances(emb)), ref_sq_dist(emb.astype(np.float64)),
                               rtol=1e-5, atol=1e-6)
    assert np.all(np.diag(np_(pairwise_sq_distances(emb))) == 0)


def test_elementwise_losses_match_formulas() -> None:
    rng = np.random.default_rng(1)
    d_ap, d_an = rng.uniform(0, D, 50).astype(np.float32), rng.uniform(0, D, 50).astype(np.float32)
    np.testing.assert_allclose(np_(triplet_loss(d_ap, d_an, MARGIN)),
                               [ref_loss("triplet", a, n) for a, n in zip(d_ap, d_an, strict=True)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np_(lossless_triplet_loss(d_ap, d_an, D)),
                               [ref_loss("lossless", a, n) for a, n in zip(d_ap, d_an, strict=True)], rtol=1e-4, atol=1e-5)


def test_lossless_is_least_at_the_ideal_and_finite_at_the_extremes() -> None:
    ideal = np_(lossless_triplet_loss(np.float32(0.0), np.float32(D), D))
    worst = np_(lossless_triplet_loss(np.float32(D), np.float32(0.0), D))
    assert abs(float(ideal) + 2 * np.log1p(1e-3)) < 1e-6   # its minimum, -2 ln(1 + eps): ~0
    assert np.isfinite(worst) and worst > 13  # -2 ln(eps)


def test_lossless_gradient_stays_bounded_when_a_triplet_collapses() -> None:
    """A negative on its anchor (d_an = 0) and a positive at the far corner: with eps = 1e-8 the gradient
    was 3.3e7 and training on the real corpus went NaN in its first batches."""
    import tensorflow as tf

    d_ap, d_an = tf.Variable([float(D), 0.0, 1.0]), tf.Variable([0.0, 0.0, 2.0])
    with tf.GradientTape() as tape:
        loss = lossless_triplet_loss(d_ap, d_an, D)
    g_ap, g_an = (np.abs(g.numpy()) for g in tape.gradient(loss, [d_ap, d_an]))
    assert np.all(np.isfinite(loss.numpy()))
    assert g_ap.max() <= 1.0 / (D * 1e-3) + 1e-3 and g_an.max() <= 1.0 / (D * 1e-3) + 1e-3


@pytest.mark.parametrize("seed", range(6))
def test_semi_hard_mining_matches_brute_force(seed: int) -> None:
    emb, labels = random_batch(seed, spread=0.25 + 0.1 * seed)
    neg, valid, semi = (np_(t) for t in semi_hard_negatives(pairwise_sq_distances(emb), labels, MARGIN))
    chosen, is_semi = ref_mine(emb.astype(np.float64), labels)
    assert set(zip(*np.nonzero(valid), strict=True)) == set(chosen)
    for (a, p), n in chosen.items():
        assert neg[a, p] == n, (a, p)
        assert bool(semi[a, p]) == is_semi[(a, p)]
    assert semi.any() and (valid & ~semi).any(), "the batch should exercise both branches"


@pytest.mark.parametrize("kind", ["triplet", "lossless"])
@pytest.mark.parametrize("seed", range(4))
def test_semi_hard_pair_loss_matches_brute_force(kind: str, seed: int) -> None:
    emb, labels = random_batch(10 + seed)
    got = np_(semi_hard_triplet_loss(emb, labels, MARGIN, kind))
    np.testing.assert_allclose(got, ref_pair_loss(emb.astype(np.float64), labels, kind), rtol=1e-4, atol=1e-5)


def test_semi_hard_negative_is_chosen_when_one_exists() -> None:
    # anchor 0 and positive 1 at squared distance 0.01; negatives at 0.0025 (hard), 0.04 (semi-hard),
    # 0.09 (semi-hard, easier), 1.0 (easy): the hardest semi-hard one (row 3) must win.
    emb = np.array([[0, 0, 0], [0.1, 0, 0], [0, 0.05, 0], [0, 0.2, 0], [0, 0.3, 0], [0, 1.0, 0]], np.float32)
    labels = np.array([0, 0, 1, 1, 1, 1], np.int32)
    neg, valid, semi = (np_(t) for t in semi_hard_negatives(pairwise_sq_distances(emb), labels, MARGIN))
    assert valid[0, 1] and semi[0, 1] and neg[0, 1] == 3


def test_hardest_negative_is_the_fallback() -> None:
    # d(a, p) = 0.64; negatives at 0.0025 and 0.01 (both harder than p) and 4 (easy): no semi-hard one,
    # so the hardest (row 2, the closest) is taken and the loss is d_ap - d_an + margin.
    emb = np.array([[0, 0, 0], [0.8, 0, 0], [0, 0.05, 0], [0, 0.1, 0], [0, 0, 1.0]], np.float32)
    labels = np.array([5, 5, 9, 9, 7], np.int32)
    neg, valid, semi = (np_(t) for t in semi_hard_negatives(pairwise_sq_distances(emb), labels, MARGIN))
    assert valid[0, 1] and not semi[0, 1] and neg[0, 1] == 2
    loss = np_(semi_hard_triplet_loss(emb, labels, MARGIN))
    assert loss[0, 1] == pytest.approx(0.64 - 0.0025 + MARGIN, rel=1e-5)


def test_twins_in_shuffled_order_are_mined_per_anchor_row() -> None:
    """Every label occurs exactly twice, at random positions: each anchor has one positive and its
    negative must be judged by distances from THAT anchor row (a miner that assumed class blocks,
    or read another anchor's row of the distance matrix, picks a different window)."""
    rng = np.random.default_rng(5)
    labels = rng.permutation(np.repeat(np.arange(6), 2)).astype(np.int32)
    emb = (rng.random((6, D)) * 0.8)[labels] + rng.normal(0, 0.12, (12, D))
    emb = np.clip(emb, 0, 1).astype(np.float32)
    neg, valid, semi = (np_(t) for t in semi_hard_negatives(pairwise_sq_distances(emb), labels, MARGIN))
    chosen, is_semi = ref_mine(emb.astype(np.float64), labels)
    d = ref_sq_dist(emb.astype(np.float64))
    assert valid.sum() == 12 and len(chosen) == 12           # one positive per anchor
    for (a, p), want in chosen.items():
        assert labels[p] == labels[a] and p != a
        assert neg[a, p] == want and labels[neg[a, p]] != labels[a]
        if semi[a, p]:
            assert d[a, p] < d[a, neg[a, p]] < d[a, p] + MARGIN
        else:
            assert d[a, neg[a, p]] == min(d[a, k] for k in range(12) if labels[k] != labels[a])
    assert semi.any() and (valid & ~semi).any()


@pytest.mark.parametrize("kind", ["triplet", "lossless"])
def test_permuting_the_batch_permutes_the_losses(kind: str) -> None:
    emb, labels = random_batch(21, n=15)
    perm = np.random.default_rng(3).permutation(len(emb))
    base = np_(semi_hard_triplet_loss(emb, labels, MARGIN, kind))
    permuted = np_(semi_hard_triplet_loss(emb[perm], labels[perm], MARGIN, kind))
    np.testing.assert_allclose(permuted, base[np.ix_(perm, perm)], rtol=1e-5, atol=1e-6)
    neg = np_(semi_hard_negatives(pairwise_sq_distances(emb), labels, MARGIN)[0])
    neg_p = np_(semi_hard_negatives(pairwise_sq_distances(emb[perm]), labels[perm], MARGIN)[0])
    valid = np_(semi_hard_negatives(pairwise_sq_distances(emb[perm]), labels[perm], MARGIN)[1])
    for i, j in zip(*np.nonzero(valid), strict=True):
        assert perm[neg_p[i, j]] == neg[perm[i], perm[j]]   # the same window is chosen, wherever it sits


@pytest.mark.parametrize("kind", ["triplet", "lossless"])
@pytest.mark.parametrize("f", [0.0, 0.5, 0.75, 1.0])
def test_mixed_loss_matches_reference(kind: str, f: float) -> None:
    emb, labels = random_batch(31, n=12)
    pos, neg = random_triplets(np.random.default_rng(0), labels)
    got = np_(mixed_triplet_loss(emb, labels, pos, neg, margin=MARGIN, semi_hard_fraction=f, kind=kind))
    np.testing.assert_allclose(got, ref_mixed(emb.astype(np.float64), labels, pos, neg, f, kind), rtol=1e-4, atol=1e-5)


def test_keras_loss_reads_labels_and_triplet_rows_from_y_true() -> None:
    emb, labels = random_batch(41, n=12)
    pos, neg = random_triplets(np.random.default_rng(1), labels)
    y = np.stack([labels, pos, neg], axis=1).astype(np.float32)
    fn = make_training_loss("triplet", MARGIN, 0.75)
    np.testing.assert_allclose(np_(fn(y, emb)), ref_mixed(emb.astype(np.float64), labels, pos, neg, 0.75),
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown loss"):
        make_training_loss("contrastive", MARGIN, 0.5)


def test_batch_all_matches_reference() -> None:
    emb, labels = random_batch(51, n=12)
    d = ref_sq_dist(emb.astype(np.float64))
    losses = [max(d[a, p] - d[a, n] + MARGIN, 0) for a in range(12) for p in range(12) for n in range(12)
              if a != p and labels[a] == labels[p] and labels[n] != labels[a]]
    active = [x for x in losses if x > 1e-12]
    assert float(np_(batch_all_triplet_loss(emb, labels, MARGIN))) == pytest.approx(np.sum(active) / len(active), rel=1e-4)


def test_gradients_stay_finite_when_the_embedding_has_collapsed() -> None:
    """All embeddings equal (the start of a bad run): masked minima must not turn into NaN gradients."""
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(D, activation="sigmoid", kernel_initializer="zeros")(inp))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=make_training_loss("triplet", MARGIN, 0.5))
    labels = np.arange(12) % 3
    pos, neg = random_triplets(np.random.default_rng(0), labels)
    y = np.stack([labels, pos, neg], axis=1).astype(np.float32)
    x = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss) and loss == pytest.approx(MARGIN, rel=1e-5)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


# ------------------------------------------------------------------------------------ batches


def test_balanced_batch_has_k_of_each_class_in_shuffled_order() -> None:
    rng = np.random.default_rng(0)
    pools = [np.arange(0, 100), np.arange(100, 103), np.arange(103, 150)]   # class 1 has fewer than K
    rows, ids = balanced_batch(rng, pools, k=8)
    assert len(rows) == 24
    assert np.bincount(ids).tolist() == [8, 8, 8]
    for c, pool in enumerate(pools):
        assert np.isin(rows[ids == c], pool).all()
    assert len(set(rows[ids == 0].tolist())) == 8          # without replacement when the class has enough
    assert not np.array_equal(ids, np.sort(ids))            # not in class blocks


def test_random_triplets_are_valid_rows_of_the_same_batch() -> None:
    labels = np.random.default_rng(2).permutation(np.arange(30) % 3)
    pos, neg = random_triplets(np.random.default_rng(3), labels)
    assert np.all(pos != np.arange(30))
    assert np.all(labels[pos] == labels) and np.all(labels[neg] != labels)


def test_triplet_batches_keep_labels_aligned_with_windows() -> None:
    # each window carries its own class id in every value, so a misaligned row is visible
    class_ids = np.repeat([0, 1, 2], [50, 7, 30])
    x = np.broadcast_to(class_ids[:, None, None], (87, 5, 2)).astype(np.float32)
    gen = triplet_batches(x, class_ids, 6, np.random.default_rng(0))
    for _ in range(5):
        xb, yb = next(gen)
        assert xb.shape == (18, 5, 2) and yb.shape == (18, 3)
        lab, pos, neg = yb[:, 0].astype(int), yb[:, 1].astype(int), yb[:, 2].astype(int)
        assert np.all(xb[:, 0, 0] == lab)
        assert np.all(lab[pos] == lab) and np.all(pos != np.arange(18)) and np.all(lab[neg] != lab)


def test_fixed_batches_are_deterministic_and_use_the_callers_class_ids() -> None:
    class_ids = np.repeat([2, 5], [20, 20])
    x = np.arange(40, dtype=np.float32).reshape(40, 1, 1)
    a = fixed_batches(x, class_ids, 4, 3, np.random.default_rng(7))
    b = fixed_batches(x, class_ids, 4, 3, np.random.default_rng(7))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].shape == (24, 1, 1) and set(a[1][:, 0].tolist()) == {2.0, 5.0}
    for i in range(3):   # the row indices of each batch point inside that batch
        y = a[1][i * 8:(i + 1) * 8]
        assert y[:, 1:].max() < 8
