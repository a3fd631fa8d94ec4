"""Reliability: when the producer cannot deliver, the daemon stops consuming instead of buffering
without bound, reports not-ready, commits nothing it has not delivered, and resumes by itself once a
producer delivers again.

The consumer side is the real broker; the producer is a stand-in whose sends are never acknowledged
(a broker that accepts the connection but never answers produce requests, or a full, unreachable
cluster) and whose flush times out, as kafka-python's does. The daemon must: pause consumption once
an output has waited ACK_OVERDUE_S, say so on /healthz and in ``netsiam_broker_up``, replace a
producer that got no ack for PRODUCER_STALL_S and send everything unacknowledged again, and leave the
group's committed offsets below the first record whose output was never acknowledged.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kafka
import orjson
import pytest
from helpers import (
    bad_lines,
    committed,
    end_offsets,
    labelled_trace,
    make_config,
    needs_confluent,
    produce,
    read_topic,
    wait_until,
)
from kafka.errors import KafkaTimeoutError
from kafka.future import Future
from prometheus_client import CollectorRegistry

import netsiam.detector.delivery as delivery
import netsiam.detector.loop as loop
from netsiam.config import Config, KafkaConfig
from netsiam.detector.delivery import ACK_OVERDUE_S
from netsiam.detector.loop import Daemon
from netsiam.serving import load_artifact

pytestmark = pytest.mark.slow


class StuckProducer:
    """Accepts sends, never acknowledges them; flush gives up like kafka-python's after its timeout."""

    def __init__(self, **_kw: Any) -> None:
        self.sent = 0
        self.flushes = 0

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None, **_kw: Any) -> Future:
        self.sent += 1
        return Future()  # never resolved

    def flush(self, timeout: float | None = None) -> None:
        self.flushes += 1
        time.sleep(min(timeout or 0.2, 0.2))
        raise KafkaTimeoutError("Timeout waiting for flush")

    def close(self, *_a: Any, **_kw: Any) -> None:
        pass


class Producers:
    """kafka.KafkaProducer stand-in: the daemon's producers (client id ``netsiam``) are StuckProducers
    while ``stuck`` is set; every other producer (the test's own) is the real one."""

    def __init__(self) -> None:
        self.real = kafka.KafkaProducer
        self.stuck = threading.Event()
        self.stuck.set()
        self.made: list[Any] = []

    def __call__(self, **kw: Any) -> Any:
        if kw.get("client_id") != KafkaConfig().client_id:
            return self.real(**kw)
        p = StuckProducer(**kw) if self.stuck.is_set() else self.real(**kw)
        self.made.append(p)
        return p


@pytest.fixture
def producers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Producers]:
    p = Producers()
    monkeypatch.setattr(kafka, "KafkaProducer", p)
    monkeypatch.setattr(delivery, "PRODUCER_STALL_S", 2.0)    # replace a silent producer sooner (default 10 s)
    monkeypatch.setattr(loop, "SHUTDOWN_FLUSH_S", 3.0)    # give up on the final flush sooner (default 60 s)
    yield p
    for made in p.made:
        if not isinstance(made, StuckProducer):
            made.close(1)


def consumed(d: Daemon) -> float:
    return d.registry.get_sample_value("netsiam_records_consumed_total") or 0.0


def start(d: Daemon) -> tuple[threading.Thread, list[int]]:
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(d.run()), daemon=True)
    t.start()
    assert d.started.wait(30)
    return t, rc


def paused(d: Daemon, n: int) -> None:
    """The daemon consumed ``n`` records, then stopped consuming and said why."""
    wait_until(lambda: consumed(d) >= n, 30, f"{n} records consumed")
    wait_until(lambda: not d.ready()[0] and "publishing not acknowledged" in d.ready()[1], 15, "not ready")
    wait_until(lambda: d.registry.get_sample_value("netsiam_broker_up") == 0, 5, "netsiam_broker_up 0")


