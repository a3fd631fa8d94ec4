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


def test_no_model_trains_on_an_unseen_recording(tmp_path: Path) -> None:
    """``unseen_*`` recordings are validation every model is judged on as a testbed it never saw: the
    leave-one-out models' training files and the shipped model's training data leave them out."""
    from bench.realtraffic import training_files
    from netsiam.trainer.corpus import load_corpus
    from netsiam.trainer.default_model import training_data

    recs = load_corpus()
    unseen = {r.name for r in recs if r.role == "unseen"}
    assert unseen and all(not r.trained_on for r in recs if r.name in unseen)
    traces = {r.name: (tmp_path / f"{r.name}.jsonl", r.labels) for r in recs}
    data, labels = training_files({"val_r20_h2"}, traces, None)
    read = {p.name.removesuffix(".jsonl") for p in data}
    assert read == {r.name for r in recs} - unseen - {"val_r20_h2"}
    assert len(labels) == len(data)
    shipped, _ = training_data(tmp_path / "shipped")
    assert {p.stem for p in shipped} == {"sim"} | {r.name for r in recs if r.role in ("validation", "reported")}
