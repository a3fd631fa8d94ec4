"""Reliability: the broker goes away mid-stream and comes back on the same port (empty: Tansu keeps
data in memory, so topics are recreated). The daemon keeps running, reports not-ready and
``netsiam_broker_up 0`` while it is away, reconnects within 10 s, and processes what comes next exactly
as a fresh daemon would."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import DaemonProc, http_get, labelled_trace, make_config, read_topic, unique, write_config
from test_daemon_signals import offline_events

from netsiam.config import TopicsConfig
from netsiam.detector.broker import free_port, start_broker
from netsiam.detector.replay import replay_lines

pytestmark = pytest.mark.slow


def metric(port: int, name: str) -> float | None:
    try:
        _, text = http_get(port, "/metrics")
    except OSError:
        return None
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(m.group(1)) if m else None


def wait(cond: Any, timeout_s: float, what: str, step: float = 0.1) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class _Where:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap


def test_broker_restart_on_the_same_port(model_dir: Path, tmp_path: Path, daemons: list[DaemonProc]) -> None:
    port = free_port()
    t = unique("bl")
    tc = TopicsConfig(samples=f"{t}.samples", faults=f"{t}.faults", deadletter=f"{t}.deadletter",
                      samples_partitions=2)
    lines, _ = labelled_trace(sources=4, minutes=12)
    half = len(lines) // 2
    part1, part2 = lines[:half], lines[half:]
    blog = tmp_path / "tansu.log"
    bp = start_broker(port, topics=tc, log_path=blog)
    try:
        cfg = make_config(_Where(bp.bootstrap), tc)
        conf = write_config(tmp_path / "config.yaml", cfg)
        d = DaemonProc(conf, model_dir, tmp_path / "detect.log")
        daemons.append(d)
        d.wait_for("partitions assigned")
        mport = d.metrics_port
        wait(lambda: http_get(mport, "/healthz")[0] == 200 and metric(mport, "netsiam_broker_up") == 1, 15,
             "ready before the outage")

        replay_lines(part1, bp.bootstrap, tc.samples)
        wait(lambda: (metric(mport, "netsiam_records_consumed_total") or 0) >= len(part1), 30, "part 1 consumed")
        wait(lambda: metric(mport, "netsiam_events_pending") == 0, 30, "part 1 events acknowledged")
        before = {orjson.loads(m.value)["event_id"] for m in read_topic(bp.bootstrap, tc.faults, idle_s=0.5)}

        # -- outage ---------------------------------------------------------------------------------
        bp.stop()
        down = wait(lambda: http_get(mport, "/healthz")[0] == 503 and metric(mport, "netsiam_broker_up") == 0,
                    15, "not-ready while the broker is away")
        assert "not ready: broker unreachable" in http_get(mport, "/healthz")[1]
        time.sleep(2.0)
        assert d.proc.poll() is None, d.text()[-2000:]

        # -- back, same port, empty -----------------------------------------------------------------
        bp = start_broker(port, topics=tc, log_path=blog)
        back = wait(lambda: http_get(mport, "/healthz")[0] == 200 and metric(mport, "netsiam_broker_up") == 1,
                    30, "ready again")
        replay_lines(part2, bp.bootstrap, tc.samples)
        wait(lambda: (metric(mport, "netsiam_records_consumed_total") or 0) >= len(lines)
             or d.proc.poll() is not None, 60, "part 2 consumed")
        samples2 = read_topic(bp.bootstrap, tc.samples, idle_s=0.3)
        want = offline_events(cfg, model_dir, samples2)  # the broker is empty: what a fresh daemon computes

        def faults() -> dict[str, Any]:
            return {orjson.loads(m.value)["event_id"]: orjson.loads(m.value)
                    for m in read_topic(bp.bootstrap, tc.faults, idle_s=0.3)}

        # Either the daemon delivers, or (its idempotent producer id is unknown to the new, empty
        # broker: UnknownProducerId / OutOfOrderSequence) it exits 1 WITHOUT committing, and a
        # restart (systemd Restart=) replays and delivers. Never: committed but not delivered.
        wait(lambda: set(want) <= set(faults()) or d.proc.poll() is not None, 30, "part 2 events or exit")
        restarted = d.proc.poll() is not None
        if restarted:
            assert d.proc.returncode == 1 and "stopping without commit" in d.text(), d.text()[-3000:]
            e = DaemonProc(conf, model_dir, tmp_path / "detect2.log")
            daemons.append(e)
            e.wait_for("partitions assigned")
            wait(lambda: set(want) <= set(faults()), 60, "part 2 events after the restart")
            d = e
        after = faults()
        assert d.stop(signal.SIGTERM) == 0
    finally:
        bp.stop()
    print(f"broker loss: not-ready after {down:.1f} s, ready {back:.1f} s after the broker was back, "
          f"restart needed: {restarted}")
    assert back <= 10.0, f"reconnect took {back:.1f} s"
    assert len(samples2) == len(part2)
    assert set(want) <= set(after), sorted(set(want) - set(after))
    assert set(after) - set(want) <= before  # anything else is a part-1 event delivered late (same id)
    assert before, "part 1 raised something before the outage"
