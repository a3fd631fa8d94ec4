"""``netsiam train``: traces + labels -> model artifact. Reads top to bottom:

1. data: every trace windowed exactly as the daemon will, each window labelled by its last sample
   (onset and offset windows included); validation chosen per class (``trainer.split``); optionally
   thinned copies of the training windows, as at a lower load (``trainer.augment``).
2. normalisation: mean/variance of the training windows, baked into the encoder and the manifest.
3. model + objective: the siamese encoder (one network embeds every window) on P x K class-balanced
   batches with the mixed semi-hard/random triplet loss (``trainer.losses``), plus synthetic outliers
   that are negatives of every class (``trainer.outliers``).
4. fit: per epoch the validation loss on fixed validation batches, the validation n-way accuracy, an
   embedding snapshot of fixed validation windows, TensorBoard scalars; the best weights by
   validation loss are checkpointed and restored.
5. prototypes on training windows, thresholds calibrated on validation windows, the no-learning
   baselines fitted on the same windows, metrics.
6. artifact: encoder.keras, prototypes.json, manifest.json (+ history.json, snapshots.npz). The manifest
   also holds each feature's normal range (``normal_ranges``, from the training windows of clean
   normal traffic), which fault events quote as their evidence (``netsiam.evidence``), and each fault's
   signature (``fault_signatures``: inputs above those ranges in its windows, not in its aftermath) and
   mark (``fault_marks``: those of its signature inputs that no other fault's windows or aftermath show).

Keras/TensorFlow are imported only once the data has loaded, so a bad path fails fast with one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from netsiam.config import Config, override
from netsiam.errors import NetsiamError, UsageError
from netsiam.evidence import (
    MANIFEST_KEY,
    MARK_KEY,
    SIGNATURE_KEY,
    fault_marks,
    fault_signatures,
    normal_ranges,
    ranges_to_json,
)
from netsiam.features import required_metrics
from netsiam.schemas.classes import NORMAL
from netsiam.serving import FORMAT, Artifact, Prototypes, load_artifact
from netsiam.traceio import atomic_write_bytes, read_labels, require_inputs
from netsiam.trainer.augment import thinned_copies
from netsiam.trainer.baselines import RawNearestPrototype, ZScoreRule
from netsiam.trainer.dataset import LabelledWindows, refuse_verdicts
from netsiam.trainer.mining import fixed_batches, triplet_batches
from netsiam.trainer.monitor import EpochMonitor
from netsiam.trainer.outliers import Exposure
from netsiam.trainer.probe import candidate_row, clean_normal_windows, pick_candidate, shift_probe
from netsiam.trainer.prototypes import calibrate_thresholds, fit_prototypes
from netsiam.trainer.scores import pair_scores, roc_auc
from netsiam.trainer.split import AFTERMATH_S, aftermath_of, class_order, clean_normal, split_windows
from netsiam.trainer.tblog import ScalarLog
from netsiam.trainer.workers import side_by_side, workers_for
from netsiam.versions import VERSIONS_DIR, is_shipped

__all__ = ["CANDIDATES_DIR", "CHECKPOINT_FILE", "HISTORY_FILE", "SNAPSHOTS_FILE", "cli_train", "train",
           "training_evidence"]

SNAPSHOTS_FILE, HISTORY_FILE, CHECKPOINT_FILE = "snapshots.npz", "history.json", "checkpoint.weights.h5"
CANDIDATES_DIR = "candidates"
VAR_FLOOR = 1e-6          # a feature constant in training must not divide by ~0 at inference
MONITOR_PER_CLASS = 300   # training windows per class behind the per-epoch validation prototypes
VAL_BATCHES = (4, 16)     # fixed validation batches: at least 4, at most 16, else ~one pass over val
MIN_TRAIN_WINDOWS = 2     # per class: a prototype and a spread need at least two


def _sayer(quiet: bool, tag: str = "") -> Callable[[str], None]:
    """Progress lines on stderr, each starting with ``tag``, or nothing."""
    if quiet:
        return lambda _msg: None
    return lambda msg: print(f"{tag}{msg}", file=sys.stderr, flush=True)


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


# ----------------------------------------------------------------------------------------------- training

def train(cfg: Config, data_paths: Sequence[str | Path], label_paths: Sequence[str | Path], out_dir: str | Path, *,
          epochs: int | None = None, seed: int | None = None, exclude_labels: Sequence[str] = (),
          logdir: str | Path | None = None, quiet: bool = False) -> Artifact:
    """Train an encoder, fit prototypes, write the artifact to ``out_dir`` and return it loaded.

    With ``training.candidates`` N > 1: N encoders with seeds ``seed`` .. ``seed + N - 1``, each in
    ``out_dir/candidates/seed-S``, side by side where there are cores for it (:mod:`netsiam.trainer.workers`:
    a calling script needs an ``if __name__ == "__main__":`` guard); the one the input-shift probe
    (``trainer.probe``) scores highest on validation windows is copied to ``out_dir``, its manifest listing
    every candidate."""
    cfg = override(cfg, {"training.epochs": epochs, "training.seed": seed})
    say = _sayer(quiet)
    n, seed0 = cfg.training.candidates, cfg.training.seed
    if n == 1:
        return _train_one(cfg, data_paths, label_paths, Path(out_dir), exclude_labels, logdir, quiet)
    t_start, out = time.perf_counter(), Path(out_dir)
    labelled = {iv.label for p in label_paths for iv in read_labels(p)} - set(exclude_labels)
    refuse_verdicts(labelled, hint=", or --exclude-label them")
    split = split_windows(cfg, data_paths, label_paths, exclude_labels)     # the same for every seed: once
    _classes(split[0].labels, split[2], split[3], labelled)                 # refused before any candidate starts
    shutil.rmtree(out / CANDIDATES_DIR, ignore_errors=True)                 # no candidate of an earlier run
    jobs = [(override(cfg, {"training.seed": s}), data_paths, label_paths, out / CANDIDATES_DIR / f"seed-{s}",
             exclude_labels, Path(logdir) / f"seed-{s}" if logdir else None, quiet, split, f"seed {s}: ")
            for s in range(seed0, seed0 + n)]
    workers = workers_for(n)
    say(f"{n} candidates (seeds {seed0}-{seed0 + n - 1}), {workers} at a time")
    if workers == 1:
        arts = [_train_one(*job) for job in jobs]
    else:   # side by side (trainer.workers): the same weights, an artifact loaded back from its directory
        arts = [load_artifact(d) for d in side_by_side(_train_candidate, jobs, workers)]
    table = [candidate_row(a) for a in arts]
    best = pick_candidate(table)
    for row in table:
        row["chosen"] = row is best
    chosen = arts[table.index(best)]
    chosen_dir = out / CANDIDATES_DIR / f"seed-{best['seed']}"
    chosen.manifest["candidates"] = table
    chosen.manifest["train_seconds"] = round(time.perf_counter() - t_start, 2)
    chosen.save(out)
    for name in (HISTORY_FILE, SNAPSHOTS_FILE):
        shutil.copy2(chosen_dir / name, out / name)
    say("candidates: " + ", ".join(f"seed {r['seed']} probe {_f(r['shift_probe'])} val_loss {r['val_loss']:.4f}"
                                   f"{' (chosen)' if r['chosen'] else ''}" for r in table))
    return load_artifact(out)


def _train_candidate(job: tuple[Any, ...]) -> Path:
    """:func:`_train_one` in a worker process; -> the candidate's directory (an artifact does not pickle)."""
    _train_one(*job)
    return Path(job[3])


