"""``netsiam train``: traces + labels -> model artifact. Reads top to bottom:

1. data: window every trace exactly as the daemon will; windows straddling a label change are
   kept out of training and validation (their one label is half wrong); per source, the last
   ``val_fraction`` of its time span is validation, and training windows end at least one window
   length before it, so no sample is in both. Optionally (``training.thinning``) the training
   windows get thinned copies: the same windows with calls dropped at random, as the same testbed
   would show them at a lower load (a real recording comes at one load; the simulator spans many).
2. normalisation: mean/variance of the training windows, baked into the encoder and the manifest.
3. model + objective: the siamese encoder (one network embeds every window) trained on P x K
   class-balanced batches with the mixed semi-hard/random triplet loss (trainer.losses), plus
   synthetic outliers (``training.outlier_fraction``, :class:`Exposure`): training windows with one
   or two features pushed far outside their class's spread, which are negatives of every class and
   positives of none. Without them the triplet loss is satisfied by any map that separates the
   known classes, and a new fault lands wherever that map happens to send it (often onto a known
   class); with them the encoder learns to send what no known class looks like away from all of
   them, where the distance thresholds call it ``unknown``.
4. fit: per epoch the validation loss on fixed validation batches (with fixed outliers made from
   validation windows), the validation n-way accuracy (nearest median prototype of training
   embeddings), an embedding snapshot of fixed validation windows, TensorBoard logs; the best
   weights by validation loss are checkpointed and restored.
5. prototypes on training windows, thresholds calibrated on validation windows, metrics.
6. artifact: encoder.keras, prototypes.json, manifest.json (+ history.json, snapshots.npz).

Keras/TensorFlow are imported only once the data has loaded, so a bad path fails fast with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from scipy.stats import rankdata

from netsiam.config import Config, override
from netsiam.errors import NetsiamError
from netsiam.features import RAW_METRICS, derive, required_metrics
from netsiam.schemas.classes import KNOWN_LABELS, NORMAL
from netsiam.serving import FORMAT, Artifact, Prototypes
from netsiam.traceio import atomic_write_bytes, read_labels
from netsiam.trainer.baselines import RawNearestPrototype, ZScoreRule
from netsiam.trainer.dataset import LabelledWindows, build_windows
from netsiam.trainer.mining import balanced_batch, fixed_batches, random_triplets, triplet_batches
from netsiam.trainer.prototypes import calibrate_thresholds, fit_prototypes

__all__ = ["CHECKPOINT_FILE", "HISTORY_FILE", "SNAPSHOTS_FILE", "cli_train", "in_aftermath", "load_windows", "pair_auc",
           "label_runs", "split_validation", "train"]

SNAPSHOTS_FILE, HISTORY_FILE, CHECKPOINT_FILE = "snapshots.npz", "history.json", "checkpoint.weights.h5"
VAR_FLOOR = 1e-6          # a feature constant in training must not divide by ~0 at inference
MONITOR_PER_CLASS = 300   # training windows per class behind the per-epoch validation prototypes
VAL_BATCHES = (4, 16)     # fixed validation batches: at least 4, at most 16, else ~one pass over val
MIN_TRAIN_WINDOWS = 2     # per class: a prototype and a spread need at least two
AFTERMATH_S = 35.0        # after a fault: its calls time out (SIP timer B, 32 s) and its backlog is answered


# ----------------------------------------------------------------------------------------------- data

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
    cat = {f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(LabelledWindows)}
    return LabelledWindows(**cat), np.concatenate(groups)


def label_runs(end_ts: np.ndarray, groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) run id: consecutive windows (by time) of one group carrying one label share a run."""
    order = np.lexsort((end_ts, groups))
    g, lab = groups[order], labels[order]
    new_run = np.r_[True, (g[1:] != g[:-1]) | (lab[1:] != lab[:-1])]
    runs = np.empty(len(end_ts), dtype=np.int64)
    runs[order] = np.cumsum(new_run) - 1
    return runs


