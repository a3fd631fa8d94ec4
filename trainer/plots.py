"""Evaluation plots and the training animation (matplotlib, Agg backend: no display needed).

``evaluate --plots DIR`` writes :data:`PLOT_FILES`; ``netsiam plot embedding`` draws the 3-D
scatter for a trace; ``netsiam plot animate`` (or ``plot --animate``) turns
``ARTIFACT/snapshots.npz`` (``emb`` (E, P, D), ``labels`` (P,) str, ``epochs`` (E,) int, saved by
the trainer) into a GIF, or an MP4 when the output ends in ``.mp4`` and ffmpeg is installed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless hosts and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import animation  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from netsiam.config import Config  # noqa: E402
from netsiam.errors import NetsiamError, UsageError  # noqa: E402
from netsiam.schemas.classes import BLOCKED, CAPACITY_LIMIT, NORMAL, UNKNOWN  # noqa: E402
from netsiam.serving import default_model_path  # noqa: E402

if TYPE_CHECKING:
    from netsiam.trainer.evaluate import Evaluation

__all__ = [
    "MAX_POINTS_PER_CLASS",
    "PLOT_FILES",
    "SNAPSHOTS_FILE",
    "animate_snapshots",
    "class_colours",
    "cli_plot",
    "plot_confusion",
    "plot_embedding",
    "plot_history",
    "plot_pca",
    "plot_roc",
    "plot_timelines",
    "write_plots",
]

SNAPSHOTS_FILE = "snapshots.npz"
PLOT_FILES = ("embedding_3d.png", "embedding_pca.png", "confusion.png", "roc.png", "timeline.png",
              "training_curves.png")
MAX_POINTS_PER_CLASS = 1500   # scatter stays readable and fast; minority classes keep all points
TIMELINE_SOURCES = 4
_FIXED = {NORMAL: "tab:blue", BLOCKED: "tab:red", CAPACITY_LIMIT: "tab:orange", UNKNOWN: "tab:gray"}
_SPARE = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def class_colours(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per class: the known ones fixed, others from a spare cycle in sorted order."""
    out = {n: _FIXED[n] for n in names if n in _FIXED}
    for k, n in enumerate(sorted(set(names) - set(_FIXED))):
        out[n] = _SPARE[k % len(_SPARE)]
    return out