def _train_one(cfg: Config, data_paths: Sequence[str | Path], label_paths: Sequence[str | Path], out: Path,
               exclude_labels: Sequence[str], logdir: str | Path | None, quiet: bool,
               split: tuple[LabelledWindows, np.ndarray, np.ndarray, np.ndarray, list[str]] | None = None,
               tag: str = "") -> Artifact:
    """One encoder with ``cfg.training.seed``: steps 1-6 above (``split``: :func:`split_windows`' result, if
    already made; ``tag`` starts every progress line: candidates train side by side)."""
    t_start = time.perf_counter()
    tc, w = cfg.training, cfg.window
    say = _sayer(quiet, tag)

    # 1. data ------------------------------------------------------------------------------------------
    # every labelled class, even one no window ends in (an episode shorter than the start of the first window)
    labelled = {iv.label for p in label_paths for iv in read_labels(p)} - set(exclude_labels)
    refuse_verdicts(labelled, hint=", or --exclude-label them")   # before the windowing, the heavy part
    lw, groups, in_train, in_val, overlapping = split or split_windows(cfg, data_paths, label_paths, exclude_labels)
    tr, va = lw.subset(in_train), lw.subset(in_val)
    after = aftermath_of(lw.end_ts, groups, lw.labels, AFTERMATH_S)          # (N,) whose aftermath, "" none
    aftermath = after != ""
    va_aftermath = aftermath[in_val]
    evidence = _evidence(lw, in_train, after, cfg)                            # before any thinned copies
    classes, counts = _classes(lw.labels, in_train, in_val, labelled)
    if overlapping:
        say(f"validation windows of {', '.join(overlapping)} share samples with training windows "
            "(too few windows for a clean split)")
    n_thinned = 0
    if tc.thinning > 0:                        # + copies of training windows as at lower loads
        extra = thinned_copies(np.random.default_rng([tc.seed, 4]), tr, tc.thinning, tc.thinning_keep, cfg.features)
        tr, n_thinned = LabelledWindows.concat([tr, extra]), len(extra)
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
    monitor = EpochMonitor(encoder, tr.x[fit_idx], tr.labels[fit_idx], va.x, va.labels, snap_idx, tc.epochs,
                           say, classes, cfg.prototypes)
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
    tb = ScalarLog(Path(logdir or out / "logs"), say)
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
        **evidence,
        "train_seconds": round(time.perf_counter() - t_start, 2),
    }
    artifact = Artifact(final, protos, manifest, out)
    metrics["shift_probe"] = shift_probe(artifact, *clean_normal_windows(lw, aftermath, in_train, in_val), cfg.features)
    artifact.save(out)
    atomic_write_bytes(out / HISTORY_FILE, orjson.dumps(history, option=orjson.OPT_INDENT_2))
    np.savez_compressed(out / SNAPSHOTS_FILE, emb=np.stack(monitor.snapshots),              # (E+1, P, D)
                        labels=va.labels[snap_idx].astype(str), epochs=np.arange(len(monitor.snapshots)),
                        end_ts=va.end_ts[snap_idx], sources=va.sources[snap_idx].astype(str))
    say(f"validation: n-way accuracy {metrics['val_n_way_accuracy']:.4f}, pair AUC {_f(metrics['val_pair_auc'])}, "
        f"accuracy with unknown {metrics['val_window_accuracy']:.4f}")
    return artifact


