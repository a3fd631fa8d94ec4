"""``netsiam dump``: the samples topic -> a trace for a time range (one record per source and ts, as
published), the faults topic -> a draft labels CSV that ``train``/``evaluate`` read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import REPO, produce

from netsiam.collect.dump import episodes_from_events
from netsiam.schemas.event import event_id
from netsiam.traceio import LabelInterval, read_labels


def rec(source: str, ts: float, calls: int = 10) -> bytes:
    return orjson.dumps({"source": source, "ts": ts, "metrics": {"OutgoingCall": calls}})


def ev(source: str, fault: str, started: float, state: str, window_end: float) -> bytes:
    return orjson.dumps({"event_id": event_id(source, fault, started, state), "source": source, "state": state,
                         "fault": fault, "started_at": started, "window_end": window_end})


def dump(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netsiam", "dump", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_dump_range_sources_duplicates_and_labels(broker: Any, topics: Any, tmp_path: Path) -> None:
    samples = [rec(s, 1000.0 + t) for t in range(60) for s in ("a", "b")]
    samples += [rec("a", 1010.0, calls=99), b"{not json", rec("c", 1020.0)]   # a re-send, garbage, source c
    keys = [orjson.loads(v)["source"].encode() if v.startswith(b"{\"") else None for v in samples]
    produce(broker.bootstrap, topics.samples, samples, keys=keys)   # keyed by source, as collectors do
    events = [ev("a", "blocked", 1010.0, "raised", 1012.0), ev("a", "blocked", 1010.0, "cleared", 1030.0),
              ev("a", "blocked", 1010.0, "raised", 1012.0),                      # at-least-once duplicate
              ev("b", "capacity_limit", 1045.0, "raised", 1047.0),               # still active at the end
              ev("b", "unknown", 900.0, "raised", 901.0), ev("b", "unknown", 900.0, "cleared", 950.0),  # before
              ev("b", "unknown", 1020.0, "raised", 1030.0), ev("b", "unknown", 1020.0, "cleared", 1040.0)]
    produce(broker.bootstrap, topics.faults, events)
    out, labels = tmp_path / "trace.jsonl", tmp_path / "labels.csv"
    r = dump("--bootstrap", broker.bootstrap, "--topic", topics.samples, "--faults-topic", topics.faults,
             "--from", "1005", "--to", "1970-01-01T00:17:30Z", "--source", "a", "--source", "b",
             "-o", str(out), "--labels", str(labels))
    assert r.returncode == 0, r.stderr
    got = out.read_bytes().splitlines()
    want = [rec(s, 1000.0 + t) for t in range(5, 50) for s in ("a", "b")]   # [1005, 1050): 17:30 is 1050
    assert got == want, "sorted by (ts, source), the first of a duplicate kept, byte for byte"
    assert "left out 1 duplicate(s), 1 message(s) that are not records" in r.stderr
    assert read_labels(labels) == [LabelInterval("a", 1010.0, 1030.0, "blocked"),
                                   LabelInterval("b", 1020.0, 1040.0, "unknown"),
                                   LabelInterval("b", 1045.0, 1050.0, "capacity_limit")]
    assert "3 episodes" in r.stderr and "rename its 1 unknown/silent episode(s)" in r.stderr


def test_episodes_clip_and_pair() -> None:
    evs = [orjson.loads(e) for e in (ev("x", "blocked", 5.0, "raised", 6.0), ev("x", "blocked", 5.0, "cleared", 20.0),
                                    ev("y", "blocked", 30.0, "cleared", 40.0))]   # raised before the dump
    assert episodes_from_events(evs, 10.0, 35.0) == [LabelInterval("x", 10.0, 20.0, "blocked"),
                                                      LabelInterval("y", 30.0, 35.0, "blocked")]


def test_dump_errors_are_one_line(broker: Any, tmp_path: Path) -> None:
    r = dump("--bootstrap", broker.bootstrap, "--topic", "no-such-topic-here", "-o", str(tmp_path / "t.jsonl"))
    assert r.returncode == 3 and "topic no-such-topic-here does not exist" in r.stderr
    r = dump("--bootstrap", broker.bootstrap, "--from", "yesterday", "-o", str(tmp_path / "t.jsonl"))
    assert r.returncode == 2 and "bad time 'yesterday'" in r.stderr


@pytest.mark.parametrize("bad", ["1050", "1000"])
def test_dump_empty_range_is_refused(broker: Any, bad: str, tmp_path: Path) -> None:
    r = dump("--bootstrap", broker.bootstrap, "--from", "1050", "--to", bad, "-o", str(tmp_path / "t.jsonl"))
    assert r.returncode == 2 and "must be after --from" in r.stderr