def in_aftermath(end_ts: np.ndarray, groups: np.ndarray, labels: np.ndarray, seconds: float) -> np.ndarray:
    """(N,) normal windows ending within ``seconds`` after their group's last fault window: the backlog
    answered in a burst, retransmissions draining, the fault's calls timing out; normal by label, far
    from clean normal traffic."""
    out = np.zeros(len(end_ts), dtype=bool)
    order = np.lexsort((end_ts, groups))
    last_fault: dict[object, float] = {}
    for k in order:
        g = groups[k]
        if labels[k] != NORMAL:
            last_fault[g] = end_ts[k]
        elif g in last_fault and end_ts[k] - last_fault[g] <= seconds:
            out[k] = True
    return out


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


def pair_auc(emb: np.ndarray, labels: np.ndarray, max_pairs: int = 200_000, seed: int = 0) -> float | None:
    """ROC AUC of -distance for "same label" over window pairs (as ``netsiam evaluate`` reports it)."""
    n = len(emb)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i, j = rng.integers(0, n, max_pairs), rng.integers(0, n - 1, max_pairs)
        j = j + (j >= i)
    pos = labels[i] == labels[j]
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(-np.sqrt(((emb[i] - emb[j]) ** 2).sum(axis=1)))
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _stratified(rng: np.random.Generator, labels: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` indices, as equal a share per label as the labels allow, sorted."""
    pools = {c: rng.permutation(np.flatnonzero(labels == c)) for c in class_order(labels)}
    take: list[int] = []
    while len(take) < n and any(len(p) for p in pools.values()):
        for c in list(pools):
            if len(pools[c]) and len(take) < n:
                take.append(int(pools[c][0]))
                pools[c] = pools[c][1:]
    return np.sort(np.asarray(take, dtype=np.int64))


# ----------------------------------------------------------------------------------------------- thinning

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

    for m in ("OutgoingCall", "SuccessfulCall", "FailedCall", "Retransmissions"):
        out[..., i[m]] = thin(raw[..., i[m]])
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


def _concat(a: LabelledWindows, b: LabelledWindows) -> LabelledWindows:
    return LabelledWindows(**{f.name: np.concatenate([getattr(a, f.name), getattr(b, f.name)])
                              for f in dataclasses.fields(LabelledWindows)})


# ----------------------------------------------------------------------------------------------- outliers

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


# ----------------------------------------------------------------------------------------------- training

class _Monitor:
    """Per-epoch work the stock callbacks do not do: validation n-way accuracy, embedding
    snapshots of fixed validation windows, one progress line. Adds ``val_n_way_acc`` to the logs
    (so History, TensorBoard and the checkpoint see it)."""

    def __init__(self, encoder: Any, fit_x: np.ndarray, fit_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 snap_x: np.ndarray, epochs: int, quiet: bool, classes: list[str], pcfg: Any) -> None:
        self.encoder, self.fit_x, self.fit_y, self.val_x, self.val_y = encoder, fit_x, fit_y, val_x, val_y
        self.snap_x, self.epochs, self.quiet, self.classes, self.pcfg = snap_x, epochs, quiet, classes, pcfg
        self.snapshots: list[np.ndarray] = []
        self.best = np.inf
        self.t = time.perf_counter()

    def embed(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.encoder.predict(x, batch_size=1024, verbose=0), np.float64)  # (N, T, F) -> (N, D)

    def snapshot(self) -> None:
        self.snapshots.append(self.embed(self.snap_x).astype(np.float32))                 # (P, D)

    def n_way_accuracy(self) -> float:
        protos = fit_prototypes(self.embed(self.fit_x), self.fit_y, self.pcfg, classes=self.classes)
        nearest = np.asarray(protos.classes, dtype=object)[protos.distances(self.embed(self.val_x)).argmin(axis=1)]
        return float(np.mean(nearest == self.val_y))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        logs["val_n_way_acc"] = self.n_way_accuracy()
        self.snapshot()
        mark = " *" if logs["val_loss"] < self.best else ""
        self.best = min(self.best, logs["val_loss"])
        if not self.quiet:
            now = time.perf_counter()
            print(f"epoch {epoch + 1:>3}/{self.epochs}  loss {logs['loss']:.4f}  val_loss {logs['val_loss']:.4f}  "
                  f"val n-way acc {logs['val_n_way_acc']:.3f}  {now - self.t:4.1f}s{mark}", file=sys.stderr, flush=True)
            self.t = now


class _ScalarLog:
    """TensorBoard scalars per epoch, laid out like ``keras.callbacks.TensorBoard`` (LOGDIR/train and
    LOGDIR/validation, tags ``epoch_loss``, ``epoch_n_way_acc``...). Keras' own callback needs TensorFlow,
    which a torch or jax host may lack, so the event files are written with TensorFlow's summary ops when
    it is installed, else with the ``tensorboard`` package's writer, else not at all (said once)."""

    def __init__(self, logdir: Path, say: Any) -> None:
        self.write: Any = None
        self.closers: list[Any] = []
        try:
            import tensorflow as tf
        except ImportError:
            tf = None
        if tf is not None:
            writers = {k: tf.summary.create_file_writer(str(logdir / k)) for k in ("train", "validation")}
            meta = tf.compat.v1.SummaryMetadata(plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))

            def write_tf(which: str, tag: str, value: float, step: int) -> None:
                with writers[which].as_default():
                    tf.summary.write(tag, tf.constant(value), step=step, metadata=meta)

            self.write, self.closers = write_tf, [w.close for w in writers.values()]
            return
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            say(f"TensorBoard logs skipped: neither tensorflow nor tensorboard is installed ({logdir})")
            return
        files = {k: EventFileWriter(str(logdir / k)) for k in ("train", "validation")}

        def write_tb(which: str, tag: str, value: float, step: int) -> None:
            files[which].add_event(Event(wall_time=time.time(), step=step,
                                         summary=Summary(value=[Summary.Value(tag=tag, simple_value=value)])))

        self.write, self.closers = write_tb, [f.close for f in files.values()]

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.write is None:
            return
        for key, value in logs.items():
            which, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            self.write(which, f"epoch_{name}", float(value), epoch)

    def close(self) -> None:
        for close in self.closers:
            close()


def train(cfg: Config, data_paths: Sequence[str | Path], label_paths: Sequence[str | Path], out_dir: str | Path, *,
          epochs: int | None = None, seed: int | None = None, exclude_labels: Sequence[str] = (),
          logdir: str | Path | None = None, quiet: bool = False) -> Artifact:
    """Train an encoder, fit prototypes, write the artifact to ``out_dir`` and return it loaded."""
    t_start = time.perf_counter()
    cfg = override(cfg, {"training.epochs": epochs, "training.seed": seed})
    tc, w = cfg.training, cfg.window
    out = Path(out_dir)
    say = (lambda *_a, **_k: None) if quiet else (lambda *a, **k: print(*a, file=sys.stderr, flush=True, **k))

    # 1. data ------------------------------------------------------------------------------------------
    lw, groups = load_windows(cfg, data_paths, label_paths)                     # x: (N, T, F)
    # Every window is labelled by its last sample, onset and offset windows (straddling a label change)
    # included: they teach the encoder to name a fault from its first seconds, and normal soon after it.
    keep = ~np.isin(lw.labels, list(exclude_labels))
    lw, groups = lw.subset(keep), groups[keep]
    in_train, in_val, overlapping = split_validation(lw.end_ts, groups, lw.labels, tc.val_fraction,
                                                     span_s=(w.length - 1) * w.interval_s)
    tr, va = lw.subset(in_train), lw.subset(in_val)
    va_aftermath = in_aftermath(lw.end_ts, groups, lw.labels, AFTERMATH_S)[in_val]
    # every labelled class, even one no window ends in (an episode shorter than the start of the first window)
    labelled = {iv.label for p in label_paths for iv in read_labels(p)} - set(exclude_labels)
    classes = class_order(np.array(sorted(set(lw.labels.tolist()) | labelled), dtype=object))
    if len(classes) < 2:
        raise NetsiamError(f"training needs windows of at least two classes, found {classes or 'none'}")
    need = {c: (int(np.sum(tr.labels == c)), int(np.sum(va.labels == c))) for c in classes}
    short = [f"{c} has {n_tr} training and {n_va} validation windows" for c, (n_tr, n_va) in need.items()
             if n_tr < MIN_TRAIN_WINDOWS or n_va < 1]
    if short:
        raise NetsiamError(f"too few windows: {'; '.join(short)} (each class needs {MIN_TRAIN_WINDOWS} for training "
                           f"and 1 for validation: label a longer episode, or --exclude-label it)")
    counts = {c: n for c, (n, _) in need.items()}
    if overlapping:
        say(f"validation windows of {', '.join(overlapping)} share samples with training windows "
            "(too few windows for a clean split)")
    n_thinned = 0
    if tc.thinning > 0:                        # + copies of training windows as at lower loads
        extra = thinned_copies(np.random.default_rng([tc.seed, 4]), tr, tc.thinning, tc.thinning_keep, cfg.features)
        tr, n_thinned = _concat(tr, extra), len(extra)
    cls_id = {c: i for i, c in enumerate(classes)}
    y_tr = np.array([cls_id[c] for c in tr.labels], np.int64)
    y_va = np.array([cls_id[c] for c in va.labels], np.int64)
    say(f"windows: {len(lw)} ({int(lw.straddle.sum())} straddle a label change), train {len(tr)} "
        f"({', '.join(f'{c} {n}' for c, n in counts.items())}{f', + {n_thinned} thinned copies' if n_thinned else ''}), "
        f"validation {len(va)}")

    # 2. normalisation (training windows only) ----------------------------------------------------------
    flat = tr.x.reshape(-1, tr.x.shape[-1]).astype(np.float64)                  # (N*T, F)
    mean, var = flat.mean(axis=0), np.maximum(flat.var(axis=0), VAR_FLOOR)      # (F,), (F,)

    # 3. model + objective -----------------------------------------------------------------------------
    import keras

    from netsiam.trainer.losses import make_training_loss
    from netsiam.trainer.model import EncoderSpec, build_encoder

    keras.utils.set_random_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    m = cfg.model
    spec = EncoderSpec(w.length, len(cfg.features), m.lstm_units, m.dense_units, m.embedding_dim, m.dropout)
    encoder = build_encoder(spec, mean, var, seed=tc.seed)                     # (B, T, F) -> (B, D)
    # XLA (jit_compile=True) measured no faster on CPU at 64 LSTM units (25.8 vs 25.7 ms per batch of 72)
    # and adds ~3 s of compilation, so it stays off.
    encoder.compile(optimizer=keras.optimizers.Adam(tc.learning_rate),
                    loss=make_training_loss(tc.loss, tc.margin, tc.semi_hard_fraction), jit_compile=False)

    # 4. fit ---------------------------------------------------------------------------------------------
    k = tc.batch_per_class
    n_out = int(round(tc.outlier_fraction * len(classes) * k))
    n_val_classes = len(np.unique(y_va))
    n_val_batches = int(np.clip(np.ceil(len(va) / (n_val_classes * k)), *VAL_BATCHES))
    val_rng = np.random.default_rng([tc.seed, 1])
    if n_out:                                                                  # (P*K + n_out, T, F), (.., 3)
        exposure = Exposure(tr.x, y_tr, k, n_out, tc.outlier_shift)
        batches = exposure.batches(rng, tr.x, y_tr)
        vx, vy = exposure.fixed(val_rng, va.x, y_va, n_val_batches)
    else:
        batches = triplet_batches(tr.x, y_tr, k, rng)                          # (P*K, T, F), (P*K, 3)
        vx, vy = fixed_batches(va.x, y_va, k, n_val_batches, val_rng)
    fit_idx = np.concatenate([np.random.default_rng([tc.seed, 2]).permutation(np.flatnonzero(y_tr == c))
                              [:MONITOR_PER_CLASS] for c in range(len(classes))])
    snap_idx = _stratified(np.random.default_rng([tc.seed, 3]), va.labels, tc.snapshot_points)
    monitor = _Monitor(encoder, tr.x[fit_idx], tr.labels[fit_idx], va.x, va.labels, va.x[snap_idx], tc.epochs,
                       quiet, classes, cfg.prototypes)
    monitor.snapshot()                                                         # epoch 0: the untrained encoder
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT_FILE
    ckpt.unlink(missing_ok=True)                                               # never restore a previous run's
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.LambdaCallback(on_epoch_end=monitor.on_epoch_end),
        keras.callbacks.ModelCheckpoint(ckpt, monitor="val_loss", save_best_only=True, save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=tc.patience),
    ]
    tb = _ScalarLog(Path(logdir or out / "logs"), say)
    callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=tb.on_epoch_end, on_train_end=lambda _l: tb.close()))
    t_fit = time.perf_counter()
    fit = encoder.fit(batches, steps_per_epoch=tc.steps_per_epoch, epochs=tc.epochs, validation_data=(vx, vy),
                      validation_batch_size=n_val_classes * k + n_out, callbacks=callbacks, shuffle=False, verbose=0)
    fit_seconds = time.perf_counter() - t_fit
    hist = {key: [float(v) for v in vals] for key, vals in fit.history.items()}
    if not ckpt.is_file() or not np.isfinite(hist.get("val_loss", [np.nan])).any():
        raise NetsiamError(f"training diverged (loss {hist.get('loss', ['?'])[-1]}); try a lower training.learning_rate")
    best_epoch = int(np.nanargmin(hist["val_loss"])) + 1
    encoder.load_weights(ckpt)                                                 # restore the best epoch
    say(f"best epoch {best_epoch} (val_loss {hist['val_loss'][best_epoch - 1]:.4f}), "
        f"{len(hist['loss'])} epochs in {fit_seconds:.0f} s")

    # 5. prototypes on training windows, thresholds on validation windows, metrics ------------------------
    emb_tr, emb_va = monitor.embed(tr.x), monitor.embed(va.x)                  # (N, D) each
    # prototypes and thresholds from windows inside one label (an onset window is half normal by design);
    # thresholds from normal windows outside a fault's aftermath, which the debounce handles on its own
    # (an unknown window nearest normal after a fault counts as normal): calibrated on it, the normal
    # threshold grew to its cap and a new fault made of slow answers was called normal
    core_tr, core_va = _core(tr), _core(va, ~va_aftermath)
    protos = fit_prototypes(emb_tr[core_tr], tr.labels[core_tr], cfg.prototypes, classes=classes, seed=tc.seed)
    calibrated = calibrate_thresholds(protos, emb_va[core_va], va.labels[core_va], cfg.prototypes)
    metrics = _metrics(protos, emb_va, va.labels, calibrated)
    # the no-learning baselines `netsiam evaluate` scores beside the encoder, fitted on the same windows
    baselines = {"raw_nearest_prototype": RawNearestPrototype(mean, np.sqrt(var), cfg.prototypes)
                 .fit(tr.x[core_tr], tr.labels[core_tr], classes).to_json(),
                 "zscore_rule": ZScoreRule().fit(tr.x[core_tr], tr.labels[core_tr], classes).to_json()}
    metrics.update(best_epoch=best_epoch, epochs_run=len(hist["loss"]), fit_seconds=round(fit_seconds, 2),
                   train_windows=len(tr) - n_thinned, thinned_windows=n_thinned, val_windows=len(va), straddling_windows=int(lw.straddle.sum()))

    # 6. artifact ------------------------------------------------------------------------------------------
    final = build_encoder(spec, mean, var, seed=tc.seed)                       # uncompiled: no trainer code inside
    final.set_weights(encoder.get_weights())
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for v in final.get_weights())).hexdigest()
    now = datetime.now(UTC)
    history: dict[str, Any] = {**hist, "best_epoch": best_epoch}
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": f"{now:%Y%m%dT%H%M%SZ}-{digest[:8]}",
        "created_at": now.timestamp(),
        "features": list(cfg.features),
        "raw_metrics": list(required_metrics(cfg.features)),
        "window": dataclasses.asdict(w),
        "normalisation": {"mean": mean.tolist(), "std": np.sqrt(var).tolist()},
        "model": spec.to_dict(),
        "training": dataclasses.asdict(tc),
        "config": cfg.to_dict(),
        "classes": classes,
        "history": history,
        "metrics": metrics,
        "excluded_labels": sorted(set(exclude_labels)),
        "validation_overlaps_training": overlapping,
        "baselines": baselines,
        "train_seconds": round(time.perf_counter() - t_start, 2),
    }
    artifact = Artifact(final, protos, manifest, out)
    artifact.save(out)
    atomic_write_bytes(out / HISTORY_FILE, orjson.dumps(history, option=orjson.OPT_INDENT_2))
    np.savez_compressed(out / SNAPSHOTS_FILE, emb=np.stack(monitor.snapshots),              # (E+1, P, D)
                        labels=va.labels[snap_idx].astype(str), epochs=np.arange(len(monitor.snapshots)),
                        end_ts=va.end_ts[snap_idx], sources=va.sources[snap_idx].astype(str))
    say(f"validation: n-way accuracy {metrics['val_n_way_accuracy']:.4f}, pair AUC {_f(metrics['val_pair_auc'])}, "
        f"accuracy with unknown {metrics['val_window_accuracy']:.4f}")
    return artifact


def _core(lw: LabelledWindows, keep: np.ndarray | None = None) -> np.ndarray:
    """(N,) windows that do not straddle a label change (and are in ``keep``), or every window of a class
    with fewer than 2 such."""
    core = ~lw.straddle if keep is None else ~lw.straddle & keep
    for c in np.unique(lw.labels):
        m = lw.labels == c
        if np.sum(core & m) < 2:
            core |= m
    return core


def _metrics(protos: Prototypes, emb: np.ndarray, labels: np.ndarray, calibrated: dict[str, int]) -> dict[str, Any]:
    names, _, dist = protos.classify(emb)
    nearest = np.asarray(protos.classes, dtype=object)[dist.argmin(axis=1)]
    per_class = {c: {"windows": int(np.sum(labels == c)),
                     "n_way_recall": float(np.mean(nearest[labels == c] == c)) if np.any(labels == c) else None,
                     "unknown_rate": float(np.mean(names[labels == c] == "unknown")) if np.any(labels == c) else None,
                     "threshold_from_validation": bool(calibrated.get(c))}
                 for c in protos.classes}
    return {"val_n_way_accuracy": float(np.mean(nearest == labels)),
            "val_window_accuracy": float(np.mean(names == labels)),
            "val_unknown_rate": float(np.mean(names == "unknown")),
            "val_pair_auc": pair_auc(emb, labels),
            "val_per_class": per_class}


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def cli_train(args: argparse.Namespace, cfg: Config) -> int:
    """``netsiam train --data T.jsonl --labels L.csv -o DIR [--epochs N] [--seed S] [--loss L] ...``."""
    cfg = override(cfg, {"training.loss": args.loss})
    for p in [*args.data, *args.labels]:   # fail before the (slow, noisy) TensorFlow import
        if not Path(p).is_file():
            raise NetsiamError(f"{'trace' if p in args.data else 'labels'} file not found: {p}")
    artifact = train(cfg, args.data, args.labels, args.output, epochs=args.epochs, seed=args.seed,
                     exclude_labels=args.exclude_label, logdir=args.logdir, quiet=args.quiet)
    mt = artifact.manifest["metrics"]
    print(f"wrote {args.output}: model {artifact.manifest['version']}, classes {', '.join(artifact.prototypes.classes)}, "
          f"validation n-way accuracy {mt['val_n_way_accuracy']:.3f}, pair AUC {_f(mt['val_pair_auc'])}, "
          f"{artifact.manifest['train_seconds']:.0f} s")
    return 0
