"""What the debounce is given beside each window's class, read from the artifact serving it and the window's
counters. The daemon (``detector/pipeline.py``) and every offline judge (``evaluate``, feedback, the tests'
daemon-equals-offline checks, ``trainer/detection.py``) read it here, so each judges as the daemon acts. The
daemon (:meth:`Givens.step`) and the offline replay (``trainer.detection.detect_events``, whose baselines
know less) feed each window to its source's tracker through one :func:`feed_window`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from netsiam.config import DebounceConfig
from netsiam.debounce import FaultTracker, Transition
from netsiam.evidence import NormalRange, debounce_inputs
from netsiam.serving import Prototypes, trained_classes

__all__ = ["Givens", "debounce_view", "feed_window", "read_givens", "slow_run_stride"]


class Givens(NamedTuple):
    """Per window (N,), what the daemon's debounce is given (``FaultTracker.update`` takes them in this order)."""

    classes: np.ndarray                       # the class read, ``unknown`` where answered slower than the source's own
    nearest: np.ndarray                       # the nearest class (of the trained ones for a class added later)
    within: np.ndarray                        # frozensets: the classes whose threshold the window is within
    in_range: np.ndarray | None               # every input's tail in its normal range
    added: np.ndarray | None                  # of a class added after training
    held: Sequence[frozenset[str]] | None     # the faults whose signature it shows
    marked: Sequence[frozenset[str]] | None   # the faults whose mark it shows
    slow: np.ndarray                          # unknown, and answered slower than its source's own level (int:
                                              # its slow seconds in a row, in windows, flag_slow)
    dists: np.ndarray                         # (N, C) distance to every prototype

    def step(self, tracker: FaultTracker, i: int, window_end: float) -> list[Transition]:
        """Window ``i``, ending at ``window_end``, through its source's ``tracker``."""
        return feed_window(tracker, i, window_end, self.classes, self.nearest, self.within, self.in_range,
                           self.added, self.held, self.marked, self.slow)


def feed_window(tracker: FaultTracker, i: int, window_end: float, classes: np.ndarray,
                nearest: np.ndarray | None = None, within: np.ndarray | None = None,
                in_range: np.ndarray | None = None, added: np.ndarray | None = None,
                held: Sequence[frozenset[str]] | None = None, marked: Sequence[frozenset[str]] | None = None,
                slow: np.ndarray | None = None) -> list[Transition]:
    """Window ``i`` of per-window arrays through its source's ``tracker`` (None: not known, as for a baseline
    that reads classes alone): the one call the daemon and the offline replay make."""
    return tracker.update(str(classes[i]), window_end, None if nearest is None else str(nearest[i]),
                          None if within is None else within[i], None if in_range is None else bool(in_range[i]),
                          added is not None and bool(added[i]), None if held is None else held[i],
                          None if marked is None else marked[i], 0 if slow is None else int(slow[i]))


def slow_run_stride(artifact: Any) -> int | None:
    """The ``stride`` :func:`netsiam.slowanswers.flag_slow` counts a slow window's own slow seconds in: the
    artifact's, or None (each slow window counts one) while its prototypes hold a class added after training,
    which may be about to name what the encoder is still moving towards (its ``unknown`` waits as before)."""
    protos: Prototypes = artifact.prototypes
    if set(protos.classes) - set(trained_classes(protos, getattr(artifact, "manifest", None))):
        return None
    return int(artifact.window.stride)


def debounce_view(artifact: Any, names: np.ndarray, dist: np.ndarray,
                  cfg: DebounceConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Classes (N,) and distances (N, C) -> what the debounce is given beside them: the nearest class
    (N,), and which windows are of a class added after training (N,) bool, None if none can be (a mark
    never renames them). Where ``added_grace_s`` is on and the prototypes hold such a class, the nearest
    is that of the trained classes, so such a window says how the trained classes alone read it."""
    protos: Prototypes = artifact.prototypes
    trained = trained_classes(protos, getattr(artifact, "manifest", None))
    extra = [c for c in protos.classes if c not in trained]
    if not extra:
        return protos.nearest(dist), None
    added = np.isin(np.asarray(names, dtype=object), extra)
    return (protos.nearest(dist) if cfg.added_grace_s <= 0 else protos.nearest(dist, trained)), added


def read_givens(art: Any, names: np.ndarray, slow: np.ndarray, dists: np.ndarray, x: np.ndarray | None,
                raw: np.ndarray, debounce: DebounceConfig, features: Sequence[str] | None = None,
                ranges: Mapping[str, NormalRange] | None = None) -> Givens:
    """Windows' classes (N,) as served (slow answers already read ``unknown``, ``slow`` (N,) counting them),
    distances (N, C), model inputs ``x`` (N, T, F) under ``features`` (default the artifact's; None: not
    derived, nothing read of them) and raw windows (N, T, R) -> their :class:`Givens` under ``art``.
    ``ranges``: the manifest's normal ranges, where the caller has read them already."""
    nearest, added = debounce_view(art, names, dists, debounce)
    feats = list(getattr(art, "features", ()) if features is None else features)
    in_range, held, marked = ((None, None, None) if x is None else
                              debounce_inputs(x, raw, feats, getattr(art, "manifest", None), ranges,
                                              art.prototypes.classes))
    return Givens(names, nearest, art.prototypes.within(dists), in_range, added, held, marked, slow, dists)
