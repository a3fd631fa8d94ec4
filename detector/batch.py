"""Micro-batches: the windows of one encoder call, and the call itself (safe on the embed thread).

:func:`run_batch` derives features, embeds (one call; plain Keras: a few when that avoids padding) and
classifies by nearest prototype; :meth:`~netsiam.detector.pipeline.Pipeline.apply` then debounces the
result in window order on the main thread. The daemon runs only :func:`embed_inputs` on its embed
thread, the numpy steps before and after it on the main thread (detector/batcher.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from netsiam.features import derive
from netsiam.serving import Artifact

if TYPE_CHECKING:
    from .sources import TP, SourceState

__all__ = ["EVICTED", "SILENT_CLEARED", "SILENT_RAISED", "SPLIT_COST", "Batch", "BatchResult", "Marker", "WindowRef",
           "classify_batch", "derive_batch", "derives_when_embedding", "embed_inputs", "embed_pieces", "embed_raw_windows",
           "run_batch"]

SPLIT_COST = 32  # one more encoder call costs about as much as embedding this many windows (CPU, measured)


class WindowRef(NamedTuple):
    """Where a pending window came from: what :meth:`Pipeline.apply` needs besides its embedding."""

    state: SourceState   # the source's state (debounce, rewind bookkeeping)
    end_ts: float        # record time of the window's last sample
    tp: TP               # partition of that record
    offset: int          # offset of that record (the event's cause)
    kafka_ts_ms: int     # its Kafka timestamp (record -> event latency)
    live: bool           # at or above the committed offset: its events are published
    start: int           # offset of the window's first record (rewind marker)


SILENT_RAISED = "silent_raised"    # the source sent nothing for detector.silent_after_s
SILENT_CLEARED = "silent_cleared"  # a silent source sent again
EVICTED = "evicted"                # the source's state is dropped (idle, or over detector.max_sources)


class Marker(NamedTuple):
    """A decision :meth:`Pipeline.feed` made about a source without a window, queued behind that
    source's earlier windows so that :meth:`Pipeline.apply` sees everything in record order."""

    kind: str            # SILENT_RAISED | SILENT_CLEARED | EVICTED
    state: SourceState
    started_at: float    # the silence's start (the slot after its last record); EVICTED: unused
    window_end: float    # the record time the transition is stamped with
    tp: TP               # partition of the record that caused it (commits wait for its events)
    offset: int          # that record's offset (wall-clock silence: the partition's next offset)
    kafka_ts_ms: int     # its Kafka timestamp; 0 when no record caused it (no latency to report)
    live: bool           # at or above the committed offset: its events are published


@dataclass
class Batch:
    """Windows waiting for one embed call (and markers between them), with the snapshot of positions
    they complete."""

    raw: np.ndarray                  # (N, T, R): the windows only, in item order
    items: list[WindowRef | Marker]
    artifact: Artifact
    positions: dict[TP, int]         # next offset per partition once this batch is applied
    seq: int                         # eviction sequence number once applied (set by Pipeline.apply)
    x: np.ndarray | None = None      # (N, T, F) model inputs once derived: a raise's evidence reads them

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_windows(self) -> int:
        return len(self.raw)


@dataclass
class BatchResult:
    names: np.ndarray      # (N,) class per window (UNKNOWN beyond every threshold)
    nearest: np.ndarray    # (N,) distance to the chosen prototype
    dists: np.ndarray      # (N, C)
    emb: np.ndarray        # (N, D)
    seconds: float


def embed_pieces(n: int) -> list[int]:
    """Sizes of the encoder calls for ``n`` windows. ``Artifact.embed`` pads a call to a power of two
    (few compiled shapes), so 520 windows would cost 1024; split off the largest power of two while
    that saves more than a call costs: 520 -> [512, 8], 300 -> [256, 44], 200 -> [200].
    Measured on the 2-core machine: 520 windows 48 -> 24 ms, 300: 26 -> 19 ms. Plain Keras only:
    the XLA fast path (:mod:`netsiam.compiled`) cuts a call by its own shapes and costs."""
    out = []
    while n:
        padded = 1 << (n - 1).bit_length()
        half = padded >> 1
        if n > half and half + (1 << (n - half - 1).bit_length()) + SPLIT_COST < padded:
            out.append(half)
            n -= half
        else:
            out.append(n)
            break
    return out


def derive_batch(batch: Batch) -> np.ndarray:
    """(N, T, R) raw windows -> (N, T, F) model inputs, also kept in ``batch.x`` (main thread: see
    :func:`embed_inputs`)."""
    if not len(batch.raw):  # markers only
        return np.empty((0, *batch.raw.shape[1:2], len(batch.artifact.features)))
    batch.x = derive(batch.raw, batch.artifact.features)
    return batch.x


def embed_inputs(art: Artifact, x: np.ndarray) -> np.ndarray:
    """(N, T, F) -> (N, D): the encoder call(s), and nothing else, so that the embed thread takes the
    GIL back as rarely as possible (each time it may wait a whole switch interval while the main
    thread decodes: a numpy step on the embed thread cost ~5 ms there, and derive() takes ~30)."""
    if not len(x):  # markers only: nothing to embed
        return np.empty((0, 0))
    compiled = getattr(art, "compiled_encoder", None)  # test doubles of Artifact have no fast path
    sizes = [len(x)] if compiled is not None and compiled() is not None else embed_pieces(len(x))
    if len(sizes) == 1:
        return art.embed(x, batch_size=max(1024, len(x)))
    parts, i = [], 0
    for k in sizes:
        parts.append(art.embed(x[i:i + k], batch_size=max(1024, k)))
        i += k
    return np.concatenate(parts)


def derives_when_embedding(art: Artifact) -> bool:
    """Does the encoder call derive the inputs itself (:meth:`Artifact.embed_raw`, the XLA path)? Then
    the main thread hands raw windows over and derives nothing."""
    check = getattr(art, "derives_when_embedding", None)  # test doubles of Artifact have no fast path
    return check is not None and bool(check())


def embed_raw_windows(art: Artifact, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, T, R) raw windows -> ((N, D) embeddings, (N, T, F) model inputs) on the embed thread: one XLA
    call; should that path give up (logged), numpy derives here and :func:`embed_inputs` embeds."""
    got = art.embed_raw(raw)
    if got is not None:
        return got
    x = derive(raw, art.features)
    return embed_inputs(art, x), x


def classify_batch(batch: Batch, emb: np.ndarray, seconds: float) -> BatchResult:
    """Nearest prototypes of the batch's embeddings (main thread)."""
    if not len(emb):
        n_classes = len(batch.artifact.prototypes.classes)
        return BatchResult(np.empty(0, dtype=object), np.empty(0), np.empty((0, n_classes)), np.empty((0, 0)),
                           seconds)
    names, nearest, dists = batch.artifact.prototypes.classify(emb)
    return BatchResult(names, nearest, dists, emb, seconds)


def run_batch(batch: Batch) -> BatchResult:
    """Derive features, embed, classify: the steps the daemon splits between its threads, in one, by the
    same path (one compiled call that derives too, where that serves)."""
    t0 = time.perf_counter()
    if len(batch.raw) and derives_when_embedding(batch.artifact):
        emb, batch.x = embed_raw_windows(batch.artifact, batch.raw)
    else:
        emb = embed_inputs(batch.artifact, derive_batch(batch))
    return classify_batch(batch, emb, time.perf_counter() - t0)
