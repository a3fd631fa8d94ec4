"""Micro-batches of windows embedded on one thread while the main thread consumes, applied in order.

The daemon's loop (:mod:`.loop`) feeds the pipeline and calls :meth:`Batcher.pump` every round; the
embed thread runs the encoder (the one call that also derives the inputs where the fast path does),
and each result is classified and applied to the pipeline (debounce) in the order it was fed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time
from collections.abc import Callable

import numpy as np

from netsiam.config import Config
from netsiam.serving import Artifact

from .batch import (
    Batch,
    classify_batch,
    derive_batch,
    derives_when_embedding,
    embed_inputs,
    embed_raw_windows,
)
from .delivery import FatalError
from .pipeline import Pipeline

__all__ = ["Batcher", "Embedded"]


Embedded = tuple[np.ndarray, np.ndarray | None, float]   # embeddings, the inputs if derived there, seconds


def _embed_failed(e: Exception) -> FatalError:
    return FatalError(f"embedding failed: {type(e).__name__}: {e}")


class Batcher:
    """Micro-batches embedded on one thread, applied to the pipeline in order.

    Up to ``DEPTH`` batches are handed over at once, so the embed thread starts the next one as soon
    as it finishes one while the main thread consumes. Back-pressure: once a full batch is pending
    and the queue is full, the main thread waits for the oldest batch; so after every :meth:`pump`
    fewer than ``detector.batch_max`` windows are pending (a backlog is consumed as fast as it is
    embedded, never held in memory).
    """

    DEPTH = 2

    def __init__(self, pipeline: Pipeline, cfg: Config, on_applied: Callable[[Batch], None]) -> None:
        self.pipeline = pipeline
        self.det = cfg.detector
        self._on_applied = on_applied
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netsiam-embed")
        # (the embed call, its batch, seconds the main thread spent deriving its inputs), oldest first
        self._inflight: collections.deque[tuple[concurrent.futures.Future[Embedded], Batch, float]] = collections.deque()
        self._running_since = 0.0   # monotonic time the embed thread started its current batch

    @property
    def idle(self) -> bool:
        """Nothing pending and nothing embedding: every output of what was fed has been emitted."""
        return not self._inflight and not self.pipeline.pending

    def inflight_s(self) -> float:
        """How long the embed thread has been running its current batch (0 when it runs none)."""
        if all(f.done() for f, _, _ in self._inflight):
            return 0.0
        return time.monotonic() - self._running_since

    def poll_timeout_ms(self) -> int:
        if self._inflight:
            return 5
        if self.pipeline.pending:
            left = self.det.batch_wait_ms - (time.monotonic() - self.pipeline.pending_since) * 1000
            return max(0, int(left))
        return 100

    def pump(self, final: bool, caught_up: bool) -> None:
        p, det = self.pipeline, self.det
        while True:
            while self._inflight and self._inflight[0][0].done():
                self._finish()
            # Under backlog a batch fills up to batch_max or waits batch_wait_ms; once the consumer has
            # caught up (the last poll was not full) waiting gains nothing but latency.
            due = p.pending and (final or caught_up or p.pending >= det.batch_max
                                 or (time.monotonic() - p.pending_since) * 1000 >= det.batch_wait_ms)
            if due and len(self._inflight) < self.DEPTH:
                batch = p.take_batch(det.batch_max)
                assert batch is not None
                t0 = time.perf_counter()
                if len(batch.raw) and derives_when_embedding(batch.artifact):
                    fut = self._executor.submit(self._run_raw, batch.artifact, batch.raw)
                else:
                    try:
                        x = derive_batch(batch)
                    except Exception as e:  # noqa: BLE001 - as an embed failure: nothing of it may commit
                        raise _embed_failed(e) from e
                    fut = self._executor.submit(self._run, batch.artifact, x)
                self._inflight.append((fut, batch, time.perf_counter() - t0))
            elif self._inflight and (final or p.pending >= det.batch_max):
                self._finish()  # back-pressure: the embed thread is behind
            else:
                return

    def _run(self, art: Artifact, x: np.ndarray) -> Embedded:
        """On the embed thread: the encoder call alone (numpy work here would wait for the GIL)."""
        self._running_since = t0 = time.monotonic()
        return embed_inputs(art, x), None, time.monotonic() - t0

    def _run_raw(self, art: Artifact, raw: np.ndarray) -> Embedded:
        """On the embed thread: the one call that derives the inputs and embeds them."""
        self._running_since = t0 = time.monotonic()
        emb, x = embed_raw_windows(art, raw)
        return emb, x, time.monotonic() - t0

    def drain(self) -> None:
        """Embed and apply everything fed so far."""
        while not self.idle:
            self.pump(final=True, caught_up=True)

    def _finish(self) -> None:
        fut, batch, derive_s = self._inflight.popleft()
        try:
            emb, x, embed_s = fut.result()
            if x is not None:
                batch.x = x   # a raise's evidence reads them
            t0 = time.perf_counter()
            res = classify_batch(batch, emb, 0.0)
        except Exception as e:  # noqa: BLE001 - a model that cannot embed must not commit anything
            raise _embed_failed(e) from e
        res.seconds = derive_s + embed_s + time.perf_counter() - t0
        self.pipeline.apply(batch, res)
        self._on_applied(batch)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
