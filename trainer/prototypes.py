"""Class prototypes in embedding space: fit, calibrate thresholds, add/list/remove classes.

* :func:`fit_prototypes`: per class, the coordinate-wise ``median`` of its embeddings (default;
  robust to the odd mislabelled or transitional window), the ``mean``, the ``medoid`` (the member
  window with the smallest summed distance to the others: always a real embedding), or ``kmeans``
  (``prototypes.per_class`` centroids, scipy ``kmeans2`` with a fixed seed, for classes with
  several modes). A window's distance to a class is the Euclidean distance to the class's nearest
  prototype point (:meth:`Prototypes.distances`).
* :func:`calibrate_thresholds`: a class's threshold is the ``threshold_quantile`` of its own windows'
  distances to it, times ``threshold_scale``, and at least ``min_threshold``. Training fits the prototypes on training windows and
  calibrates on VALIDATION windows (the encoder pulled its training windows tighter than it will
  pull unseen ones, so training distances would give thresholds that are too small).
* :func:`add_class`: a new class from a few (>= ``min_support``) windows, without retraining.

``netsiam prototypes add|list|remove`` (:func:`cli_prototypes`) edits an artifact in place; the
prototypes file and then the manifest (which records the file's hash) are each replaced atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from netsiam.config import Config, PrototypeConfig
from netsiam.errors import NetsiamError, UsageError
from netsiam.schemas.classes import LABEL_RULE, NORMAL, VERDICTS, is_label_name
from netsiam.serving import Artifact, Prototypes, load_artifact

__all__ = [
    "MEDOID_MAX",
    "add_class",
    "add_support",
    "calibrate_thresholds",
    "check_class_name",
    "class_points",
    "class_threshold",
    "cli_prototypes",
    "fit_prototypes",
    "format_table",
    "support_points",
]

MEDOID_MAX = 2000  # medoid search is O(n^2): larger classes are subsampled (fixed seed) to this many


def class_points(emb: np.ndarray, method: str, per_class: int = 1, seed: int = 0) -> np.ndarray:
    """One class's embeddings (n, D) -> its prototype point(s) (k, D)."""
    emb = np.asarray(emb, dtype=np.float64)
    if emb.ndim != 2 or len(emb) == 0:
        raise ValueError(f"need a non-empty (n, D) array of embeddings, got {emb.shape}")
    if method == "median":
        return np.median(emb, axis=0, keepdims=True)
    if method == "mean":
        return emb.mean(axis=0, keepdims=True)
    if method == "medoid":
        cand = emb
        if len(cand) > MEDOID_MAX:
            cand = cand[np.sort(np.random.default_rng(seed).choice(len(cand), MEDOID_MAX, replace=False))]
        d = np.sqrt(((cand[:, None, :] - cand[None, :, :]) ** 2).sum(-1))  # (n, n)
        return cand[[int(d.sum(axis=1).argmin())]]
    if method == "kmeans":
        from scipy.cluster.vq import kmeans2

        k = min(per_class, len(np.unique(emb, axis=0)))
        if k <= 1:
            return np.median(emb, axis=0, keepdims=True)
        centroids, assign = kmeans2(emb, k, minit="++", seed=np.random.default_rng(seed))
        used = np.unique(assign)                 # a centroid that lost all its points is dropped
        return np.asarray(centroids[used], dtype=np.float64)
    raise ValueError(f"unknown prototype method {method!r}")


