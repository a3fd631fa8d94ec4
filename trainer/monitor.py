"""What ``netsiam train`` watches each epoch beyond the loss: the validation n-way accuracy and the embedding
snapshots the animation plays (``netsiam plot``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from netsiam.trainer.prototypes import fit_prototypes

__all__ = ["EpochMonitor"]


class EpochMonitor:
    """Per-epoch work the stock callbacks do not do: validation n-way accuracy, embedding
    snapshots of fixed validation windows (``snap_idx`` into ``val_x``), one progress line. Adds
    ``val_n_way_acc`` to the logs (so History, TensorBoard and the checkpoint see it)."""

    # Windows per direct call: no tf.data pipeline built per epoch (it cost a quarter of make model's time);
    # the windows are padded to whole chunks, so the predict function is traced for one shape only.
    CHUNK = 1024

    def __init__(self, encoder: Any, fit_x: np.ndarray, fit_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                 snap_idx: np.ndarray, epochs: int, say: Callable[[str], None], classes: list[str], pcfg: Any) -> None:
        self.encoder, self.fit_y, self.val_y, self.snap_idx = encoder, fit_y, val_y, snap_idx
        self.epochs, self.say, self.classes, self.pcfg = epochs, say, classes, pcfg
        self.n_fit, self.n = len(fit_x), len(fit_x) + len(val_x)
        pad = np.zeros((-self.n % self.CHUNK, *fit_x.shape[1:]), fit_x.dtype)
        self.x = np.concatenate([fit_x, val_x, pad])                            # one pass embeds both
        self.snapshots: list[np.ndarray] = []
        self.best = np.inf
        self.t = time.perf_counter()

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Windows -> embeddings, as Keras predicts them (the prototypes are fitted on these)."""
        return np.asarray(self.encoder.predict(x, batch_size=1024, verbose=0), np.float64)  # (N, T, F) -> (N, D)

    def epoch_embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """-> the fit windows' and the validation windows' embeddings under the current weights."""
        emb = np.concatenate([np.asarray(self.encoder.predict_on_batch(self.x[i:i + self.CHUNK]), np.float64)
                              for i in range(0, len(self.x), self.CHUNK)])                # (N, T, F) -> (N, D)
        return emb[:self.n_fit], emb[self.n_fit:self.n]

    def snapshot(self, emb_val: np.ndarray | None = None) -> None:
        emb_val = self.epoch_embeddings()[1] if emb_val is None else emb_val
        self.snapshots.append(emb_val[self.snap_idx].astype(np.float32))                  # (P, D)

    def n_way_accuracy(self, emb_fit: np.ndarray, emb_val: np.ndarray) -> float:
        protos = fit_prototypes(emb_fit, self.fit_y, self.pcfg, classes=self.classes)
        nearest = np.asarray(protos.classes, dtype=object)[protos.distances(emb_val).argmin(axis=1)]
        return float(np.mean(nearest == self.val_y))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        emb_fit, emb_val = self.epoch_embeddings()
        logs["val_n_way_acc"] = self.n_way_accuracy(emb_fit, emb_val)
        self.snapshot(emb_val)
        mark = " *" if logs["val_loss"] < self.best else ""
        self.best = min(self.best, logs["val_loss"])
        now = time.perf_counter()
        self.say(f"epoch {epoch + 1:>3}/{self.epochs}  loss {logs['loss']:.4f}  val_loss {logs['val_loss']:.4f}  "
                 f"val n-way acc {logs['val_n_way_acc']:.3f}  {now - self.t:4.1f}s{mark}")
        self.t = now