def _classes(labels: np.ndarray, in_train: np.ndarray, in_val: np.ndarray, labelled: set[str]
             ) -> tuple[list[str], dict[str, int]]:
    """-> the classes (every labelled one, even one no window ends in) and their training windows; a
    NetsiamError naming each class with too few windows."""
    classes = class_order(np.array(sorted(set(labels.tolist()) | labelled), dtype=object))
    if len(classes) < 2:
        raise NetsiamError(f"training needs windows of at least two classes, found {classes or 'none'}")
    need = {c: (int(np.sum(labels[in_train] == c)), int(np.sum(labels[in_val] == c))) for c in classes}
    short = [f"{c} has {n_tr} training and {n_va} validation windows" for c, (n_tr, n_va) in need.items()
             if n_tr < MIN_TRAIN_WINDOWS or n_va < 1]
    if short:
        raise NetsiamError(f"too few windows: {'; '.join(short)} (each class needs {MIN_TRAIN_WINDOWS} for training "
                           f"and 1 for validation: label a longer episode, or --exclude-label it)")
    return classes, {c: n for c, (n, _) in need.items()}


def _evidence(lw: LabelledWindows, in_train: np.ndarray, after: np.ndarray, cfg: Config) -> dict[str, Any]:
    """The manifest's evidence keys from the training windows: the normal ranges (netsiam.evidence) of clean
    normal traffic, inside one label and outside a fault's aftermath, whose timeouts and answered backlog
    are normal by label only (on the default model's data they would lift failed_log's 99th percentile
    from 0.86 to 2.7, above a capacity limit's median of 2.5); and each fault's signature, the inputs
    above those ranges in its windows and not in its aftermath (``after``: the fault each normal window
    is the aftermath of), and its mark, those no other fault's windows or aftermath show either."""
    clean = in_train & clean_normal(lw, after != "")
    ranges = normal_ranges(lw.x[clean], cfg.features)
    xs, labels, afters = lw.x[in_train], lw.labels[in_train], after[in_train]
    return {MANIFEST_KEY: ranges_to_json(ranges),
            SIGNATURE_KEY: fault_signatures(xs, labels, afters, cfg.features, ranges),
            MARK_KEY: fault_marks(xs, labels, afters, cfg.features, ranges)}