def _subsample(labels: np.ndarray, cap: int = MAX_POINTS_PER_CLASS, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = []
    for lab in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == lab)
        keep.append(idx if len(idx) <= cap else rng.choice(idx, cap, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _protos(prototypes: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    return {c: np.atleast_2d(np.asarray(p, dtype=np.float64)) for c, p in (prototypes or {}).items()}


def plot_embedding(emb: np.ndarray, labels: np.ndarray, path: str | Path,
                   prototypes: Mapping[str, np.ndarray] | None = None, title: str = "embedding") -> Path:
    """3-D scatter of the embeddings by label (the first 3 dimensions), prototypes as stars."""
    emb, labels = np.asarray(emb, dtype=np.float64), np.asarray(labels, dtype=object)
    protos = _protos(prototypes)
    colours = class_colours([*labels.tolist(), *protos])
    idx = _subsample(labels)
    fig = plt.figure(figsize=(7, 6))
    three = emb.shape[1] >= 3
    ax: Any = fig.add_subplot(projection="3d") if three else fig.add_subplot()
    for lab in sorted(set(labels.tolist())):
        sel = idx[labels[idx] == lab]
        cols = [emb[sel, k] for k in range(3 if three else 2)]
        ax.scatter(*cols, s=6, alpha=0.5, color=colours[lab], label=f"{lab} ({int(np.sum(labels == lab))})")
    for c, pts in protos.items():
        extra = {"depthshade": False} if three else {}
        ax.scatter(*[pts[:, k] for k in range(3 if three else 2)], marker="*", s=300, color=colours[c],
                   edgecolors="black", linewidths=1.0, **extra)
    if three:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_zlim(0, 1)
        ax.set_zlabel("e3")
    ax.set_xlabel("e1")
    ax.set_ylabel("e2")
    ax.set_title(f"{title} (stars: prototypes)")
    ax.legend(loc="upper left", fontsize=8, markerscale=2)
    return _save(fig, Path(path))


def plot_pca(emb: np.ndarray, labels: np.ndarray, path: str | Path,
             prototypes: Mapping[str, np.ndarray] | None = None) -> Path:
    """2-D projection on the embeddings' first two principal axes (numpy SVD)."""
    emb, labels = np.asarray(emb, dtype=np.float64), np.asarray(labels, dtype=object)
    protos = _protos(prototypes)
    centre = emb.mean(axis=0)
    _, sv, vt = np.linalg.svd(emb - centre, full_matrices=False)
    comps = vt[:2].T if vt.shape[0] >= 2 else np.eye(emb.shape[1])[:, :2]
    share = sv ** 2 / max(float(np.sum(sv ** 2)), 1e-12)
    xy = (emb - centre) @ comps
    colours = class_colours([*labels.tolist(), *protos])
    idx = _subsample(labels)
    fig, ax = plt.subplots(figsize=(7, 6))
    for lab in sorted(set(labels.tolist())):
        sel = idx[labels[idx] == lab]
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, alpha=0.5, color=colours[lab], label=lab)
    for c, pts in protos.items():
        p = (pts - centre) @ comps
        ax.scatter(p[:, 0], p[:, 1], marker="*", s=300, color=colours[c], edgecolors="black")
    ax.set_xlabel(f"PC1 ({share[0]:.0%})")
    ax.set_ylabel(f"PC2 ({share[1] if len(share) > 1 else 0.0:.0%})")
    ax.set_title("embedding, PCA projection (stars: prototypes)")
    ax.legend(fontsize=8, markerscale=2)
    return _save(fig, Path(path))


def plot_confusion(conf: Mapping[str, Any], path: str | Path) -> Path:
    """Heatmap of ``{"labels", "matrix"}``, colour = row share (recall), text = counts."""
    labels = list(conf["labels"])
    m = np.asarray(conf["matrix"], dtype=np.float64)
    rows = [i for i in range(len(labels)) if m[i].sum() > 0] or list(range(len(labels)))  # no empty true rows
    share = m[rows] / np.maximum(m[rows].sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 0.8 * len(rows) + 2))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for r, i in enumerate(rows):
        for j in range(len(labels)):
            ax.text(j, r, f"{int(m[i, j])}", ha="center", va="center", fontsize=9,
                    color="white" if share[r, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [labels[i] for i in rows])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true label")
    ax.set_title("confusion (non-straddling windows)")
    fig.colorbar(im, ax=ax, label="share of row")
    return _save(fig, Path(path))


def plot_roc(fpr: np.ndarray, tpr: np.ndarray, auc: float | None, path: str | Path) -> Path:
    """Pair ROC: same-label vs different-label pairs, scored by -embedding distance."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
    if len(fpr):
        ax.plot(fpr, tpr, lw=2, label=f"AUC {auc:.3f}" if auc is not None else None)
    else:
        ax.text(0.5, 0.5, "AUC undefined (one label only)", ha="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (different-label pairs)")
    ax.set_ylabel("true positive rate (same-label pairs)")
    ax.set_title("pair ROC")
    if auc is not None:
        ax.legend(loc="lower right")
    return _save(fig, Path(path))


def plot_timelines(ev: Evaluation, path: str | Path, max_sources: int = TIMELINE_SOURCES) -> Path:
    """Per source: labelled episodes as bands, each window's class as dots, raised events as bars."""
    lw = ev.windows
    sources = sorted(set(lw.sources.tolist()))[:max_sources]
    names = [*ev.classes, *sorted(set(ev.pred.tolist()) - set(ev.classes))]
    colours = class_colours([*names, *lw.labels.tolist()])
    ypos = {n: k for k, n in enumerate(names)}
    fig, axes = plt.subplots(len(sources), 1, figsize=(12, 1.0 + 0.45 * (len(names) + 1) * len(sources)),
                             squeeze=False)
    for ax, src in zip(axes[:, 0], sources, strict=True):
        m = lw.sources == src
        t0 = float(lw.end_ts[m].min())
        t = (lw.end_ts[m] - t0) / 60.0
        for ep in (e for e in ev.episodes if e.source == src):
            ax.axvspan((ep.start - t0) / 60, (ep.end - t0) / 60, color=colours[ep.label], alpha=0.2, lw=0)
        pred = ev.pred[m]
        ax.scatter(t, [ypos[p] for p in pred], s=8, c=[colours[p] for p in pred])
        for e in (e for e in ev.events if e.source == src):
            ax.hlines(-1, (e.started_at - t0) / 60, (e.end - t0) / 60, color=colours.get(e.fault, "black"), lw=6)
            ax.plot((e.raised_at - t0) / 60, -1, marker="|", color="black", ms=12)
        ax.set_yticks([-1, *ypos.values()], ["raised", *names])
        ax.set_ylim(-1.8, len(names) - 0.4)
        ax.set_title(f"{src}: bands = labels, dots = window class, bars = raised faults (| = raise time)",
                     fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("minutes since the first window")
    fig.tight_layout()
    return _save(fig, Path(path))


def _series(history: Any) -> dict[str, list[float]]:
    """Keras-style ``{"loss": [...], ...}`` or a list of per-epoch dicts -> numeric series."""
    items: list[tuple[Any, Any]]
    if isinstance(history, Mapping):
        items = list(history.items())
    elif isinstance(history, list) and history and all(isinstance(h, Mapping) for h in history):
        keys = {k for h in history for k in h if k != "epoch"}
        items = [(k, [h.get(k) for h in history]) for k in sorted(keys)]
    else:
        return {}
    out = {}
    for k, v in items:
        if isinstance(v, list) and v and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v):
            out[str(k)] = [float(x) for x in v]
    return out


def plot_history(history: Any, path: str | Path) -> Path | None:
    """Loss curves per epoch (any series with 'loss' in its name; others on a second panel).
    Returns None when the history holds no numeric series."""
    series = _series(history)
    if not series:
        return None
    losses = {k: v for k, v in series.items() if "loss" in k}
    other = {k: v for k, v in series.items() if "loss" not in k and k != "lr"}
    panels = [p for p in (losses, other) if p]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for k, v in sorted(panel.items()):
            ax.plot(range(1, len(v) + 1), v, marker="o", ms=3, label=k)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    axes[0, 0].set_title("training curves")
    return _save(fig, Path(path))


def write_plots(ev: Evaluation, out_dir: str | Path) -> list[Path]:
    """Every evaluation plot into ``out_dir`` (training curves only when the manifest has a history)."""
    d = Path(out_dir)
    ok = ~ev.windows.straddle
    protos = dict(zip(ev.classes, ev.prototype_points, strict=True))
    lab = ev.windows.labels[ok]
    written = [plot_embedding(ev.emb[ok], lab, d / "embedding_3d.png", protos),
               plot_pca(ev.emb[ok], lab, d / "embedding_pca.png", protos),
               plot_confusion(ev.report["confusion"], d / "confusion.png"),
               plot_roc(ev.roc[0], ev.roc[1], ev.report["auc"], d / "roc.png"),
               plot_timelines(ev, d / "timeline.png")]
    hist = plot_history(ev.history, d / "training_curves.png")
    return written + ([hist] if hist else [])


# --------------------------------------------------------------------------- animation


def _load_snapshots(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not path.is_file():
        raise NetsiamError(f"no embedding snapshots at {path} (train with snapshots enabled to animate)")
    try:
        with np.load(path, allow_pickle=False) as z:   # never unpickle: the file may come from anywhere
            emb, labels, epochs = z["emb"], z["labels"], z["epochs"]
    except KeyError as e:
        raise NetsiamError(f"{path}: missing array {e} (need emb, labels, epochs)") from None
    except ValueError as e:
        raise NetsiamError(f"{path}: unreadable ({e}; labels must be a str array, not object)") from None
    except OSError as e:
        raise NetsiamError(f"{path}: not an npz file ({e})") from None
    if emb.ndim != 3 or emb.shape[2] < 2 or labels.shape != (emb.shape[1],) or epochs.shape != (emb.shape[0],):
        raise NetsiamError(f"{path}: expected emb (E, P, D>=2), labels (P,), epochs (E,); got "
                           f"{emb.shape}, {labels.shape}, {epochs.shape}")
    if emb.shape[0] == 0:
        raise NetsiamError(f"{path}: no snapshot")
    return emb.astype(np.float64), labels.astype(str).astype(object), epochs.astype(np.int64)


def animate_snapshots(snapshots: str | Path, out: str | Path, fps: int = 4) -> Path:
    """Embedding of fixed probe windows per epoch -> GIF (Pillow) or MP4 (ffmpeg)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".gif", ".mp4") or out.is_dir():   # the command line's mistake, as for the other plots
        raise UsageError(f"-o {out}: an animation is a .gif or .mp4 file")
    if suffix == ".mp4" and not animation.FFMpegWriter.isAvailable():
        raise NetsiamError("writing .mp4 needs ffmpeg on PATH; use a .gif output instead")
    emb, labels, epochs = _load_snapshots(Path(snapshots))
    three = emb.shape[2] >= 3
    colours = class_colours(labels.tolist())
    col = [colours[lab] for lab in labels]
    fig = plt.figure(figsize=(6, 5.5))
    ax: Any = fig.add_subplot(projection="3d") if three else fig.add_subplot()
    first = emb[0]
    sc = ax.scatter(first[:, 0], first[:, 1], first[:, 2], s=8, c=col) if three else \
        ax.scatter(first[:, 0], first[:, 1], s=8, c=col)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    if three:
        ax.set_zlim(0, 1)
    for lab, c in colours.items():
        ax.scatter([], [], color=c, label=lab)
    ax.legend(loc="upper left", fontsize=8)
    title = ax.set_title(f"epoch {int(epochs[0])}")

    def frame(k: int) -> list[Any]:
        e = emb[k]
        if three:
            sc._offsets3d = (e[:, 0], e[:, 1], e[:, 2])  # the documented way to move 3-D points
        else:
            sc.set_offsets(e[:, :2])
        title.set_text(f"epoch {int(epochs[k])}")
        return [sc, title]

    anim = animation.FuncAnimation(fig, frame, frames=len(emb), interval=1000 // fps, blit=False)
    writer: animation.AbstractMovieWriter = (animation.FFMpegWriter(fps=fps) if suffix == ".mp4"
                                             else animation.PillowWriter(fps=fps))
    out.parent.mkdir(parents=True, exist_ok=True)
    anim.save(str(out), writer=writer, dpi=90)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- CLI


def _image_path(path: str) -> None:
    """Refuse an output matplotlib cannot write, before the work (``-o e.txt`` after embedding a trace)."""
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    if Path(path).suffix.lstrip(".").lower() not in kinds:
        raise UsageError(f"-o {path}: not an image file name (.png, .svg, .pdf, ...: {', '.join(sorted(kinds))})")


# flags that draw one kind of plot only; given for another, they would be silently ignored
_ONLY_FOR = {"data": ("embedding",), "labels": ("embedding",), "model": ("embedding", "animate"),
             "prometheus": ("dashboard",), "source": ("dashboard",), "range": ("dashboard",)}


def cli_plot(args: argparse.Namespace, cfg: Config) -> int:
    what = "animate" if args.animate else args.what
    if args.animate and args.what not in ("embedding", "animate"):   # `embedding` is the positional's default
        raise UsageError(f"--animate draws `plot animate`, not `plot {args.what}`")
    for flag, kinds in _ONLY_FOR.items():
        if getattr(args, flag, None) and what not in kinds:
            raise UsageError(f"--{flag} is for {' and '.join(f'`plot {k}`' for k in kinds)}, not `plot {what}`")
    if what != "animate":
        _image_path(args.output)
    if what == "dashboard":
        from netsiam.dashboard.picture import cli_plot_dashboard

        return cli_plot_dashboard(args, cfg)
    if what == "animate":
        model = Path(args.model) if args.model else default_model_path()
        if not model.is_dir():
            raise NetsiamError(f"model artifact not found: {model}")
        print(animate_snapshots(model / SNAPSHOTS_FILE, args.output))
        return 0
    if not args.data:
        raise UsageError("plot embedding needs --data TRACE (and --labels LABELS to colour by label)")
    from netsiam.serving import load_artifact
    from netsiam.trainer.evaluate import config_for_artifact, load_labelled

    artifact = load_artifact(args.model)
    cfg = config_for_artifact(cfg, artifact, explicit=getattr(args, "config", None) is not None)
    lw, _ = load_labelled(args.data, args.labels, cfg)
    if args.labels:
        lw = lw.subset(~lw.straddle)   # a window across a label change carries half a wrong colour
    emb = artifact.embed(lw.x)
    names, _, _ = artifact.prototypes.classify(emb)
    # without a labels file every window would be 'normal': colour by predicted class instead
    colour_by = lw.labels if args.labels else names
    protos = dict(zip(artifact.prototypes.classes, artifact.prototypes.points, strict=True))
    title = f"embedding ({'label' if args.labels else 'predicted class'}), model {artifact.version}"
    print(plot_embedding(emb, np.asarray(colour_by, dtype=object), args.output, protos, title=title))
    return 0