def class_threshold(dist: np.ndarray, pcfg: PrototypeConfig) -> float:
    """Distances of a class's own windows to it -> threshold: quantile x scale, at least
    ``min_threshold``, at most ``max_threshold``.

    The floor matters because the sigmoid embedding saturates: a well-trained class sits in a
    corner of the cube and its held-out windows may all lie within 0.001 of the prototype, so the
    quantile of a few dozen of them says little about the next episode (a new load level, another
    source). Trained with outlier exposure, known classes sit in corners of the cube ~1 apart and
    what no class looks like lands far from every prototype, so the floor (0.7 by default)
    mostly stops a tight class from calling its own slightly shifted
    windows (another testbed, another load, a phase of the fault its few training episodes did not
    show) unknown. It is not free: a class prototype mid-face of the cube has no point much
    further than 0.74 from it on its own side, and real slow-answer windows land 0.67-0.70 from
    ``normal``, inside a 0.7 floor; the shipped recipe uses 0.6 (default_model.TRAIN_OVERRIDES).
    The cap keeps one stray calibration window
    from stretching a class over a neighbouring corner, where new faults land.
    """
    q = float(np.quantile(np.asarray(dist, np.float64), pcfg.threshold_quantile)) if len(dist) else 0.0
    return min(max(q * pcfg.threshold_scale, pcfg.min_threshold), max(pcfg.max_threshold, pcfg.min_threshold))


def fit_prototypes(emb: np.ndarray, labels: np.ndarray, pcfg: PrototypeConfig, *,
                   classes: Sequence[str] | None = None, seed: int = 0) -> Prototypes:
    """Embeddings (N, D) + labels (N,) -> prototypes of ``classes`` (default: every label, sorted).

    Thresholds are set from these same windows; call :func:`calibrate_thresholds` with held-out
    windows to replace them. ``support`` is the number of windows each class was fitted on.
    """
    emb = np.asarray(emb, dtype=np.float64)
    labels = np.asarray(labels, dtype=object)
    if emb.ndim != 2 or len(emb) != len(labels):
        raise ValueError(f"embeddings (N, D) and labels (N,) must match, got {emb.shape} and {labels.shape}")
    names = list(classes) if classes is not None else sorted(set(labels.tolist()))
    protos = Prototypes(method=pcfg.method)
    for name in names:
        mine = emb[labels == name]
        if len(mine) == 0:
            raise NetsiamError(f"class {name!r} has no windows to fit a prototype on")
        pts = class_points(mine, pcfg.method, pcfg.per_class, seed)
        protos.set(str(name), pts, 0.0, len(mine))
        j = protos.classes.index(str(name))
        protos.thresholds[j] = class_threshold(protos.distances(mine)[:, j], pcfg)
    return protos


def calibrate_thresholds(protos: Prototypes, emb: np.ndarray, labels: np.ndarray, pcfg: PrototypeConfig, *,
                         min_windows: int | None = None) -> dict[str, int]:
    """Set each class's threshold from these (held-out) windows of that class, in place.

    Only windows whose nearest prototype is their own class count: a window the nearest-prototype
    rule already gets wrong says nothing about how far the class reaches (with few held-out windows
    one such stray would set the 0.99 quantile on its own). A class with fewer than
    ``min_windows`` (default ``pcfg.min_support``) such windows here keeps its threshold. Returns
    how many windows calibrated each class (0: kept).
    """
    emb = np.asarray(emb, dtype=np.float64)
    labels = np.asarray(labels, dtype=object)
    need = pcfg.min_support if min_windows is None else min_windows
    used: dict[str, int] = {}
    dist = protos.distances(emb) if len(emb) else np.zeros((0, len(protos.classes)))  # (N, C)
    nearest = dist.argmin(axis=1) if len(emb) else np.zeros(0, dtype=np.int64)
    for j, name in enumerate(protos.classes):
        mine = (labels == name) & (nearest == j)
        used[name] = int(mine.sum()) if mine.sum() >= need else 0
        if used[name]:
            protos.thresholds[j] = class_threshold(dist[mine, j], pcfg)
    return used


def check_class_name(name: str) -> None:
    """A class takes a name a labels CSV or a feedback message could give it, but the detector's own verdicts
    (``unknown``, ``silent``)."""
    if name in VERDICTS:
        raise NetsiamError(f"class name {name!r} is reserved (the detector's verdict)")
    if not is_label_name(name):
        raise NetsiamError(f"bad class name {name!r} ({LABEL_RULE}): labels and feedback could never name it")


