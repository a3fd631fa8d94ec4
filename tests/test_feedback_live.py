"""The feedback loop live: real SIPp recordings through the daemon on the real broker, an operator's
feedback (``netsiam feedback``, or a message on the feedback topic applied by ``netsiam learn``), the
running daemon hot-reloading the new model version, and the later traffic judged by it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import (
    events_of,
    http_get,
    make_config,
    read_topic,
    running,
    start_netsiam,
    wait_until,
    write_config,
)
from prometheus_client.parser import text_string_to_metric_families

from netsiam.cli import main
from netsiam.config import DebounceConfig
from netsiam.replay import replay_lines
from netsiam.schemas.deadletter import validate_dead_letter
from netsiam.serving import load_artifact
from netsiam.traceio import LabelInterval, read_labels
from netsiam.trainer.corpus import load_corpus, to_traces

pytestmark = pytest.mark.slow

# the model without capacity_limit learns from these (none is replayed below)
TRAIN = ("r100_h1", "r30_h3", "r200_h1", "r25_h40", "r10_h60", "r60_h10")
TAUGHT, OTHER, NOVEL = "r15_h2", "r45_h1p5", "novel_r70_h8"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[LabelInterval]]]:
    names = {*TRAIN, TAUGHT, OTHER, NOVEL}
    traces = to_traces([r for r in load_corpus() if r.name in names], tmp_path_factory.mktemp("corpus"))
    return {n: (t, read_labels(lab)) for n, (t, lab) in traces.items()}


@pytest.fixture(scope="module")
def no_capacity(corpus: dict[str, tuple[Path, list[LabelInterval]]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on six real recordings with every capacity_limit window left out (15 epochs).

    Seed 1: what this test checks is learning from one event, which needs the first limit raised
    `unknown`; with seed 0 that model embeds r15_h2's limit 0.45 from `normal`, inside normal's 0.7
    threshold (seeds 1 and 2 raise it `unknown`), a novelty miss bench.accuracy measures, not this test."""
    out = tmp_path_factory.mktemp("nocap") / "trained"
    labels = {r.name: r.labels for r in load_corpus()}
    args = [a for n in TRAIN for a in ("--data", str(corpus[n][0]), "--labels", str(labels[n]))]
    assert main(["train", *args, "--exclude-label", "capacity_limit", "--epochs", "15", "--seed", "1", "-o", str(out),
                 "--quiet"]) == 0
    assert load_artifact(out).prototypes.classes == ["normal", "blocked"]
    return out


def lines_between(trace: Path, lo: float, hi: float) -> list[bytes]:
    return [line for line in trace.read_bytes().splitlines() if line and lo <= orjson.loads(line)["ts"] < hi]


def first_raises(evs: list[dict[str, Any]], labels: list[LabelInterval], source: str) -> list[tuple[str, str | None]]:
    """Per labelled episode: (label, the first fault raised from its start to 10 s after its end)."""
    out = []
    for iv in labels:
        hits = [e["fault"] for e in evs if e["source"] == source and e["state"] == "raised"
                and iv.start <= e["started_at"] <= iv.end + 10]
        out.append((iv.label, hits[0] if hits else None))
    return out


