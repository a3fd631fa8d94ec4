"""``netsiam collect sipp --bootstrap``: acknowledged publishing on the real broker. Nothing is lost
while the broker is away (the buffer fills, then reading blocks), and a real SIPp restarted under a
running collector, plus a restart of the collector itself, give exactly the imported rows, once.
127.0.0.1 only; each test has its own topics."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import (
    REPO,
    free_udp_base,
    http_get,
    imported,
    needs_confluent,
    needs_sipp,
    read_topic,
    start_sipp,
    stat_text,
    stop_sipp,
    unique,
)

from netsiam.broker import create_topics, free_port, start_broker
from netsiam.config import TopicsConfig

pytestmark = pytest.mark.slow
DATA_B = REPO / "tests" / "data" / "sipp_b_stat.csv"


class Collector:
    """``netsiam collect ...`` as a child process, its log in a file, its /metrics on a free port."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        with log.open("ab") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "netsiam", "collect", *args, "--metrics-port", "0"],
                                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=f)
        self.port = 0
        wait_for(lambda: self._port() > 0, 30, "the collector's metrics endpoint", self)

    def _port(self) -> int:
        if self.proc.poll() is not None:
            raise AssertionError(f"collector exited ({self.proc.returncode}):\n{self.log.read_text()[-2000:]}")
        m = list(re.finditer(r"metrics listening on http://[^:]+:(\d+)/", self.log.read_text()))
        self.port = int(m[-1].group(1)) if m else 0
        return self.port

    def metric(self, name: str) -> float:
        _, text = http_get(self.port, "/metrics")
        m = re.search(rf'^{re.escape(name)}{{collector="\w+"}} ([0-9.e+-]+)$', text, re.M)
        return float(m.group(1)) if m else float("nan")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(60)


