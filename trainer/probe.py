"""The input-shift probe: how often an encoder calls normal traffic ``unknown`` once one input moves.

A fault nobody labelled shows as some input leaving where normal traffic keeps it (slower answers,
more retransmissions, ...). The triplet loss only asks the encoder to keep apart the classes it is
given, so a training may all but stop reading an input no known class needs, and the same recipe
calls a never-seen fault ``unknown`` or ``normal`` depending on its seed. The probe measures that on
windows the encoder was not fitted on: clean normal validation windows with one input shifted up by
a few times its spread over the normal training windows, from the window's start or over its last
seconds (an onset); the score is the share of those windows called ``unknown``, averaged over inputs
and shifts. ``training.candidates`` trains several seeds and keeps the one that scores highest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from netsiam.config import Config
from netsiam.trainer.dataset import LabelledWindows
from netsiam.trainer.split import AFTERMATH_S, clean_normal, in_aftermath, split_windows

__all__ = ["PROBE_ONSETS", "PROBE_SHIFTS", "candidate_row", "clean_normal_windows", "pick_candidate", "probe_artifact",
           "probe_spreads", "shift_probe", "shift_probe_windows"]

PROBE_SHIFTS = (3.0, 6.0)     # x the input's spread: outside normal traffic, inside what outliers teach
PROBE_ONSETS = (10, None)     # the last 10 steps, the whole window
PROBE_WINDOWS = 400           # enough for a share to 0.5 %, cheap to embed 4 x F times
SPREAD_FLOOR = 1e-6           # an input constant in normal windows (offered_rel: a ratio to its own mean) is skipped


def probe_spreads(x_normal: np.ndarray) -> np.ndarray:
    """(F,) how far normal windows spread in each input: the std of their per-window means (NaN for
    fewer than 2 windows: nothing to probe with)."""
    if len(x_normal) < 2:
        return np.full(x_normal.shape[-1], np.nan)
    return x_normal.mean(axis=1).std(axis=0)                                   # (N, T, F) -> (F,)


def shift_probe(artifact: Any, x_normal: np.ndarray, spreads: np.ndarray, features: Sequence[str],
                shifts: Sequence[float] = PROBE_SHIFTS, onsets: Sequence[int | None] = PROBE_ONSETS,
                seed: int = 0) -> dict[str, Any]:
    """Score ``artifact`` (anything with ``embed`` and ``prototypes.classify``) on normal windows
    ``x_normal`` (N, T, F) -> {"score": mean share unknown, "per_input": {feature: share}, "windows": n}
    (score None without windows, or with no input to shift). ``seed`` picks the windows when there are too many: fixed, so every
    candidate is probed on the same ones."""
    if len(x_normal) == 0:
        return {"score": None, "per_input": {}, "windows": 0}
    if len(x_normal) > PROBE_WINDOWS:
        x_normal = x_normal[np.sort(np.random.default_rng(seed).choice(len(x_normal), PROBE_WINDOWS, replace=False))]
    per_input: dict[str, float] = {}
    for j, name in enumerate(features):
        if not spreads[j] >= SPREAD_FLOOR:     # constant, or NaN (no clean normal training window)
            continue
        shares = []
        for k in shifts:
            for onset in onsets:
                xs = x_normal.astype(np.float32, copy=True)
                xs[:, -(onset or xs.shape[1]):, j] += k * spreads[j]
                names, _, _ = artifact.prototypes.classify(artifact.embed(xs))
                shares.append(float(np.mean(names == "unknown")))
        per_input[name] = round(float(np.mean(shares)), 4)
    if not per_input:
        return {"score": None, "per_input": {}, "windows": len(x_normal)}
    return {"score": round(float(np.mean(list(per_input.values()))), 4), "per_input": per_input,
            "windows": len(x_normal)}


def clean_normal_windows(lw: LabelledWindows, aftermath: np.ndarray, in_train: np.ndarray, in_val: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """The probe's windows from ``netsiam train``'s split: clean normal validation windows
    (:func:`~netsiam.trainer.split.clean_normal`) and the spreads of the clean normal training windows."""
    clean = clean_normal(lw, aftermath)
    return lw.x[in_val & clean], probe_spreads(lw.x[in_train & clean])


def shift_probe_windows(cfg: Config, data_paths: Sequence[str | Path], label_paths: Sequence[str | Path],
                        exclude_labels: Sequence[str] = ()) -> tuple[np.ndarray, np.ndarray]:
    """:func:`clean_normal_windows` of this data, split as ``netsiam train`` splits it (to probe a model
    trained before the probe existed; training stores the score in ``metrics.shift_probe``)."""
    lw, groups, in_train, in_val, _ = split_windows(cfg, data_paths, label_paths, exclude_labels)
    return clean_normal_windows(lw, in_aftermath(lw.end_ts, groups, lw.labels, AFTERMATH_S), in_train, in_val)


def probe_artifact(art: Any, cfg: Config, data_paths: Sequence[str | Path], label_paths: Sequence[str | Path],
                   exclude_labels: Sequence[str] = ()) -> dict[str, Any]:
    """:func:`shift_probe` of ``art`` on the windows :func:`shift_probe_windows` gives."""
    return shift_probe(art, *shift_probe_windows(cfg, data_paths, label_paths, exclude_labels), cfg.features)


def candidate_row(art: Any) -> dict[str, Any]:
    """What the choice between candidates reads from one's manifest."""
    m = art.manifest
    return {"seed": m["training"]["seed"], "shift_probe": m["metrics"]["shift_probe"]["score"],
            "val_loss": float(np.nanmin(m["history"]["val_loss"])), "version": m["version"]}


def pick_candidate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The highest input-shift probe score; on a tie (or no score: no clean normal validation
    windows), the lowest validation loss."""
    return max(rows, key=lambda r: (-1.0 if r["shift_probe"] is None else r["shift_probe"], -r["val_loss"]))
