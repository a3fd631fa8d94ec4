"""``kafka.client: confluent-kafka`` for the daemon's samples consumer, on the real embedded broker.

The daemon on librdkafka must act exactly as on kafka-python: every event the offline reference
computes, each once; every bad record dead-lettered; everything committed. A second daemon (on
kafka-python: both clients share a group) joining takes partitions over (revoke, assign, seek to the
rewind marker) without losing or changing an event. SIGKILL and restart on this client: test_reliability_crashloop.py.
"""

from __future__ import annotations

import dataclasses
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import (
    DaemonProc,
    background_replay,
    bad_lines,
    check_episodes,
    committed,
    end_offsets,
    labelled_trace,
    make_config,
    needs_confluent,
    offline_events,
    produce,
    read_topic,
    running,
    same_event,
    value,
    wait_until,
    write_config,
)
from kafka.structs import TopicPartition

from netsiam.config import Config
from netsiam.replay import replay_lines

pytestmark = [needs_confluent]


def _confluent(cfg: Config) -> Config:
    return dataclasses.replace(cfg, kafka=dataclasses.replace(cfg.kafka, client="confluent-kafka"))


def _events(bootstrap: str, topic: str) -> dict[str, dict[str, Any]]:
    """event_id -> event (detected_at dropped); a duplicate must be the very same event."""
    by_id: dict[str, dict[str, Any]] = {}
    for m in read_topic(bootstrap, topic):
        e = orjson.loads(m.value)
        e.pop("detected_at")
        assert e["event_id"] not in by_id or same_event(by_id[e["event_id"]], e), e
        by_id[e["event_id"]] = e
    return by_id


def test_adapter_speaks_kafka_python_types(broker: Any, topics: Any) -> None:
    from kafka import KafkaConsumer
    from kafka.structs import OffsetAndMetadata

    from netsiam.confluent_consumer import ConfluentConsumer, consumer_config

    cfg = _confluent(make_config(broker, topics))
    group, tp = cfg.kafka.group_id, TopicPartition(topics.samples, 1)
    values = [b'{"n": %d}' % i for i in range(50)]
    produce(broker.bootstrap, topics.samples, values, keys=[b"k"] * 50, partition=1)
    kp = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    kp.assign([tp])
    kp.commit({tp: OffsetAndMetadata(5, None, -1)})  # where a previous owner stopped
    assigned: list[set[Any]] = []
    c = ConfluentConsumer(consumer_config(cfg.kafka, None, group), max_poll_records=20)

    class Listener:  # what the daemon's does: pause, queue; the main thread positions and resumes
        def on_partitions_assigned(self, tps: set[Any]) -> None:
            c.pause(*tps)
            assigned.append(tps)

        def on_partitions_revoked(self, tps: set[Any]) -> None:
            pass

    def take(n: int) -> list[Any]:
        got: list[Any] = []

        def more() -> bool:
            got.extend(c.poll(200).get(tp, []))
            return len(got) >= n

        wait_until(more, 30, f"{n} records")
        return got

    try:
        c.subscribe([topics.samples], Listener())
        wait_until(lambda: c.poll(100) == {} and bool(assigned), 30, "assignment")  # paused: nothing
        assert assigned == [{TopicPartition(topics.samples, p) for p in range(4)}]
        assert c.committed(tp) == 5 and c.highwater(tp) is None
        c.seek(tp, 10)  # a replay-from marker above the commit: the daemon's order (committed, seek, resume)
        c.resume(*assigned[0])
        got = take(40)
        assert [(m.topic, m.partition, m.offset, m.key, m.value) for m in got] == [
            (topics.samples, 1, i, b"k", values[i]) for i in range(10, 50)]
        assert all(isinstance(m.timestamp, int) and m.timestamp > 1.7e12 for m in got)  # ms, like kafka-python
        assert c.highwater(tp) == 50
        assert c.end_offsets([tp]) == kp.end_offsets([tp])  # what kafka-python's ListOffsets says (Tansu lags)
        assert c.beginning_offsets([tp]) == kp.beginning_offsets([tp]) == {tp: 0}  # the rewind's retention check

        # poll returns once a record is there, not after its timeout (librdkafka's consume waits for all n)
        produce(broker.bootstrap, topics.samples, [b"late"], keys=[b"k"], partition=1)
        t0 = time.monotonic()
        assert [m.value for m in c.poll(60_000).get(tp, [])] == [b"late"] and time.monotonic() - t0 < 30
        c.seek_to_beginning(tp)  # (seek_to_end is not checked: Tansu's ListOffsets(latest) lags the end)
        assert [m.offset for m in take(1)][:1] == [0]

        c.commit({tp: OffsetAndMetadata(42, None, -1)})
        assert c.committed(tp) == 42
        assert committed(broker.bootstrap, group, topics.samples, 4)[1] == 42  # seen by kafka-python
        assert topics.samples in c.topics()
    finally:
        c.close()
        kp.close()