def start_paused(broker: Any, topics: Any, model_dir: Path, client: str = "kafka-python"
                 ) -> tuple[Config, Daemon, threading.Thread, list[int], list[bytes], int]:
    """A daemon whose first output is never acknowledged: half a trace behind a bad record (its dead
    letter) on partition 0, consumed until the daemon pauses; then the other half is produced, which
    a paused daemon must not consume. Returns (config, daemon, thread, exit codes, lines, half)."""
    lines, _ = labelled_trace(sources=4, minutes=10)
    half = len(lines) // 2
    bad = bad_lines()[0][0]
    produce(broker.bootstrap, topics.samples, [bad, *lines[:half]], keys=[b"k"] * (half + 1), partition=0)
    cfg = make_config(broker, topics)
    cfg = dataclasses.replace(cfg, kafka=dataclasses.replace(cfg.kafka, client=client))  # the samples consumer
    d = Daemon(cfg, load_artifact(model_dir), None, registry=CollectorRegistry())
    t, rc = start(d)
    paused(d, half + 1)
    produce(broker.bootstrap, topics.samples, lines[half:], keys=[b"k"] * (len(lines) - half), partition=0)
    return cfg, d, t, rc, lines, half


def test_undeliverable_output_pauses_consumption_and_commits_nothing(
        broker: Any, topics: Any, model_dir: Path, producers: Producers) -> None:
    t0 = time.monotonic()
    cfg, d, t, rc, lines, half = start_paused(broker, topics, model_dir)
    took = time.monotonic() - t0
    # the second half arrived while paused: not consumed (bounded memory), and the daemon keeps running
    time.sleep(ACK_OVERDUE_S)
    assert consumed(d) == half + 1 and t.is_alive() and not rc
    # the silent producer was replaced and everything re-sent (to another silent one)
    wait_until(lambda: len(producers.made) >= 2, 15, "a new producer")
    assert producers.made[-1].sent >= 1
    assert d.registry.get_sample_value("netsiam_commits_total") in (None, 0.0)

    d.request_stop()  # the final flush gives up: exit 1 without commit
    t.join(30)
    assert rc == [1]
    assert consumed(d) == half + 1
    assert d.registry.get_sample_value("netsiam_commits_total") in (None, 0.0)
    assert committed(broker.bootstrap, cfg.kafka.group_id, topics.samples, 4) == {0: None, 1: None, 2: None,
                                                                                   3: None}
    print(f"backpressure: produced and paused after {took:.1f} s (ACK_OVERDUE_S={ACK_OVERDUE_S}), consumed {int(consumed(d))}, "
          f"{len(producers.made)} producers")


@pytest.mark.parametrize("client", ["kafka-python", pytest.param("confluent-kafka", marks=needs_confluent)])
def test_consumption_resumes_and_everything_is_delivered_once_a_producer_gets_acks(
        broker: Any, topics: Any, model_dir: Path, producers: Producers, client: str) -> None:
    cfg, d, t, rc, lines, half = start_paused(broker, topics, model_dir, client)
    assert type(d.consumer).__name__ == {"kafka-python": "KafkaConsumer", "confluent-kafka": "ConfluentConsumer"}[client]
    time.sleep(1.0)  # paused: the half produced meanwhile stays unconsumed
    assert consumed(d) == half + 1

    producers.stuck.clear()  # the next producer is a real one: the re-sent outputs get through
    back = wait_until(lambda: d.ready()[0], 30, "ready again")
    wait_until(lambda: consumed(d) == len(lines) + 1, 30, "the rest consumed")
    ends = end_offsets(broker.bootstrap, topics.samples, 4)
    wait_until(lambda: committed(broker.bootstrap, cfg.kafka.group_id, topics.samples, 4)[0] == ends[0], 30,
         "everything committed")
    d.request_stop()
    t.join(30)
    assert rc == [0]
    dls = [orjson.loads(m.value) for m in read_topic(broker.bootstrap, topics.deadletter, idle_s=0.3)]
    assert [(x["partition"], x["offset"], x["reason"]) for x in dls][:1] == [(0, 0, "not_json")]
    faults = read_topic(broker.bootstrap, topics.faults, idle_s=0.3)
    assert faults, "the events held back were delivered"
    print(f"backpressure: ready {back:.1f} s after acks came back, {len(faults)} events, "
          f"{len(producers.made)} producers")
