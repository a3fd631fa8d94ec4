"""Operators teach the served model: ``netsiam feedback`` on a real recording, ``netsiam model history|rollback``.

The recording is the corpus's novel_r70_h8 (real SIPp, 70 calls/s): two episodes of a fault the shipped
model never saw (the far end answering 200-300 ms late, raised ``unknown``) around a capacity limit. The
samples come from the trace file (``--data``); the Kafka path is in test_feedback_live.py. Events are
computed as the daemon computes them (same windows, classes and debounce).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from netsiam.cli import main
from netsiam.config import Config, PrototypeConfig
from netsiam.errors import NetsiamError
from netsiam.importers.sipp import import_sipp
from netsiam.schemas.event import event_id
from netsiam.serving import MANIFEST_FILE, PROTOTYPES_FILE, default_model_path, load_artifact
from netsiam.traceio import read_labels, write_trace
from netsiam.trainer.corpus import load_corpus, to_traces
from netsiam.trainer.dataset import load_trace
from netsiam.trainer.detection import Event
from netsiam.trainer.feedback import episode_from_events, trace_events, update_prototypes
from netsiam.versions import LOG_FILE, VERSIONS_DIR, history

RECORDING = "novel_r70_h8"
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    rec = [r for r in load_corpus() if r.name == RECORDING]
    trace, labels = to_traces(rec, tmp_path_factory.mktemp("corpus"))[RECORDING]
    return trace, read_labels(labels)


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A writable copy of the shipped model, as an operator serves it (``netsiam model copy``)."""
    assert main(["model", "copy", str(tmp_path / "model")]) == 0
    return tmp_path / "model"


def events(model: Path, trace: Path) -> list[Event]:
    art = load_artifact(model)
    cfg = dataclasses.replace(Config(), window=art.window, features=art.features)
    return trace_events(load_trace(trace, cfg), art, cfg)


def raised_in(evs: list[Event], start: float, end: float) -> list[str]:
    """Faults raised from an episode's start until 15 s after its end, in order."""
    return [e.fault for e in evs if start <= e.started_at <= end + 15 or e.started_at <= start <= e.end]


def files(model: Path) -> dict[str, bytes]:
    return {n: (model / n).read_bytes() for n in (PROTOTYPES_FILE, MANIFEST_FILE)}


def first_unknown(evs: list[Event]) -> Event:
    return next(e for e in evs if e.fault == "unknown")


def eid(ev: Event, state: str = "raised") -> str:
    return event_id(ev.source, ev.fault, ev.started_at, state)


