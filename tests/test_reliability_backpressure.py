"""Reliability: when the producer cannot deliver, the daemon stops consuming instead of buffering
without bound, and commits nothing it has not delivered.

The consumer side is the real broker; the producer is a stand-in whose sends are never acknowledged
(a broker that accepts the connection but never answers produce requests, or a full, unreachable
cluster) and whose flush times out, as kafka-python's does. The daemon must: stop polling once a
commit has to wait for acks (COMMIT_MAX_DELAY_S), exit 1 on the flush timeout, and leave the group's
committed offsets below the first record whose output was never acknowledged.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import kafka
import pytest
from conftest import bad_lines, committed, labelled_trace, make_config, produce
from kafka.errors import KafkaTimeoutError
from kafka.future import Future
from prometheus_client import CollectorRegistry

from netsiam.detector.daemon import COMMIT_MAX_DELAY_S, Daemon
from netsiam.trainer.artifact import load_artifact

pytestmark = pytest.mark.slow


class StuckProducer:
    """Accepts sends, never acknowledges them; flush gives up like kafka-python's after its timeout."""

    instances: list[StuckProducer] = []

    def __init__(self, **_kw: Any) -> None:
        self.sent = 0
        self.flushes = 0
        StuckProducer.instances.append(self)

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None, **_kw: Any) -> Future:
        self.sent += 1
        return Future()  # never resolved

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1
        time.sleep(0.5)  # stands in for the 60 s the daemon grants
        raise KafkaTimeoutError("Timeout waiting for flush")

    def close(self, *_a: Any, **_kw: Any) -> None:
        pass


def test_undeliverable_output_stops_consumption_and_commits_nothing(
        broker: Any, topics: Any, model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines, _ = labelled_trace(sources=4, minutes=10)
    bad = bad_lines()[0][0]
    # partition 0 starts with a bad record: its dead letter is the first output, never acknowledged
    produce(broker.bootstrap, topics.samples, [bad, *lines], keys=[b"k"] * (len(lines) + 1), partition=0)
    monkeypatch.setattr(kafka, "KafkaProducer", StuckProducer)
    cfg = make_config(broker, topics)
    d = Daemon(cfg, load_artifact(model_dir), None, registry=CollectorRegistry())
    rc: list[Any] = []
    t = threading.Thread(target=lambda: rc.append(d.run()), daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(60)
    assert not t.is_alive(), "the daemon kept running with nothing acknowledged"
    took = time.monotonic() - t0
    assert rc == [1]                                               # FatalError: exit without commit
    assert StuckProducer.instances[-1].flushes >= 1
    consumed = d.registry.get_sample_value("netsiam_records_consumed_total") or 0
    # bounded in TIME, not in count: polling stops once a commit has waited COMMIT_MAX_DELAY_S for
    # acks (the main loop then blocks in flush and exits); here that is within a few seconds
    assert consumed <= len(lines) + 1 and took < 30
    assert d.registry.get_sample_value("netsiam_commits_total") in (None, 0.0)
    assert committed(broker.bootstrap, cfg.kafka.group_id, topics.samples, 4) == {0: None, 1: None, 2: None,
                                                                                   3: None}
    print(f"backpressure: stopped after {took:.1f} s (COMMIT_MAX_DELAY_S={COMMIT_MAX_DELAY_S}), "
          f"consumed {int(consumed)}, {StuckProducer.instances[-1].sent} sends pending")
