"""The daemon as an operator meets it: systemd notifications and the watchdog (a real notify socket),
wall-clock silence and the per-source series (a real broker), and the exit status of a bad start."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from helpers import (
    REPO,
    events_of,
    http_get,
    make_config,
    produce,
    read_topic,
    unit_directives,
    value,
    wait_until,
)
from prometheus_client import CollectorRegistry

from netsiam.errors import EXIT_CONFIG, EXIT_DATA
from netsiam.sdnotify import Watchdog, notify
from netsiam.serving import load_artifact

RAW = {"OutgoingCall": 20, "SuccessfulCall": 20, "FailedCall": 0, "Retransmissions": 0, "CurrentCall": 40,
       "ResponseTime1": 3.0, "FailedMaxUDPRetrans": 0, "FailedTimeoutOnRecv": 0}
T0 = 1795384000.0


def records(source: str, start: float, n: int) -> list[bytes]:
    return [orjson.dumps({"source": source, "ts": start + i, "metrics": RAW}) for i in range(n)]


class NotifySocket:
    """What systemd listens on: a datagram socket; every message is kept, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def count(self, needle: str) -> int:
        return sum(needle in m.splitlines() for m in list(self.messages))

    def close(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.sock.close()


def test_notify_and_watchdog_without_and_with_systemd(tmp_path: Path) -> None:
    assert notify("READY=1", env={}) is False                              # not under systemd: a no-op
    assert not Watchdog(env={}).enabled
    assert not Watchdog(env={"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).enabled  # another process's
    sock = NotifySocket(tmp_path / "notify")
    try:
        env = {"NOTIFY_SOCKET": str(sock.path), "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
        assert notify("READY=1", "STATUS=up", env=env)
        now = [100.0]
        wd = Watchdog(env=env, clock=lambda: now[0])
        assert wd.enabled and wd.interval_s == 2.0
        sent = []
        for _ in range(5):       # 5 rounds in 0.4 s: one ping (at most every interval / 4)
            sent.append(wd.ping())
            now[0] += 0.1
        now[0] += 0.5
        sent.append(wd.ping())
        assert sent == [True, False, False, False, False, True]
        wait_until(lambda: sock.count("WATCHDOG=1") == 2, 5, "two pings")
        assert sock.messages[0] == "READY=1\nSTATUS=up"
    finally:
        sock.close()
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"netsiam-test-{os.getpid()}"
    abstract.bind("\0" + name)
    try:
        assert notify("WATCHDOG=1", env={"NOTIFY_SOCKET": "@" + name})
        assert abstract.recv(100) == b"WATCHDOG=1"
    finally:
        abstract.close()


class GatedArtifact:
    """The served artifact, but an embed call waits while ``gate`` is closed (a hung GPU, a deadlock)."""

    def __init__(self, art: Any) -> None:
        self._art = art
        self.gate = threading.Event()
        self.gate.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._art, name)

    def embed(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        self.gate.wait()
        return self._art.embed(x, batch_size)


@contextmanager
def daemon_thread(cfg: Any, art: Any) -> Iterator[Any]:
    from netsiam.detector.loop import Daemon

    d = Daemon(cfg, art, None, registry=CollectorRegistry())
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(d.run()), daemon=True)
    t.start()
    try:
        assert d.started.wait(60)
        wait_until(lambda: d.ready()[0], 30, "partitions assigned")
        yield d
    finally:
        d.request_stop()
        t.join(60)
    assert result == [0], result


@pytest.mark.slow
def test_watchdog_pings_only_while_the_loop_makes_progress(broker: Any, topics: Any, model_dir: Path,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")      # pings at most every 0.1 s; a stuck embed after 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    art = GatedArtifact(load_artifact(model_dir))
    try:
        with daemon_thread(make_config(broker, topics), art) as d:
            assert sock.count("READY=1") == 1
            wait_until(lambda: sock.count("WATCHDOG=1") >= 3, 10, "watchdog pings while idle")
            art.gate.clear()                                  # the next embed call hangs
            produce(broker.bootstrap, topics.samples, records("a", T0, 40), keys=[b"a"] * 40)
            wait_until(lambda: d.batcher.inflight_s() > 0.3, 30, "an embed call stuck")
            time.sleep(0.3)                                   # a ping sent before it got stuck is read by now
            before = sock.count("WATCHDOG=1")
            time.sleep(1.5)                                   # 15 ping periods
            assert sock.count("WATCHDOG=1") == before, "pinged while the embed call was stuck"
            assert http_get(d.metrics_port, "/livez")[0] == 200  # the process itself is alive: only systemd can tell
            art.gate.set()
            wait_until(lambda: sock.count("WATCHDOG=1") > before, 10, "pings again once the embed returned")
        assert sock.count("STOPPING=1") == 1
    finally:
        art.gate.set()
        sock.close()


@pytest.mark.slow
def test_a_quiet_partition_makes_its_sources_silent_by_the_wall_clock(broker: Any, topics: Any, model_dir: Path
                                                                       ) -> None:
    cfg = make_config(broker, topics, silent_after_s=3.0)
    a, b = records("sbc-a", T0, 40), records("sbc-b", T0, 40)
    produce(broker.bootstrap, topics.samples, a + b, keys=[b"sbc-a"] * 40 + [b"sbc-b"] * 40)
    with daemon_thread(cfg, load_artifact(model_dir)) as d:
        msgs = read_topic(broker.bootstrap, topics.faults, until=lambda m: len(m) >= 2, timeout_s=60)
        raised = sorted((e["source"], e["state"], e["fault"], e["started_at"], e["window_end"]) for e in events_of(msgs))
        last = T0 + 39
        # the stamps a later record would give: a replay of the same records reproduces these ids
        assert raised == [(s, "raised", "silent", last + 1, last + 3) for s in ("sbc-a", "sbc-b")]
        wait_until(lambda: value(d, "netsiam_fault_active", source="sbc-a", fault="silent") == 1, 10, "gauge")
        assert value(d, "netsiam_active_faults", fault="silent") == 2
        for s in ("sbc-a", "sbc-b"):  # every tracked source has its series (the dashboard's $source)
            assert math.isclose(value(d, "netsiam_source_last_record_timestamp_seconds", source=s), last)
        produce(broker.bootstrap, topics.samples, records("sbc-a", T0 + 100, 1), keys=[b"sbc-a"])
        # checked before reading the topic: sbc-a's partition, quiet again, makes it silent again 3 s on
        wait_until(lambda: value(d, "netsiam_active_faults", fault="silent") == 1, 10, "one still silent")
        assert value(d, "netsiam_fault_active", source="sbc-b", fault="silent") == 1
        msgs = read_topic(broker.bootstrap, topics.faults, until=lambda m: len(m) >= 3, timeout_s=60)
        cleared = [e for e in events_of(msgs) if e["state"] == "cleared"]
        assert [(e["source"], e["fault"], e["started_at"], e["window_end"]) for e in cleared] == [
            ("sbc-a", "silent", last + 1, T0 + 100)]


@pytest.mark.parametrize(("setup", "code"), [("config", EXIT_CONFIG), ("model", EXIT_DATA)])
def test_a_bad_start_exits_with_a_status_systemd_will_not_restart(setup: str, code: int, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    if setup == "config":
        cfg.write_text("detector:\n  silent_after_s: 5000\n")   # beyond idle_evict_s
    else:                                                         # an artifact that is not there
        cfg.write_text(f"detector:\n  model: {tmp_path / 'no-model'}\n")
    r = subprocess.run([sys.executable, "-m", "netsiam", "detect", "--config", str(cfg)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == code, r.stderr[-2000:]
    unit = unit_directives((REPO / "deploy" / "systemd" / "netsiam-detect.service").read_text())
    assert str(code) in unit["RestartPreventExitStatus"][-1].split()
