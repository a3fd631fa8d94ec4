"""The daemon's micro-batching (detector/batcher.py ``Batcher``), without Kafka: a backlog is embedded
as fast as it is fed, never held in memory, and its batches are applied in order."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from helpers import LinearArtifact, Model, embed_all, labelled_trace, partitioned
from test_pipeline import events

from netsiam.config import Config, override
from netsiam.detector.batch import Batch
from netsiam.detector.batcher import Batcher
from netsiam.detector.pipeline import Pipeline

BATCH_MAX = 64
POLL = 200  # records per partition per round: more than a batch, as when catching up a backlog


class SlowArtifact(LinearArtifact):
    """The linear test model, a few milliseconds per embed call (the embed thread is the slower one)."""

    def __init__(self, base: LinearArtifact) -> None:
        super().__init__(base.head, base.prototypes, base.window, base.version)
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def embed(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        time.sleep(0.004)
        with self._lock:
            self.running -= 1
        return super().embed(x, batch_size)


def test_a_backlog_is_never_held_pending_and_batches_apply_in_order(model: Model) -> None:
    lines, _ = labelled_trace(sources=4, minutes=8)
    parts = partitioned(lines, 2)
    cfg = override(Config(), {"detector.batch_max": BATCH_MAX, "detector.debounce.hold_within": False})

    ref = Pipeline(cfg, model.fake())
    for tp, msgs in parts.items():
        ref.feed(tp, msgs)
    embed_all(ref, BATCH_MAX)
    expected = events(ref.take_outbox())
    assert expected  # the trace has faults: the comparison below means something

    art = SlowArtifact(model.fake())
    p = Pipeline(cfg, art)
    applied: list[Batch] = []
    b = Batcher(p, cfg, applied.append)
    out: list[Any] = []
    try:
        for i in range(0, max(len(m) for m in parts.values()), POLL):
            for tp, msgs in parts.items():
                p.feed(tp, msgs[i:i + POLL])
            b.pump(final=False, caught_up=False)
            assert p.pending < BATCH_MAX, "windows held pending behind the embed thread"
            out += p.take_outbox()
        b.drain()
        out += p.take_outbox()
    finally:
        b.close()

    def key(e: dict[str, Any]) -> tuple[str, float, str]:
        return e["source"], e["window_end"], e["state"]

    assert sorted(events(out), key=key) == sorted(expected, key=key)  # partitions interleave differently
    assert art.most_running == 1  # one embed call at a time (the model is not shared across threads)
    windows = ref.metrics.windows_embedded._value.get()
    assert sum(len(x.raw) for x in applied) == windows == p.metrics.windows_embedded._value.get()  # each once
    # applied in the order taken: each batch's commit snapshot is at or past the previous one's
    for a, c in zip(applied, applied[1:], strict=False):
        assert all(c.positions[tp] >= a.positions[tp] for tp in a.positions)
        assert c.seq >= a.seq
    assert len(applied) >= windows // BATCH_MAX  # full batches while catching up, not one batch per round


class BrokenArtifact(LinearArtifact):
    def embed(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        raise RuntimeError("no such op")


def test_a_failed_embed_call_stops_the_batcher_with_nothing_applied(model: Model) -> None:
    from netsiam.detector.delivery import FatalError

    lines, _ = labelled_trace(sources=2, minutes=3)
    base = model.fake()
    p = Pipeline(Config(), BrokenArtifact(base.head, base.prototypes, base.window))
    applied: list[Batch] = []
    b = Batcher(p, Config(), applied.append)
    try:
        for tp, msgs in partitioned(lines, 2).items():
            p.feed(tp, msgs)
        with pytest.raises(FatalError, match="embedding failed: RuntimeError: no such op"):
            b.drain()
    finally:
        b.close()
    assert applied == []  # so no offset of those records can be committed
