"""Reliability: the broker goes away mid-stream and comes back on the same port (empty: Tansu keeps
data in memory, so topics are recreated). The daemon keeps running (no exit, no restart), reports
not-ready and ``netsiam_broker_up 0`` while it is away, reconnects within 10 s, processes what comes
next exactly as a fresh daemon would, and delivers to the new broker the events it had not delivered
when the old one went away."""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import (
    DaemonProc,
    committed,
    http_get,
    labelled_trace,
    make_config,
    metric,
    needs_confluent,
    offline_events,
    read_topic,
    same_event,
    unique,
    wait_until,
    write_config,
)
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from prometheus_client import CollectorRegistry

from netsiam.broker import create_topics, free_port, start_broker
from netsiam.config import TopicsConfig
from netsiam.detector.delivery import ACK_OVERDUE_S
from netsiam.replay import replay_lines
from netsiam.serving import load_artifact

pytestmark = pytest.mark.slow
HOLD_S = 4.0  # the restarted broker runs this long without the output topics


class _Where:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap


def outage_setup(tag: str) -> tuple[int, TopicsConfig, list[bytes], list[bytes]]:
    """A free port for the broker, this test's topics (2 sample partitions) and a labelled trace cut
    in two: part 1 before the outage, part 2 after."""
    t = unique(tag)
    tc = TopicsConfig(samples=f"{t}.samples", faults=f"{t}.faults", deadletter=f"{t}.deadletter",
                      samples_partitions=2)
    lines, _ = labelled_trace(sources=4, minutes=12)
    half = len(lines) // 2
    return free_port(), tc, lines[:half], lines[half:]


@pytest.mark.parametrize("client", ["kafka-python", pytest.param("confluent-kafka", marks=needs_confluent)])
def test_broker_restart_on_the_same_port(model_dir: Path, tmp_path: Path, daemons: list[DaemonProc],
                                         client: str) -> None:
    port, tc, part1, part2 = outage_setup("bl")
    blog = tmp_path / "tansu.log"
    bp = start_broker(port, topics=tc, log_path=blog)
    try:
        cfg = make_config(_Where(bp.bootstrap), tc)
        cfg = dataclasses.replace(cfg, kafka=dataclasses.replace(cfg.kafka, client=client))  # the samples consumer
        conf = write_config(tmp_path / "config.yaml", cfg)
        d = DaemonProc(conf, model_dir, tmp_path / "detect.log")
        daemons.append(d)
        d.wait_for("partitions assigned")
        mport = d.metrics_port
        wait_until(lambda: http_get(mport, "/healthz")[0] == 200 and metric(mport, "netsiam_broker_up") == 1, 15,
             "ready before the outage")

        replay_lines(part1, bp.bootstrap, tc.samples)
        wait_until(lambda: (metric(mport, "netsiam_records_consumed_total") or 0) >= len(part1), 30, "part 1 consumed")
        wait_until(lambda: metric(mport, "netsiam_events_pending") == 0, 30, "part 1 events acknowledged")
        before = {orjson.loads(m.value)["event_id"] for m in read_topic(bp.bootstrap, tc.faults, idle_s=0.5)}

        # -- outage ---------------------------------------------------------------------------------
        bp.stop()
        down = wait_until(lambda: http_get(mport, "/healthz")[0] == 503 and metric(mport, "netsiam_broker_up") == 0,
                    15, "not-ready while the broker is away")
        assert "not ready: broker unreachable" in http_get(mport, "/healthz")[1]
        time.sleep(2.0)
        assert d.proc.poll() is None, d.text()[-2000:]

        # -- back, same port, empty -----------------------------------------------------------------
        bp = start_broker(port, topics=tc, log_path=blog)
        back = wait_until(lambda: http_get(mport, "/healthz")[0] == 200 and metric(mport, "netsiam_broker_up") == 1,
                    30, "ready again")
        replay_lines(part2, bp.bootstrap, tc.samples)
        wait_until(lambda: (metric(mport, "netsiam_records_consumed_total") or 0) >= len(part1) + len(part2)
             or d.proc.poll() is not None, 60, "part 2 consumed")
        samples2 = read_topic(bp.bootstrap, tc.samples, idle_s=0.3)
        want = offline_events(cfg, model_dir, samples2)  # the broker is empty: what a fresh daemon computes

        def faults() -> dict[str, Any]:
            return {orjson.loads(m.value)["event_id"]: orjson.loads(m.value)
                    for m in read_topic(bp.bootstrap, tc.faults, idle_s=0.3)}

        # The daemon's idempotent producer id is unknown to the new, empty broker (OutOfOrderSequence,
        # then a fatal InitProducerId): the daemon replaces its producer and delivers, without a restart.
        wait_until(lambda: set(want) <= set(faults()) or d.proc.poll() is not None, 30, "part 2 events")
        assert d.proc.poll() is None, f"the daemon exited ({d.proc.returncode}):\n{d.text()[-3000:]}"
        after = faults()
        assert d.stop(signal.SIGTERM) == 0
    finally:
        bp.stop()
    print(f"broker loss: not-ready after {down:.1f} s, ready {back:.1f} s after the broker was back")
    assert back <= 10.0, f"reconnect took {back:.1f} s"
    if client == "confluent-kafka":  # librdkafka's reconnect failures (~20 a second) held back to a few lines
        assert 0 < d.text().count("Connection refused") <= 10, d.text().count("Connection refused")
    assert len(samples2) == len(part2)
    assert set(want) <= set(after), sorted(set(want) - set(after))
    assert set(after) - set(want) <= before  # anything else is a part-1 event delivered late (same id)
    assert before, "part 1 raised something before the outage"