def add_class(artifact: Artifact, name: str, x_windows: np.ndarray, pcfg: PrototypeConfig | None = None, *,
              seed: int = 0) -> float:
    """Embed ``x_windows`` (N, T, F) and add (or replace) class ``name``; returns its threshold.

    The threshold is ``max(quantile x scale of the support windows' distances, median of the other
    classes' thresholds)``. Why the floor: with 5 windows the 0.99 quantile is just the largest of
    5 distances, which on average sits near the class's 83rd percentile (1 - 1/(n+1)), so a threshold
    from so few windows alone would reject a good share of the class's future windows as
    ``unknown``. The other classes' thresholds were calibrated on hundreds of held-out windows in
    the same embedding space, trained with the same margin, so their median is the best prior for how
    far a class's windows stray from its prototype. Nearest-prototype classification is not affected
    by the floor; only the unknown cut-off is. (``prototypes.min_threshold`` applies as everywhere.)

    With ``method: kmeans`` the class gets at most ``len(x) // min_support`` points, so each point
    stands on at least ``min_support`` windows.
    """
    pcfg = pcfg or PrototypeConfig()
    check_class_name(name)
    x = np.asarray(x_windows, dtype=np.float32)
    if len(x) < pcfg.min_support:
        raise NetsiamError(f"class {name!r}: {len(x)} example window(s), need at least {pcfg.min_support} "
                           "(prototypes.min_support)")
    try:
        emb = artifact.embed(x).astype(np.float64)                     # (N, T, F) -> (N, D)
    except ValueError as e:
        raise NetsiamError(f"class {name!r}: windows do not fit the model ({e})") from None
    protos = artifact.prototypes
    pos = protos.classes.index(name) if name in protos.classes else None
    if pos is not None:
        protos.remove(name)
    add_support(protos, name, emb, pcfg, seed=seed)
    if pos is not None:   # a replaced class keeps its place
        columns: list[list[Any]] = [protos.classes, protos.points, protos.thresholds, protos.support]
        for col in columns:
            col.insert(pos, col.pop())
    return protos.thresholds[protos.classes.index(name)]