def test_a_fault_class_learned_from_one_event_while_streaming(
        broker: Any, topics: Any, corpus: dict[str, tuple[Path, list[LabelInterval]]], no_capacity: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    served = tmp_path / "served"
    assert main(["model", "copy", str(served), "--model", str(no_capacity)]) == 0
    cfg = make_config(broker, topics, debounce=DebounceConfig(), reload_poll_s=2.0)   # the shipped defaults
    config = write_config(tmp_path / "config.yaml", cfg)
    trace, labels = corpus[TAUGHT]
    source = orjson.loads(trace.read_bytes().splitlines()[0])["source"]
    cap1 = next(iv for iv in labels if iv.label == "capacity_limit")
    cut = cap1.end + 30    # the stream so far: a blocked episode, then the first capacity limit, then calm

    with running(cfg, served) as d:
        # 1. a model that never saw capacity_limit: the first capacity episode is raised unknown
        first = lines_between(trace, 0, cut)
        replay_lines(first, broker.bootstrap, topics.samples)
        msgs = read_topic(broker.bootstrap, topics.faults, timeout_s=120, idle_s=1.0,
                          until=lambda m: any(e["fault"] == "unknown" and e["state"] == "cleared" for e in events_of(m)))
        evs = events_of(msgs)
        assert first_raises(evs, [iv for iv in labels if iv.end < cut], source) == [("blocked", "blocked"),
                                                                                   ("capacity_limit", "unknown")]
        unknown = next(e for e in evs if e["fault"] == "unknown" and e["state"] == "raised")

        # 2. one `netsiam feedback` on that event; the daemon serves the new version within 5 s
        old = d.pipeline.artifact.version
        assert main(["feedback", unknown["event_id"], "--label", "capacity_limit", "--config", str(config),
                     "--model", str(served), "--by", "noc-1"]) == 0
        taught = load_artifact(served)
        new = taught.version
        assert new != old and "'capacity_limit' is a new class" in capsys.readouterr().out
        wait_until(lambda: d.pipeline.artifact.version == new, 5.0, "the daemon serving the taught model")
        assert time.time() - taught.manifest["created_at"] <= 5.0   # from the version's write to serving it

        # 3. the rest of the recording, then another real recording (another testbed's load and hold time)
        replay_lines(lines_between(trace, cut, float("inf")), broker.bootstrap, topics.samples)
        other, other_labels = corpus[OTHER]
        replay_lines(other.read_bytes().splitlines(), broker.bootstrap, topics.samples)
        other_source = other_labels[0].source
        end = max(iv.end for iv in other_labels)
        msgs = read_topic(broker.bootstrap, topics.faults, timeout_s=180, idle_s=2.0,
                          until=lambda m: any(e["source"] == other_source and e["started_at"] > end - 60
                                              for e in events_of(m)))
    evs = events_of(msgs)
    later = [iv for iv in labels if iv.start > cut]
    assert first_raises(evs, later, source) == [("blocked", "blocked"), ("capacity_limit", "capacity_limit")]
    assert first_raises(evs, other_labels, other_source) == [(iv.label, iv.label) for iv in other_labels]
    taught = [e for e in evs if e["state"] == "raised" and e["fault"] == "capacity_limit"]
    assert taught and {e["model_version"] for e in taught} == {new}


def test_learn_applies_feedback_messages_and_dead_letters_bad_ones(
        broker: Any, topics: Any, corpus: dict[str, tuple[Path, list[LabelInterval]]], tmp_path: Path,
        daemons: list[Any]) -> None:
    from kafka import KafkaProducer

    served = tmp_path / "served"
    assert main(["model", "copy", str(served)]) == 0          # the shipped model
    cfg = make_config(broker, topics, debounce=DebounceConfig())
    config = write_config(tmp_path / "config.yaml", cfg)
    trace, labels = corpus[NOVEL]
    slow = [iv for iv in labels if iv.label == "degraded"]    # the far end answering 200-300 ms late
    cut = slow[0].end + 30
    log = tmp_path / "learn.log"
    learn = start_netsiam(["learn", "--config", str(config), "--model", str(served), "--metrics-port", "0"], log)
    try:
        with running(cfg, served) as d:
            replay_lines(lines_between(trace, 0, cut), broker.bootstrap, topics.samples)
            msgs = read_topic(broker.bootstrap, topics.faults, timeout_s=120, idle_s=1.0,
                              until=lambda m: any(e["state"] == "cleared" for e in events_of(m)))
            unknown = next(e for e in events_of(msgs) if e["state"] == "raised")
            assert unknown["fault"] == "unknown" and slow[0].start <= unknown["started_at"] <= slow[0].end

            # the operators: this slowness is normal here (a false alarm); two bad messages first
            sent = [b"{not json", orjson.dumps({"event_id": "no-such-event", "label": "normal"}),
                    orjson.dumps({"event_id": unknown["event_id"], "label": "normal", "by": "noc-2"})]
            p = KafkaProducer(bootstrap_servers=broker.bootstrap)
            for v in sent:
                p.send(topics.feedback, v).get(30)
            p.close()
            old = d.pipeline.artifact.version
            wait_until(lambda: d.pipeline.artifact.version != old, 120, "the daemon serving the taught model")
            assert load_artifact(served).manifest["feedback"]["by"] == "noc-2"

            replay_lines(lines_between(trace, cut, float("inf")), broker.bootstrap, topics.samples)
            cap = next(iv for iv in labels if iv.label == "capacity_limit")
            msgs = read_topic(broker.bootstrap, topics.faults, timeout_s=120, idle_s=3.0,
                              until=lambda m: any(e["fault"] == "capacity_limit" for e in events_of(m)))
        dead = [orjson.loads(m.value) for m in read_topic(broker.bootstrap, topics.deadletter,
                                                          until=lambda m: len(m) >= 2, timeout_s=30)]
        # what an operator's Prometheus sees of it: three read, one applied, two dead-lettered by reason
        port = int(re.findall(r"metrics listening on http://[^:]+:(\d+)/", log.read_text())[-1])
        want = {("netsiam_feedback_consumed_total", ()): 3.0,
                ("netsiam_feedback_applied_total", (("action", "false_alarm"),)): 1.0,
                ("netsiam_feedback_applied_total", (("action", "new_class"),)): 0.0,
                ("netsiam_feedback_dead_letters_total", (("reason", "not_json"),)): 1.0,
                ("netsiam_feedback_dead_letters_total", (("reason", "refused"),)): 1.0,
                ("netsiam_feedback_dead_letters_total", (("reason", "schema"),)): 0.0}
        wait_until(lambda: {k: v for k, v in learn_samples(port).items() if k in want} == want, 30,
                   "netsiam learn's /metrics counting the three messages")
        assert learn_samples(port)[("netsiam_feedback_last_applied_timestamp_seconds", ())] > 0
    finally:
        learn.terminate()
        assert learn.wait(60) == 0, log.read_text()[-3000:]
    for dl in dead:
        validate_dead_letter(dl)
    assert [(dl["reason"], dl["topic"]) for dl in dead] == [("not_json", topics.feedback), ("refused", topics.feedback)]
    assert "no fault event with id 'no-such-event'" in dead[1]["detail"]
    evs = events_of(msgs)
    source = labels[0].source
    # the same slowness later: no raise; the capacity limit in between: still raised
    assert [f for _, f in first_raises(evs, slow, source)] == ["unknown", None]
    assert first_raises(evs, [cap], source) == [("capacity_limit", "capacity_limit")]
    assert "feedback: a false alarm" in log.read_text()


def learn_samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on ``netsiam learn``'s /metrics: (name, sorted labels) -> value."""
    _, text = http_get(port, "/metrics")
    return {(x.name, tuple(sorted(x.labels.items()))): x.value
            for f in text_string_to_metric_families(text) for x in f.samples}