def test_events_pending_when_the_broker_dies_reach_the_restarted_broker(
        model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deterministic version of the outage: the embed thread is held while the broker is stopped, so
    every event of part 1 is produced while the broker is away (none acknowledged). The broker comes
    back empty. The daemon must keep running, say not-ready meanwhile, and deliver those events to the
    new broker (re-sent through a new producer: the old one's id is unknown there), then process part 2
    like a fresh daemon; offsets are committed only once acked."""
    import netsiam.detector.batcher as dm
    from netsiam.detector.loop import Daemon

    port, tc, part1, part2 = outage_setup("bp")

    armed, held, release = threading.Event(), threading.Event(), threading.Event()

    def gated(real: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def call(art: Any, x: Any) -> Any:  # the embed thread's call
            if armed.is_set():
                held.set()
                release.wait(60)
            return real(art, x)
        return call

    # either entry: raw windows (the compiled path that derives; tried first, off once refused) or inputs
    monkeypatch.setattr(dm, "embed_inputs", gated(dm.embed_inputs))
    monkeypatch.setattr(dm, "embed_raw_windows", gated(dm.embed_raw_windows))
    bp = start_broker(port, topics=tc)
    rc: list[int] = []
    d: Daemon | None = None
    try:
        cfg = make_config(_Where(bp.bootstrap), tc)
        d = Daemon(cfg, load_artifact(model_dir), None, registry=CollectorRegistry())
        th = threading.Thread(target=lambda: rc.append(d.run()), daemon=True)  # type: ignore[union-attr]
        th.start()
        assert d.started.wait(30)
        mport = d.metrics_port
        assert mport is not None
        wait_until(lambda: http_get(mport, "/healthz")[0] == 200, 20, "ready")

        armed.set()
        replay_lines(part1, bp.bootstrap, tc.samples)
        samples1 = read_topic(bp.bootstrap, tc.samples, idle_s=0.3)
        want1 = offline_events(cfg, model_dir, samples1)
        assert want1, "part 1 raises something"
        wait_until(held.is_set, 30, "the embed thread holding part 1's first batch")
        wait_until(lambda: (metric(mport, "netsiam_records_consumed_total") or 0) >= len(part1), 30, "part 1 consumed")

        # -- outage while part 1's windows wait for the encoder ------------------------------------
        bp.stop()
        wait_until(lambda: http_get(mport, "/healthz")[0] == 503 and metric(mport, "netsiam_broker_up") == 0, 15,
             "not-ready while the broker is away")
        armed.clear()
        release.set()
        wait_until(lambda: (metric(mport, "netsiam_events_pending") or 0) >= len(want1), 30,
             "part 1 events produced while the broker is away")   # a round may wait on the dead broker
        time.sleep(ACK_OVERDUE_S + 1.0)
        assert th.is_alive() and not rc, rc
        status, body = http_get(mport, "/healthz")
        assert status == 503, body
        assert metric(mport, "netsiam_commits_total") in (None, 0.0)

        # -- back, same port, empty, its output topics not there yet: Tansu 0.6.0 acknowledges a
        # produce to a missing topic and drops it, so the daemon must hold its events until they exist
        bp = start_broker(port, topics=None)
        with KafkaAdminClient(bootstrap_servers=bp.bootstrap) as admin:  # the samples topic first, as in
            admin.create_topics([NewTopic(tc.samples, tc.samples_partitions, 1)])  # a slow `netsiam broker`
            time.sleep(HOLD_S)
            assert (metric(mport, "netsiam_events_pending") or 0) >= len(want1), "events held while topics are missing"
            assert http_get(mport, "/healthz")[0] == 503
            assert tc.faults not in admin.list_topics(), "nothing auto-created the faults topic"
        create_topics(bp.bootstrap, tc)
        back = wait_until(lambda: http_get(mport, "/healthz")[0] == 200 and metric(mport, "netsiam_broker_up") == 1,
                    30, "ready again")

        def faults() -> dict[str, Any]:
            return {orjson.loads(m.value)["event_id"]: orjson.loads(m.value)
                    for m in read_topic(bp.bootstrap, tc.faults, idle_s=0.3)}

        try:
            wait_until(lambda: set(want1) <= set(faults()), 30, "part 1 events on the restarted broker", step_s=0.5)
        except AssertionError:
            got = faults()
            missing = [(e["source"], e["fault"], e["state"], e["window_end"]) for k, e in want1.items()
                       if k not in got]
            raise AssertionError(
                f"{len(missing)} of {len(want1)} part-1 events missing on the restarted broker: {missing}; "
                f"got {len(got)}: {[(e['source'], e['fault'], e['state'], e['window_end']) for e in got.values()]}; "
                f"samples read {len(samples1)} of {len(part1)}; pending={metric(mport, 'netsiam_events_pending')}"
            ) from None
        got1 = faults()
        assert all(same_event(got1[k], want1[k]) for k in want1)
        assert metric(mport, "netsiam_events_pending") == 0

        replay_lines(part2, bp.bootstrap, tc.samples)
        samples2 = read_topic(bp.bootstrap, tc.samples, idle_s=0.3)
        want2 = offline_events(cfg, model_dir, samples2)  # a fresh daemon on the (empty) new broker
        wait_until(lambda: set(want2) <= set(faults()), 30, "part 2 events", step_s=0.5)
        after = faults()
        assert set(after) == set(want1) | set(want2)
        assert th.is_alive() and not rc, rc
        d.request_stop()
        th.join(60)
        assert rc == [0]
        assert committed(bp.bootstrap, cfg.kafka.group_id, tc.samples, 2) == {
            p: sum(1 for m in samples2 if m.partition == p) or None for p in range(2)}
    finally:
        release.set()
        if d is not None:
            d.request_stop()
        bp.stop()
    print(f"pending events across a broker restart: {len(want1)} delivered after the restart, "
          f"ready {back:.1f} s after the broker was back")
    assert back <= 10.0, f"reconnect took {back:.1f} s"
