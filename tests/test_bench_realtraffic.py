"""bench.realtraffic --sim-novel: the simulated fault novelty settings are chosen on."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.realtraffic import _slow_answers
from netsiam.traceio import read_labels, read_trace
from netsiam.trainer.default_model import TRAIN_PARAMS
from netsiam.trainer.simulate import SLOW_ANSWERS


def test_the_simulated_never_seen_fault_is_slow_answers_among_the_known_ones(tmp_path: Path) -> None:
    trace, labels = _slow_answers(tmp_path)
    kinds = [iv.label for iv in read_labels(labels)]
    assert kinds.count(SLOW_ANSWERS) >= 10                      # enough episodes to judge novelty on
    assert set(kinds) == {SLOW_ANSWERS, *TRAIN_PARAMS.faults}   # and the known faults beside it
    # its answers are slow: the mean response time inside its episodes is far above normal traffic's
    episodes = read_labels(labels)
    slow = [iv for iv in episodes if iv.label == SLOW_ANSWERS]
    inside, outside = [], []
    for _, line in read_trace(trace):
        r = orjson.loads(line)
        rt = r["metrics"].get("ResponseTime1")
        if rt is None or not r["metrics"].get("SuccessfulCall"):
            continue
        hit = any(iv.source == r["source"] and iv.start + 10 <= r["ts"] <= iv.end for iv in slow)
        calm = not any(iv.source == r["source"] and iv.start - 5 <= r["ts"] <= iv.end + 60 for iv in episodes)
        if hit:
            inside.append(rt)
        elif calm:
            outside.append(rt)
    assert sum(inside) / len(inside) > 100 > sum(outside) / len(outside)