def support_points(emb: np.ndarray, pcfg: PrototypeConfig, *, points: int | None = None, seed: int = 0) -> np.ndarray:
    """Embeddings (n, D) of one class's new windows -> the point(s) (k, D) to add for them:
    ``prototypes.method``'s, or with ``points`` up to that many k-means points, each on at least
    ``min_support`` windows."""
    emb = np.asarray(emb, dtype=np.float64)
    k = max(1, min(points or pcfg.per_class, len(emb) // pcfg.min_support))
    return class_points(emb, "kmeans" if points else pcfg.method, k, seed)


def add_support(protos: Prototypes, name: str, emb: np.ndarray, pcfg: PrototypeConfig, *, seed: int = 0,
                pts: np.ndarray | None = None) -> np.ndarray:
    """Embeddings (n, D) of windows of class ``name`` -> the class gains points fitted on them
    (:func:`support_points`, unless ``pts`` gives them); a class not yet there is created. Returns the
    new points (k, D).

    A new class's threshold follows :func:`add_class`'s rule; a known class keeps the larger of its
    own threshold and the one these windows give (capped by ``max_threshold`` as everywhere), so
    support never shrinks what the class already covers.
    """
    emb = np.asarray(emb, dtype=np.float64)
    pts = support_points(emb, pcfg, seed=seed) if pts is None else np.atleast_2d(pts)
    d = np.sqrt(((emb[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).min(axis=1)  # (n,)
    thr = class_threshold(d, pcfg)
    if name in protos.classes:
        j = protos.classes.index(name)
        protos.set(name, np.vstack([protos.points[j], pts]), max(protos.thresholds[j], thr),
                   protos.support[j] + len(emb))
        return pts
    others = [t for c, t in zip(protos.classes, protos.thresholds, strict=True) if c != name]
    if others:
        thr = max(thr, float(np.median(others)))
    protos.set(name, pts, thr, len(emb))
    return pts


def format_table(protos: Prototypes) -> str:
    """class / points / threshold / support, one row per class."""
    width = max([len("class"), *(len(c) for c in protos.classes)])
    lines = [f"{'class':<{width}}  points  threshold  support"]
    for c, p, t, s in zip(protos.classes, protos.points, protos.thresholds, protos.support, strict=True):
        lines.append(f"{c:<{width}}  {len(p):>6}  {t:>9.4f}  {s:>7}")
    return "\n".join(lines)


def _support_windows(args: argparse.Namespace, cfg: Config, artifact: Artifact) -> np.ndarray:
    """Windows labelled ``--label`` (default ``--name``), not straddling a label change, windowed
    exactly as the model expects (its manifest's window settings and features)."""
    from netsiam.trainer.dataset import build_windows

    cfg = dataclasses.replace(cfg, window=artifact.window, features=artifact.features)
    label = args.label or args.name
    lw = build_windows(args.data, args.labels, cfg)
    mine = np.flatnonzero((lw.labels == label) & ~lw.straddle)
    if args.max_examples is not None:
        if args.max_examples < 1:
            raise NetsiamError(f"--max-examples must be >= 1, got {args.max_examples}")
        if len(mine) > args.max_examples:    # evenly spread over the labelled windows, in time order
            mine = mine[np.round(np.linspace(0, len(mine) - 1, args.max_examples)).astype(int)]
    if len(mine) < cfg.prototypes.min_support:
        found = sorted(set(lw.labels.tolist()))
        raise NetsiamError(f"{len(mine)} window(s) labelled {label!r} (not straddling a label change), need at "
                           f"least {cfg.prototypes.min_support}; labels found: {', '.join(found)}")
    return lw.x[mine]


def cli_prototypes(args: argparse.Namespace, cfg: Config) -> int:
    """``netsiam prototypes add|list|remove [--model DIR] ...`` (default: ``detector.model``; ``list`` then
    falls back to the shipped model, which ``add`` and ``remove`` never change, as ``feedback`` does not)."""
    from netsiam.versions import locked, writable_model

    if args.action == "list":
        print(format_table(load_artifact(args.model or cfg.detector.model or None).prototypes))
        return 0
    model = writable_model(args.model or cfg.detector.model)
    with locked(model):   # one change at a time: `netsiam learn` may be teaching the same directory
        return _change(args, cfg, model)


def _change(args: argparse.Namespace, cfg: Config, model: Path) -> int:
    from netsiam.versions import publish

    artifact = load_artifact(model)
    protos, parent = artifact.prototypes, artifact.version
    if args.action == "remove":
        if args.name not in protos.classes:
            raise NetsiamError(f"no class {args.name!r} in {model} (classes: {', '.join(protos.classes)})")
        if len(protos.classes) == 1:
            raise NetsiamError(f"{args.name!r} is the only class; an artifact needs at least one")
        if args.name == NORMAL:
            raise UsageError("'normal' cannot be removed: every window would then be a fault or unknown")
        protos.remove(args.name)
        version = publish(model, artifact, parent, {"action": "remove", "label": args.name}, action="prototypes")
        print(f"removed {args.name!r}; classes: {', '.join(protos.classes)}; model {version} (was {parent}: "
              "`netsiam model rollback` restores it)")
        return 0
    if args.action == "add":
        check_class_name(args.name)   # before reading any window: the name alone can be wrong
        x = _support_windows(args, cfg, artifact)
        replaced = args.name in protos.classes
        thr = add_class(artifact, args.name, x, cfg.prototypes)
        version = publish(model, artifact, parent, {"action": "replace" if replaced else "add", "label": args.name,
                                                    "windows": len(x)}, action="prototypes")
        print(f"{'replaced' if replaced else 'added'} {args.name!r} from {len(x)} windows "
              f"(threshold {thr:.4f}); classes: {', '.join(protos.classes)}; model {version} (was {parent}: "
              "`netsiam model rollback` restores it)")
        return 0
    raise NetsiamError(f"unknown prototypes action {args.action!r}")