def test_a_never_seen_fault_becomes_a_class_from_one_event(served: Path, recording: tuple[Path, list[Any]],
                                                            capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    trace, labels = recording
    degraded = [iv for iv in labels if iv.label == "degraded"]
    capacity = [iv for iv in labels if iv.label == "capacity_limit"]
    assert len(degraded) == 2 and len(capacity) == 1
    before = events(served, trace)
    assert [raised_in(before, iv.start, iv.end)[:1] for iv in degraded] == [["unknown"], ["unknown"]]
    parent = load_artifact(served).version

    ev = first_unknown(before)
    assert main(["feedback", eid(ev), "--label", "degraded", "--model", str(served), "--data", str(trace),
                 "--by", "noc-1", "--note", "far end slow"]) == 0
    out = capsys.readouterr().out
    assert "'degraded' is a new class" in out and str(served) in out

    after = events(served, trace)
    # both episodes (the one taught and the later one) are named at once; the capacity limit is unchanged
    assert [raised_in(after, iv.start, iv.end) for iv in degraded] == [["degraded"], ["degraded"]]
    assert [raised_in(after, iv.start, iv.end)[:1] for iv in capacity] == [["capacity_limit"]]
    assert [e.fault for e in after if e.fault == "unknown"] == []

    # another testbed's freezes and limits (sipp_b): the new class, a far end answering late, must not take a
    # freeze's recovery (its held calls answered late), so every episode is raised as before, once
    other = tmp_path / "sipp_b.jsonl"
    write_trace(other, import_sipp([DATA / "sipp_b_stat.csv"], "sbc-b"))
    episodes = read_labels(DATA / "sipp_b_labels.csv")
    taught = [raised_in(events(served, other), iv.start, iv.end) for iv in episodes]
    assert taught == [[iv.label] for iv in episodes], taught

    art = load_artifact(served)
    assert art.prototypes.classes[-1] == "degraded" and art.version != parent
    fb = art.manifest["feedback"]
    assert art.manifest["parent"] == parent
    assert (fb["event_id"], fb["label"], fb["by"], fb["note"], fb["action"]) == (eid(ev), "degraded", "noc-1",
                                                                                  "far end slow", "new_class")
    assert fb["windows"] >= PrototypeConfig().min_support
    vs = history(served)
    assert [(v.version, v.current) for v in vs] == [(parent, False), (art.version, True)]
    capsys.readouterr()
    # the same feedback again (a retry): said applied and nothing changes, though the taught model no longer
    # raises the event it names (it named `degraded` at once)
    assert main(["feedback", eid(ev), "--label", "degraded", "--model", str(served), "--data", str(trace)]) == 0
    again = capsys.readouterr().out
    assert "already applied ('degraded'): nothing changed" in again and f"on {ev.source}" in again, again
    assert [(v.version, v.current) for v in history(served)] == [(parent, False), (art.version, True)]


def test_a_false_alarm_marked_normal_does_not_recur(served: Path, recording: tuple[Path, list[Any]]) -> None:
    trace, labels = recording
    degraded = [iv for iv in labels if iv.label == "degraded"]
    ev = first_unknown(events(served, trace))
    assert main(["feedback", eid(ev, "cleared"), "--label", "normal", "--model", str(served),
                 "--data", str(trace)]) == 0   # the cleared event's id names the same episode
    after = events(served, trace)
    assert [raised_in(after, iv.start, iv.end) for iv in degraded] == [[], []]   # the same pattern, later: quiet
    cap = next(iv for iv in labels if iv.label == "capacity_limit")
    assert raised_in(after, cap.start, cap.end)[:1] == ["capacity_limit"]       # what raised it stays a fault
    taught = load_artifact(served).manifest
    assert taught["feedback"]["action"] == "false_alarm"
    # its far end answered ~50 times slower than before: the model's slow-answer factor rose above that
    assert taught["slow_answers"]["normal_up_to"] == taught["feedback"]["slow_answer_factor"] > 20


@pytest.mark.parametrize("case", ["unknown_id", "reserved_label", "too_few", "swallow"])
def test_bad_feedback_is_refused_with_one_line_and_changes_nothing(
        served: Path, recording: tuple[Path, list[Any]], case: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    trace, _ = recording
    evs = events(served, trace)
    ev = first_unknown(evs)
    cap = next(e for e in evs if e.fault == "capacity_limit")
    before = files(served)
    args, code, says = {
        "unknown_id": (["no-such-event", "--label", "degraded"], 3, "no fault event with id 'no-such-event'"),
        "reserved_label": ([eid(ev), "--label", "unknown"], 2, "'unknown' is the detector's verdict"),
        "too_few": ([eid(ev), "--label", "degraded"], 3, "need at least 500 (prototypes.min_support)"),
        # a capacity limit relabelled normal: its windows sit on capacity_limit's own prototype
        "swallow": ([eid(cap), "--label", "normal"], 3, "capacity_limit"),
    }[case]
    if case == "too_few":
        monkeypatch.setenv("NETSIAM_PROTOTYPES__MIN_SUPPORT", "500")
    assert main(["feedback", *args, "--model", str(served), "--data", str(trace)]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("netsiam feedback: error: ") and says in err, err
    assert files(served) == before
    assert not (served / VERSIONS_DIR).exists()


def test_rollback_serves_a_kept_version_again(served: Path, recording: tuple[Path, list[Any]],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    trace, _ = recording
    original = files(served)
    parent = load_artifact(served).version
    assert main(["feedback", eid(first_unknown(events(served, trace))), "--label", "degraded",
                 "--model", str(served), "--data", str(trace)]) == 0
    taught = load_artifact(served).version
    capsys.readouterr()

    assert main(["model", "history", "--model", str(served), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["current"], v["parent"]) for v in listed] == [(parent, False, None),
                                                                           (taught, True, parent)]
    assert main(["model", "rollback", parent, "--model", str(served)]) == 0
    assert files(served) == original and load_artifact(served).version == parent
    assert main(["model", "history", "--model", str(served)]) == 0
    text = capsys.readouterr().out
    assert f"* {parent}" in text and f"  {taught}" in text and "degraded" in text

    assert main(["model", "rollback", taught, "--model", str(served)]) == 0   # and forward again
    assert load_artifact(served).version == taught
    log = [orjson.loads(line) for line in (served / VERSIONS_DIR / LOG_FILE).read_bytes().splitlines()]
    assert [(e["action"], e["version"]) for e in log] == [("feedback", taught), ("rollback", parent),
                                                          ("rollback", taught)]

    assert main(["model", "rollback", "no-such-version", "--model", str(served)]) == 3
    assert "no version 'no-such-version'" in capsys.readouterr().err
    other = served.parent / "other"   # another model directory: a path is never a version, however it is spelt
    shutil.copytree(served / VERSIONS_DIR / parent, other)
    for path in (f"../../{other.name}", f"{parent}/../../../{other.name}", str(other)):
        assert main(["model", "rollback", path, "--model", str(served)]) == 3
        assert f"no version {path!r}" in capsys.readouterr().err
    assert load_artifact(served).version == taught
    for verb in (["history"], ["rollback", parent]):   # a mistyped model path: the same words every verb uses
        assert main(["model", *verb, "--model", str(served) + "-typo"]) == 3
        assert f"model artifact not found: {served}-typo" in capsys.readouterr().err
    assert load_artifact(served).version == taught


def test_the_shipped_model_is_never_changed(recording: tuple[Path, list[Any]], capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    trace, _ = recording
    monkeypatch.delenv("NETSIAM_CONFIG", raising=False)          # the built-in defaults: detector.model empty
    monkeypatch.delenv("NETSIAM_DETECTOR__MODEL", raising=False)
    shipped = files(default_model_path())
    for extra in ([], ["--model", str(default_model_path())]):
        assert main(["feedback", "some-event", "--label", "normal", "--data", str(trace), *extra]) == 2
        assert "netsiam model copy DIR" in capsys.readouterr().err
    assert files(default_model_path()) == shipped


def test_episode_of_an_event_id_raised_or_cleared() -> None:
    raised = {"event_id": "r1", "source": "s", "state": "raised", "fault": "unknown", "started_at": 100.0,
              "window_end": 101.0}
    cleared = {**raised, "event_id": "c1", "state": "cleared", "window_end": 160.0}
    other = {**cleared, "event_id": "c2", "started_at": 300.0, "window_end": 320.0}
    for eid_ in ("r1", "c1"):
        ep = episode_from_events([raised, other, cleared], eid_)
        assert (ep.source, ep.fault, ep.started_at, ep.end) == ("s", "unknown", 100.0, 160.0)
    assert episode_from_events([raised], "r1").end == np.inf                  # still active
    with pytest.raises(NetsiamError, match="silent source"):
        episode_from_events([{**raised, "fault": "silent"}], "r1")


def test_support_points_on_another_class_are_left_out_and_all_of_them_refused(served: Path) -> None:
    art = load_artifact(served)
    cfg = Config()
    rng = np.random.default_rng(0)
    cap = art.prototypes.points[art.prototypes.classes.index("capacity_limit")][0]
    far = np.array([0.99, 0.99, 0.99])
    with pytest.raises(NetsiamError, match="would swallow capacity_limit"):
        update_prototypes(art, "normal", cap + rng.normal(0, 0.01, (20, 3)), cfg)
    # half the episode on capacity_limit's prototype, half far from every class: only that half is learned
    emb = np.vstack([cap + rng.normal(0, 0.01, (20, 3)), far + rng.normal(0, 0.01, (20, 3))])
    new, left_out = update_prototypes(art, "normal", emb, cfg)
    assert left_out == ["capacity_limit"]
    pts = new.prototypes.points[new.prototypes.classes.index("normal")]
    assert len(pts) > 1 and np.linalg.norm(pts[1:] - far, axis=1).max() < 0.1
    assert new.prototypes.support[0] == art.prototypes.support[0] + 20
    assert art.prototypes.points[0].shape == (1, 3)            # the served artifact is left as it was


def test_a_prototypes_only_change_reuses_the_loaded_encoder(served: Path, recording: tuple[Path, list[Any]]) -> None:
    trace, _ = recording
    art = load_artifact(served)
    assert main(["feedback", eid(first_unknown(events(served, trace))), "--label", "degraded",
                 "--model", str(served), "--data", str(trace)]) == 0
    new = load_artifact(served, reuse=art)
    assert new.encoder is art.encoder and "degraded" in new.prototypes.classes
    x = np.random.default_rng(0).normal(size=(4, art.window.length, len(art.features))).astype(np.float32)
    assert np.allclose(new.embed(x), load_artifact(served).embed(x), atol=1e-5)
    other = load_artifact(default_model_path())
    other.manifest = {**other.manifest, "files": {**other.manifest["files"], "encoder.keras": "0" * 64}}
    assert load_artifact(served, reuse=other).encoder is not other.encoder   # another encoder: loaded anew
