"""``netsiam broker`` and :func:`start_broker`: readiness, topics, signals, failure reporting."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO, port_open, unique

from netsiam.broker import create_topics, free_port, start_broker
from netsiam.config import TopicsConfig
from netsiam.errors import NetsiamError


def partitions(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer

    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return len(c.partitions_for_topic(topic) or ())
    finally:
        c.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_ready_creates_topics_and_exits_0_on_signal(tmp_path: Path, sig: int) -> None:
    port = free_port()
    t = unique()
    (tmp_path / "c.yaml").write_text(f"kafka:\n  topics:\n    samples: {t}.s\n    faults: {t}.f\n"
                                     f"    deadletter: {t}.d\n    samples_partitions: 3\n")
    p = subprocess.Popen([sys.executable, "-m", "netsiam", "broker", "--port", str(port), "--config",
                          str(tmp_path / "c.yaml")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, cwd=REPO)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()                     # blocks until ready (or exit)
        assert line.startswith(f"netsiam broker: ready on 127.0.0.1:{port}"), line
        assert port_open(port)
        bootstrap = f"127.0.0.1:{port}"
        assert partitions(bootstrap, f"{t}.s") == 3
        assert partitions(bootstrap, f"{t}.f") == 1 and partitions(bootstrap, f"{t}.d") == 1
        p.send_signal(sig)
        assert p.wait(20) == 0
        deadline = time.monotonic() + 5
        while port_open(port) and time.monotonic() < deadline:  # the child went with it
            time.sleep(0.1)
        assert not port_open(port)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_api_context_manager_and_idempotent_topic_creation(tmp_path: Path) -> None:
    tc = TopicsConfig(samples=unique(), faults=unique(), deadletter=unique(), samples_partitions=2)
    with start_broker(0, topics=tc, log_path=tmp_path / "b.log") as bp:
        assert bp.alive and port_open(bp.port)
        assert partitions(bp.bootstrap, tc.samples) == 2
        assert create_topics(bp.bootstrap, tc) == []   # already there: nothing to do, no error
    assert not bp.alive
    assert "listening on" in (tmp_path / "b.log").read_text()


def test_a_port_in_use_is_refused_not_mistaken_for_our_broker(broker: Any) -> None:
    with pytest.raises(NetsiamError, match="cannot listen on 127.0.0.1"):
        start_broker(broker.port)


def test_a_broker_that_cannot_start_is_reported_not_awaited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a child that exits at once: its own last words are in our message, instead of a readiness
    # timeout (a stand-in binary: the real Tansu gives no way to fail at start from start_broker's
    # arguments, since certificates are now checked before it starts)
    import netsiam.broker.embedded as broker

    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'error: storage engine unavailable' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(broker, "broker_binary", lambda: str(fake))
    t0 = time.monotonic()
    with pytest.raises(NetsiamError, match=r"broker exited with status 3 before it was ready \(.*storage engine"):
        start_broker(0, log_path=tmp_path / "b.log")
    assert time.monotonic() - t0 < 10