def training_evidence(cfg: Config, data_paths: Sequence[str | Path], label_paths: Sequence[str | Path],
                      exclude_labels: Sequence[str] = ()) -> dict[str, Any]:
    """The manifest's ``normal_ranges``, ``fault_signatures`` and ``fault_marks`` exactly as :func:`train`
    computes them, without training."""
    lw, groups, in_train, _, _ = split_windows(cfg, data_paths, label_paths, exclude_labels)
    return _evidence(lw, in_train, aftermath_of(lw.end_ts, groups, lw.labels, AFTERMATH_S), cfg)


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
            "val_pair_auc": roc_auc(*pair_scores(emb, labels)),
            "val_per_class": per_class}


def _f(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def cli_train(args: argparse.Namespace, cfg: Config) -> int:
    """``netsiam train --data T.jsonl --labels L.csv -o DIR [--epochs N] [--seed S] [--loss L] [--candidates N] ...``."""
    cfg = override(cfg, {"training.loss": args.loss, "training.candidates": args.candidates})
    if is_shipped(args.output):   # package data: `make model` makes it
        raise UsageError(f"-o {args.output} is the model shipped in the package (`make model` regenerates it); "
                         "write yours to another directory and serve it with `netsiam detect --model DIR`")
    out = Path(args.output)
    if args.output == "-" or (out.exists() and not out.is_dir()):
        raise UsageError(f"-o {args.output}: the model is a directory, and this is not one")
    if (out / VERSIONS_DIR).is_dir():   # training over it would orphan the versions an operator may roll back to
        raise UsageError(f"-o {out} is a served model with kept versions (netsiam model history --model {out}); "
                         "train into another directory and serve that one")
    if args.logdir and Path(args.logdir).exists() and not Path(args.logdir).is_dir():
        raise UsageError(f"--logdir {args.logdir}: a file, not a directory")
    require_inputs(args.data, args.labels)   # before the (slow, noisy) TensorFlow import
    if NORMAL in args.exclude_label:
        raise UsageError("--exclude-label normal: a model learns faults against normal traffic; it cannot go")
    named = {iv.label for p in args.labels for iv in read_labels(p)}
    for lab in sorted(set(args.exclude_label) - named):   # a typo would exclude nothing, silently
        print(f"warning: --exclude-label {lab}: no label interval names it", file=sys.stderr)
    artifact = train(cfg, args.data, args.labels, args.output, epochs=args.epochs, seed=args.seed,
                     exclude_labels=args.exclude_label, logdir=args.logdir, quiet=args.quiet)
    mt = artifact.manifest["metrics"]
    print(f"wrote {args.output}: model {artifact.manifest['version']}, classes {', '.join(artifact.prototypes.classes)}, "
          f"validation n-way accuracy {mt['val_n_way_accuracy']:.3f}, pair AUC {_f(mt['val_pair_auc'])}, "
          f"{artifact.manifest['train_seconds']:.0f} s")
    return 0
