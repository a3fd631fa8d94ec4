"""``netsiam replay``: bytes unchanged, keyed by source, paced by record time or flat out."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from helpers import REPO, read_topic, unique

from netsiam.broker import create_topics
from netsiam.replay import key_and_ts, replay_lines


def test_key_and_ts() -> None:
    assert key_and_ts(b'{"source": "a", "ts": 5, "metrics": {}}') == (b"a", 5.0)
    assert key_and_ts(b'{"source": "a", "ts": "1970-01-01T00:00:10Z"}') == (b"a", 10.0)
    assert key_and_ts(b'{"source": 7, "ts": "never"}') == (None, None)
    assert key_and_ts(b"not json") == (None, None)
    assert key_and_ts(b"[1]") == (None, None)


def lines_for(n: int, start: float = 1795384000.0, step: float = 1.0) -> list[bytes]:
    return [orjson.dumps({"source": f"s{i % 3}", "ts": start + (i // 3) * step,
                          "metrics": {"OutgoingCall": i}}) for i in range(n)]


def test_cli_sends_every_line_unchanged_keyed_by_source(broker: Any, tmp_path: Path) -> None:
    from netsiam.config import TopicsConfig

    topic = unique()
    create_topics(broker.bootstrap, TopicsConfig(samples=topic, faults=unique(), deadletter=unique()))
    lines = [*lines_for(300), b"{broken", b'  {"source": "s9", "ts": 1795384000.5, "metrics": {}}']
    trace = tmp_path / "t.jsonl"
    trace.write_bytes(b"\n".join(lines) + b"\n\n")
    p = subprocess.run([sys.executable, "-m", "netsiam", "replay", str(trace), "--bootstrap", broker.bootstrap,
                        "--topic", topic, "--max"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    m = re.search(r"sent (\d+) records to (\S+) in [0-9.]+ s \(([0-9,]+) records/s\)", p.stdout)
    assert m and int(m.group(1)) == len(lines) and m.group(2) == topic, p.stdout
    assert "1 of them not records (the daemon dead-letters them)" in p.stdout, p.stdout
    assert "rec" in p.stderr  # the progress bar
    msgs = read_topic(broker.bootstrap, topic, until=lambda ms: len(ms) >= len(lines))
    assert sorted(x.value for x in msgs) == sorted(line.strip() for line in lines)
    for x in msgs:
        want, _ = key_and_ts(x.value)
        assert x.key == want
    by_source: dict[bytes | None, list[float]] = {}
    for x in sorted(msgs, key=lambda x: (x.partition, x.offset)):
        if x.key:
            by_source.setdefault(x.key, []).append(orjson.loads(x.value)["ts"])
    assert all(ts == sorted(ts) for ts in by_source.values())  # per source order holds


def test_speed_paces_by_record_time(broker: Any) -> None:
    topic = unique()
    from netsiam.config import TopicsConfig

    create_topics(broker.bootstrap, TopicsConfig(samples=topic, faults=unique(), deadletter=unique()))
    lines = lines_for(3 * 11)                  # 10 s of record time
    t0 = time.monotonic()
    stats = replay_lines(lines, broker.bootstrap, topic, speed=20.0)  # -> 0.5 s
    elapsed = time.monotonic() - t0
    assert stats.sent == len(lines) and stats.failed == 0
    assert 0.45 <= elapsed < 3.0
    t0 = time.monotonic()
    replay_lines(lines, broker.bootstrap, topic)  # flat out
    assert time.monotonic() - t0 < elapsed