def test_daemon_on_librdkafka_publishes_what_the_offline_run_computes(broker: Any, topics: Any,
                                                                       model_dir: Path) -> None:
    lines, labels = labelled_trace()
    bad = [v for v, _ in bad_lines()]
    replay_lines(lines, broker.bootstrap, topics.samples)       # keyed by source
    produce(broker.bootstrap, topics.samples, bad, keys=[b"bad"] * len(bad), partition=2)
    stream = [*lines, *bad]
    cfg = _confluent(make_config(broker, topics))
    samples = read_topic(broker.bootstrap, topics.samples)
    want = offline_events(cfg, model_dir, samples)
    with running(cfg, model_dir) as d:
        assert type(d.consumer).__name__ == "ConfluentConsumer"
        wait_until(lambda: value(d, "netsiam_records_consumed_total") >= len(stream), 60, "all consumed")
        wait_until(lambda: sum(v or 0 for v in committed(broker.bootstrap, cfg.kafka.group_id, topics.samples,
                                                         4).values()) == len(stream), 30, "all committed")
        assert value(d, "netsiam_records_valid_total") + len(read_topic(broker.bootstrap, topics.deadletter)) \
            == len(stream)
    got = _events(broker.bootstrap, topics.faults)
    assert sorted(got) == sorted(want) and all(same_event(got[i], want[i]) for i in want)
    check_episodes(list(got.values()), labels, max(orjson.loads(b)["ts"] for b in lines))
    assert committed(broker.bootstrap, cfg.kafka.group_id, topics.samples, 4) == \
        end_offsets(broker.bootstrap, topics.samples, 4)


@pytest.mark.slow
def test_a_second_daemon_takes_partitions_over_without_changing_an_event(
        broker: Any, topics: Any, model_dir: Path, tmp_path: Path, daemons: list[DaemonProc]) -> None:
    lines, labels = labelled_trace()
    plain = make_config(broker, topics)
    cfg = _confluent(plain)
    conf = write_config(tmp_path / "config.yaml", cfg)
    rep = background_replay(lines, broker.bootstrap, topics.samples, speed=len(lines) / 25)  # ~25 s
    first = DaemonProc(conf, model_dir, tmp_path / "first.log")
    daemons.append(first)
    first.wait_for("partitions assigned", timeout_s=90)
    time.sleep(6)
    # the newcomer on kafka-python: the two clients share one group
    second = DaemonProc(write_config(tmp_path / "plain.yaml", plain), model_dir, tmp_path / "second.log")
    daemons.append(second)
    second.wait_for("partitions assigned", timeout_s=90)
    rep.join(120)
    wait_until(lambda: sum(v or 0 for v in committed(broker.bootstrap, cfg.kafka.group_id, topics.samples,
                                                     4).values()) == len(lines), 90, "all committed")
    assert first.stop(signal.SIGTERM) == 0 and second.stop(signal.SIGTERM) == 0
    # the group really rebalanced: the first gave partitions up, and they ended split between the two
    held = [re.findall(r"partitions assigned: (\S+)", d.text())[-1].split(",") for d in (first, second)]
    assert "partitions revoked" in first.text() and held[0] and held[1]
    assert "client=confluent-kafka" in first.text() and "client=kafka-python" in second.text()
    assert sorted(held[0] + held[1]) == [f"{topics.samples}-{p}" for p in range(4)]
    want = offline_events(cfg, model_dir, read_topic(broker.bootstrap, topics.samples))
    got = _events(broker.bootstrap, topics.faults)
    assert sorted(got) == sorted(want) and all(same_event(got[i], want[i]) for i in want)
    check_episodes(list(got.values()), labels, max(orjson.loads(b)["ts"] for b in lines))


@pytest.mark.slow
def test_unreachable_broker_and_missing_package_stop_the_start(monkeypatch: pytest.MonkeyPatch,
                                                               model_dir: Path) -> None:
    """As on kafka-python: no broker at start is a service error (the CLI's one line, exit 1); a value
    librdkafka refuses, or the package missing, is a configuration error (exit 4) before any
    connection (systemd does not restart those)."""
    from prometheus_client import CollectorRegistry

    from netsiam.config import KafkaConfig
    from netsiam.detector.loop import Daemon
    from netsiam.errors import ConfigError, ServiceError
    from netsiam.producer import CONFLUENT_HINT
    from netsiam.serving import load_artifact

    art = load_artifact(model_dir)
    cfg = Config(kafka=KafkaConfig(client="confluent-kafka", bootstrap_servers="127.0.0.1:1"),
                 metrics=dataclasses.replace(Config().metrics, port=0))
    with pytest.raises(ServiceError, match="cannot reach the broker at 127.0.0.1:1"):
        Daemon(cfg, art, registry=CollectorRegistry()).run()
    # librdkafka wants session.timeout.ms <= max.poll.interval.ms (300 s)
    long = dataclasses.replace(cfg, kafka=dataclasses.replace(cfg.kafka, session_timeout_ms=400_000))
    with pytest.raises(ConfigError, match="librdkafka refuses the configuration: .*session.timeout.ms"):
        Daemon(long, art, registry=CollectorRegistry()).run()
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # `import confluent_kafka` -> ImportError
    with pytest.raises(ConfigError, match=re.escape(CONFLUENT_HINT)):
        Daemon(cfg, art, registry=CollectorRegistry()).run()