def wait_for(cond: Callable[[], bool], timeout_s: float, what: str, c: Collector | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    tail = c.log.read_text()[-2000:] if c is not None else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{tail}")


def values(bootstrap: str, topic: str, n: int = 0, timeout_s: float = 60.0) -> list[bytes]:
    msgs = read_topic(bootstrap, topic, until=lambda m: len(m) >= n, timeout_s=timeout_s, idle_s=0.5)
    assert all(m.key == b"s" for m in msgs)
    return [m.value for m in msgs]


def _topics() -> TopicsConfig:
    t = unique("col")
    return TopicsConfig(samples=f"{t}.samples", faults=f"{t}.faults", deadletter=f"{t}.deadletter",
                        samples_partitions=2)


@pytest.mark.parametrize("client", ["kafka-python", pytest.param("confluent-kafka", marks=needs_confluent)])
def test_broker_outage_holds_records_then_blocks_and_loses_nothing(tmp_path: Path, client: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With either ``kafka.client`` (the collector child reads it from the environment)."""
    monkeypatch.setenv("NETSIAM_KAFKA__CLIENT", client)
    lines = stat_text("sipp_b").splitlines(keepends=True)
    want = imported([DATA_B])
    path = tmp_path / "stat.csv"
    path.write_text("".join(lines[:12]))   # header, start fragment, 10 rows
    port, tc = free_port(), _topics()
    bp = start_broker(port, topics=tc, log_path=tmp_path / "tansu.log")
    c = None
    try:
        c = Collector(["sipp", str(path), "--source", "s", "--follow", "--bootstrap", bp.bootstrap,
                       "--topic", tc.samples, "--state", str(tmp_path / "state.json"), "--buffer", "5"],
                      tmp_path / "collect.log")
        assert values(bp.bootstrap, tc.samples, 10) == want[:10]
        wait_for(lambda: c.metric("netsiam_collect_pending_records") == 0, 30, "acks", c)
        assert c.metric("netsiam_collect_broker_up") == 1
        assert c.metric("netsiam_collect_records_published_total") == 10
        assert f"publishing with {client}" in c.log.read_text()

        bp.stop()                          # -- outage: 20 rows are written while the broker is away
        with path.open("a") as w:
            for line in lines[12:32]:
                w.write(line)
                w.flush()
                time.sleep(0.05)
        wait_for(lambda: c.metric("netsiam_collect_broker_up") == 0, 30, "broker_up 0", c)
        wait_for(lambda: c.metric("netsiam_collect_pending_records") == 5, 30, "a full buffer", c)
        time.sleep(1.0)
        assert c.metric("netsiam_collect_pending_records") == 5                 # bounded ...
        assert c.metric("netsiam_collect_backlog_bytes") > 0                    # ... reading blocked
        assert c.proc.poll() is None

        bp = start_broker(port, topics=tc, log_path=tmp_path / "tansu.log")  # back, empty, topics recreated
        after = values(bp.bootstrap, tc.samples, 20)
        assert after == want[10:30], "every row written during the outage, once, in order"
        wait_for(lambda: c.metric("netsiam_collect_records_published_total") == 30, 30, "30 acks", c)
        assert c.metric("netsiam_collect_broker_up") == 1
        assert c.metric("netsiam_collect_backlog_bytes") == 0
        assert c.stop() == 0
        assert orjson.loads((tmp_path / "state.json").read_bytes())["last_ts"] == orjson.loads(want[29])["ts"]
    finally:
        if c is not None:
            c.stop(signal.SIGKILL)
        bp.stop()


@needs_sipp
def test_real_sipp_restart_and_collector_restart_publish_each_row_once(broker: Any, tmp_path: Path) -> None:
    """A real SIPp UAC -> UAS on loopback writes -trace_stat -fd 1 under a following collector. The
    collector is stopped for a while and restarted; the UAC is killed and started again on the same
    file (SIPp truncates it, counters start over). The topic holds exactly the import of both runs."""
    tc = _topics()
    create_topics(broker.bootstrap, tc)
    p = free_udp_base(4)
    stat = tmp_path / "stat.csv"
    uas = start_sipp(["-sn", "uas", "-i", "127.0.0.1", "-p", str(p)], tmp_path / "uas.log", tmp_path)
    uac_args = ["-sn", "uac", f"127.0.0.1:{p}", "-i", "127.0.0.1", "-p", str(p + 1), "-cp", str(p + 2),
                "-r", "10", "-d", "500", "-trace_stat", "-fd", "1", "-stf", str(stat)]
    collect_args = ["sipp", str(stat), "--source", "s", "--follow", "--bootstrap", broker.bootstrap,
                    "--topic", tc.samples, "--state", str(tmp_path / "state.json")]
    uac = start_sipp(uac_args, tmp_path / "uac.log", tmp_path)
    c = Collector(collect_args, tmp_path / "collect1.log")
    try:
        wait_for(lambda: c.metric("netsiam_collect_records_published_total") >= 4, 30, "4 rows published", c)
        assert c.stop() == 0                    # the collector goes away; SIPp keeps writing
        time.sleep(3.0)
        c = Collector(collect_args, tmp_path / "collect2.log")
        wait_for(lambda: c.metric("netsiam_collect_records_published_total") >= 2, 30, "rows after the restart", c)
        stop_sipp(uac)                          # SIPp dies ...
        time.sleep(1.0)
        shutil.copy(stat, tmp_path / "run1.csv")
        uac = start_sipp(uac_args, tmp_path / "uac.log", tmp_path)   # ... and starts again on the same file
        wait_for(lambda: c.metric("netsiam_collect_file_resets_total") >= 1, 30, "the truncation noticed", c)
        wait_for(lambda: len(stat.read_text().splitlines()) >= 7, 30, "5 rows of the second run")
        stop_sipp(uac)
        shutil.copy(stat, tmp_path / "run2.csv")
        want = imported([tmp_path / "run1.csv", tmp_path / "run2.csv"])
        wait_for(lambda: c.metric("netsiam_collect_pending_records") == 0
                 and c.metric("netsiam_collect_last_record_timestamp_seconds") == orjson.loads(want[-1])["ts"],
                 30, "the last row acknowledged", c)
        assert c.stop() == 0
    finally:
        c.stop(signal.SIGKILL)
        stop_sipp(uac)
        stop_sipp(uas)
    got = values(broker.bootstrap, tc.samples, len(want))
    assert len(want) >= 12
    assert got == want, "no duplicate, no gap, byte for byte the import of both runs"


def test_one_shot_run_without_its_topic_says_so_and_the_next_run_publishes_every_row(broker: Any,
                                                                                      tmp_path: Path) -> None:
    """Without --follow there is no outage to ride out: a topic (or broker) that is not there is a one-line
    error at once, nothing is marked published, and the same command publishes every row once it is there."""
    tc = _topics()
    stat = REPO / "tests" / "data" / "sipp_c_stat.csv"
    state = tmp_path / "state.json"
    args = [sys.executable, "-m", "netsiam", "collect", "sipp", str(stat), "--source", "s", "--bootstrap",
            broker.bootstrap, "--topic", tc.samples, "--state", str(state), "--metrics-port", "0"]
    r = subprocess.run(args, capture_output=True, timeout=120, cwd=REPO)
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr.decode(), r.stderr
    assert err[-1] == (f"netsiam collect: error: cannot publish to {broker.bootstrap}: topic {tc.samples} "
                       "does not exist; nothing published")
    assert not any("holding records" in line for line in err), err    # no outage is ridden out: no such warning
    assert not state.exists()
    create_topics(broker.bootstrap, tc)
    r = subprocess.run(args, capture_output=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    want = imported([stat])
    assert sorted(values(broker.bootstrap, tc.samples, len(want))) == sorted(want)
