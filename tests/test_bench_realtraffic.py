"""bench.realtraffic --sim-novel: the simulated fault novelty settings are chosen on."""

from __future__ import annotations

from pathlib import Path

import orjson

from bench.realtraffic import slow_answers
from netsiam.traceio import read_labels, read_trace
from netsiam.trainer.default_model import TRAIN_PARAMS
from netsiam.trainer.simulate import SLOW_ANSWERS


def test_the_simulated_never_seen_fault_is_slow_answers_among_the_known_ones(tmp_path: Path) -> None:
    trace, labels = slow_answers(tmp_path)
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


def test_seeds_judges_each_kept_model_on_the_simulated_never_seen_fault(model_dir: Path, tmp_path: Path) -> None:
    import shutil

    from bench.seeds import judge_seeds
    from netsiam.serving import load_artifact

    models = tmp_path / "models"
    shutil.copytree(model_dir, models / "seed-7")            # kept from an earlier run: judged, not retrained
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (models / "seed-7").iterdir())
    res = judge_seeds([7], models, tmp_path / "work")
    r = res[7]
    assert r["version"] == load_artifact(model_dir).version
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (models / "seed-7").iterdir()) == before
    assert r["episodes"] >= 10 and 0 <= r["first_raised_unknown"] <= r["episodes"]
    assert 0.0 <= r["unknown_rate"] <= 1.0 and 0 <= r["first_label_correct"] <= r["all_episodes"]
    assert not (tmp_path / "work" / "corpus").exists()       # nothing to train: the corpus is not imported
