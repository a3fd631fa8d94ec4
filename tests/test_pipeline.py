"""The daemon's pure core, without Kafka: records -> windows -> one embed per batch -> debounce -> events.

Uses the numpy twin of the test encoder (helpers.LinearArtifact), so no TensorFlow here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import jsonschema
import numpy as np
import orjson
import pytest
from helpers import (
    TOPIC,
    LinearArtifact,
    LinearHead,
    Model,
    Msg,
    bad_lines,
    check_episodes,
    embed_all,
    labelled_trace,
    labelled_windows,
    partitioned,
    prototypes_at,
    same_event,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from netsiam.config import Config, DebounceConfig, DetectorConfig, WindowConfig, override
from netsiam.detector.batch import run_batch
from netsiam.detector.pipeline import EventOut, Pipeline
from netsiam.features import derive
from netsiam.schemas import load_schema
from netsiam.schemas.deadletter import DeadLetter, validate_dead_letter
from netsiam.schemas.event import event_id
from netsiam.trainer.detection import detect_events, episodes_from_intervals


def run_all(p: Pipeline, parts: dict[Any, list[Msg]], chunk: int = 500,
            suppress: dict[Any, int] | None = None) -> list[DeadLetter | EventOut]:
    """Feed partitions interleaved in chunks (as polls do), embedding whenever a batch is due."""
    suppress = suppress or {}
    pos = dict.fromkeys(parts, 0)
    out: list[DeadLetter | EventOut] = []
    while any(pos[tp] < len(m) for tp, m in parts.items()):
        for tp, msgs in parts.items():
            if pos[tp] < len(msgs):
                p.feed(tp, msgs[pos[tp]:pos[tp] + chunk], suppress.get(tp, -1))
                pos[tp] += chunk
        if p.pending >= 64:
            embed_all(p)
        out += p.take_outbox()
    embed_all(p)
    return out + p.take_outbox()


def events(out: Sequence[Any]) -> list[dict[str, Any]]:
    evs = [o.event.to_json() for o in out if isinstance(o, EventOut)]
    for e in evs:
        e.pop("detected_at")
    return evs


@pytest.fixture(scope="module")
def trace() -> tuple[list[bytes], list[Any]]:
    return labelled_trace()


def test_records_to_events_match_labels_and_offline_evaluation(model: Model, trace: Any) -> None:
    lines, labels = trace
    cfg = Config()
    art = model.fake()
    p = Pipeline(cfg, art)
    out = run_all(p, partitioned(lines))
    assert not [o for o in out if isinstance(o, DeadLetter)]
    evs = events(out)
    # one raised + one cleared per labelled episode, right fault, nothing in normal stretches
    eps = episodes_from_intervals(labels)
    check_episodes(evs, labels, max(orjson.loads(b)["ts"] for b in lines))
    assert sum(e["state"] == "raised" for e in evs) == len(eps)
    for e in evs:
        assert e["event_id"] == event_id(e["source"], e["fault"], e["started_at"], e["state"])
        assert set(e["distances"]) == set(model.prototypes.classes) and len(e["embedding"]) == 3
        assert e["model_version"] == art.version
        if e["state"] == "cleared":
            assert e["window_end"] > e["started_at"]
    # identical to the offline evaluation over the same windows (evaluate judges as the daemon acts)
    w, x, _, _ = labelled_windows_from_lines(lines, labels, model.window)
    names, _, _ = model.prototypes.classify(model.head.embed(x))
    offline = detect_events(w.sources, w.end_ts, names, cfg.detector.debounce)
    ends = {(e["source"], e["fault"], e["started_at"], e["state"]): e["window_end"] for e in evs}
    assert len(ends) == len(evs)
    assert sorted((e.source, e.fault, e.started_at, e.raised_at, e.cleared_at) for e in offline) == sorted(
        (s, f, t, ends[(s, f, t, "raised")], ends.get((s, f, t, "cleared"))) for s, f, t, st in ends if st == "raised")
    m = p.metrics
    assert m.records_consumed._value.get() == len(lines) == m.records_valid._value.get()
    assert m.windows_embedded._value.get() == len(w)


def labelled_windows_from_lines(lines: Sequence[bytes], labels: Any, window: WindowConfig) -> Any:
    from netsiam.traceio import Record

    recs = [Record(**orjson.loads(b)) for b in lines]
    return labelled_windows(recs, labels, window)


def test_one_embed_call_per_batch_of_at_most_batch_max(model: Model, trace: Any) -> None:
    lines, _ = trace
    art = model.fake()
    p = Pipeline(Config(), art)
    parts = partitioned(lines[:3000])
    for tp, msgs in parts.items():
        p.feed(tp, msgs)
    n = p.pending
    assert n > 100
    embed_all(p, batch_max=64)
    assert art.calls == [64] * (n // 64) + ([n % 64] if n % 64 else [])


def test_a_batch_just_past_a_power_of_two_is_embedded_in_two_calls(model: Model, trace: Any) -> None:
    """Artifact.embed pads each call to a power of two: 520 windows would cost 1024, so run_batch
    embeds 512 + 8 instead. Same embeddings, same order, same classes as one call."""
    from netsiam.detector.batch import embed_pieces

    assert embed_pieces(0) == [] and embed_pieces(64) == [64] and embed_pieces(200) == [200]
    assert embed_pieces(520) == [512, 8] and embed_pieces(300) == [256, 44]
    for n in range(1, 3000, 7):
        sizes = embed_pieces(n)
        assert sum(sizes) == n and all(k > 0 for k in sizes)
        padded = sum(1 << (k - 1).bit_length() for k in sizes)
        assert padded <= 1 << (n - 1).bit_length()  # never more work than one padded call
    lines, _ = trace
    art = model.fake()
    p = Pipeline(Config(), art)
    for tp, msgs in partitioned(lines[:6000]).items():
        p.feed(tp, msgs)
    assert p.pending >= 520
    b = p.take_batch(520)
    assert b is not None
    res = run_batch(b)
    assert art.calls == [512, 8]
    whole = art.head.embed(derive(b.raw, art.features))
    np.testing.assert_allclose(res.emb, whole, atol=1e-6)
    assert list(res.names) == list(art.prototypes.classify(whole)[0])


def test_bad_input_becomes_dead_letters_with_reason_and_original_bytes() -> None:
    head = LinearHead(np.zeros(6), np.ones(6), np.zeros((12, 3)), np.zeros(3))
    protos = prototypes_at({"normal": np.full(3, 0.5)}, threshold=1.0, support=1)
    p = Pipeline(Config(), LinearArtifact(head, protos, WindowConfig(stride=5)))
    cases = bad_lines()
    base = 1795384000.0
    ok = [orjson.dumps({"source": "y", "ts": base + i, "metrics": {"OutgoingCall": 1, "SuccessfulCall": 1,
                        "FailedCall": 0, "Retransmissions": 0, "CurrentCall": 1, "ResponseTime1": 3.0}})
          for i in range(3)]
    dup = ok[2]                                                            # the last slot again
    old = orjson.dumps({**orjson.loads(ok[0]), "ts": base - 0.4})          # earlier slot than the last
    skew = orjson.dumps({**orjson.loads(ok[0]), "source": "z", "ts": base + 200_000})  # > max_clock_skew_s ahead
    values = [c[0] for c in cases] + ok + [dup, old, skew]
    reasons = [c[1] for c in cases] + [None] * 3 + ["duplicate", "out_of_order", "out_of_order"]
    msgs = [Msg(TOPIC, 0, i, 0, b"k", v) for i, v in enumerate(values)]
    p.feed((TOPIC, 0), msgs)
    dls = [o for o in p.take_outbox() if isinstance(o, DeadLetter)]
    want = [(i, r) for i, r in enumerate(reasons) if r is not None]
    assert [(d.offset, d.reason) for d in dls] == want
    dl_schema = jsonschema.Draft202012Validator(load_schema("deadletter"))
    for d in dls:
        j = orjson.loads(d.to_bytes(123.0))
        dl_schema.validate(j)
        validate_dead_letter(j)
        assert j["topic"] == TOPIC and j["partition"] == 0 and j["offset"] == d.offset and j["detail"]
        orig = values[d.offset]
        import base64

        assert (j["value_b64"] is None and orig is None) or base64.b64decode(j["value_b64"]) == orig
    m = p.metrics
    assert m.records_consumed._value.get() == len(values)
    assert m.records_valid._value.get() == 3
    invalid = sum(m.records_invalid.labels(reason=r)._value.get() for r in set(reasons) if r)
    assert invalid == len(want) and m.records_consumed._value.get() == 3 + invalid


def test_replay_below_suppress_rebuilds_state_without_publishing(model: Model, trace: Any) -> None:
    lines, _ = trace
    parts = partitioned(lines[:2000])
    p = Pipeline(Config(), model.fake())
    out = run_all(p, parts, suppress={tp: len(m) for tp, m in parts.items()})
    assert out == [] and p.metrics.records_consumed._value.get() == 0
    assert p.sources  # state was rebuilt


class NoisyArtifact(LinearArtifact):
    """The test model plus a deterministic per-window wobble and tight thresholds: flickering classes,
    ``unknown`` runs and fault switches, the hard cases for rebuilding debounce state."""

    def embed(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        e = super().embed(x, batch_size)
        wobble = np.sin(np.asarray(x, np.float64).sum(axis=(1, 2))[:, None] * np.array([[3.1, 5.3, 7.7]]))
        return (e + 0.12 * wobble).astype(np.float32)


def noisy(model: Model) -> NoisyArtifact:
    from netsiam.serving import Prototypes

    protos = Prototypes()
    for c, pts, _thr, n in zip(model.prototypes.classes, model.prototypes.points, model.prototypes.thresholds,
                               model.prototypes.support, strict=True):
        protos.set(c, pts, 0.16, n)
    return NoisyArtifact(model.head, protos, model.window, "noisy-1")


@pytest.mark.parametrize("cut", [0.17, 0.46, 0.71])
@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("kind", ["clean", "noisy"])
def test_restart_from_markers_reproduces_every_event(model: Model, trace: Any, cut: float, pipelined: bool,
                                                     kind: str) -> None:
    """Crash after a commit, restart from the stored markers: the union of both runs' events equals
    an uninterrupted run, and the replayed ones carry the same ids (the restart rule)."""
    lines, _ = trace
    parts = partitioned(lines, 3)
    # a debounce quick to raise unknown and to switch, so the wobble makes many hard cases to rebuild
    cfg = override(Config(), {"detector.debounce.raise_n": 3, "detector.debounce.unknown_after": 6,
                              "detector.debounce.switch_after": 3})

    def art() -> Any:
        return model.fake() if kind == "clean" else noisy(model)

    full = events(run_all(Pipeline(cfg, art()), parts))
    if kind == "noisy":  # the wobble must actually produce the hard cases
        assert any(e["fault"] == "unknown" for e in full)
        assert len(full) > 20 + len(events(run_all(Pipeline(cfg, model.fake()), parts)))

    # run 1: feed a prefix; commit a snapshot (as the daemon does, maybe with a batch still pending)
    p1 = Pipeline(cfg, art())
    prefix = {tp: msgs[:int(len(msgs) * cut)] for tp, msgs in parts.items()}
    before = events(run_all(p1, prefix))
    positions, seq = dict(p1.positions), p1.seq
    if pipelined:
        # the daemon's embed thread: a batch is taken while more records keep arriving; its snapshot
        # (positions up to the first window left pending) is what gets committed once it is applied
        extra = {tp: parts[tp][len(prefix[tp]):len(prefix[tp]) + 200] for tp in parts}
        for tp, msgs in extra.items():
            p1.feed(tp, msgs[:120])
        b = p1.take_batch(max(1, p1.pending // 2))
        for tp, msgs in extra.items():
            p1.feed(tp, msgs[120:])
        if b is not None:
            p1.apply(b, run_batch(b))
            positions, seq = b.positions, b.seq
        before += events(p1.take_outbox())
    markers = p1.resync_offsets(positions, seq)
    assert all(markers[tp] <= positions[tp] for tp in positions)
    assert any(markers[tp] < positions[tp] for tp in positions)  # there is state to rebuild

    # run 2: fresh process, seek to the marker, publish only from the committed offset on
    p2 = Pipeline(cfg, art())
    rest = {tp: msgs[markers.get(tp, 0):] for tp, msgs in parts.items()}
    after = events(run_all(p2, rest, suppress=positions))
    by_id: dict[str, dict[str, Any]] = {}
    for e in before + after:
        if e["event_id"] in by_id:
            assert same_event(by_id[e["event_id"]], e)  # a duplicate is the very same event
        by_id[e["event_id"]] = e
    assert sorted(by_id) == sorted(e["event_id"] for e in full)
    assert all(same_event(by_id[e["event_id"]], e) for e in full)


CLASSES = ["normal", "blocked", "capacity_limit", "unknown"]


@settings(max_examples=300, deadline=None)
@given(seq=st.lists(st.tuples(st.sampled_from(CLASSES), st.sampled_from(CLASSES[:3])), min_size=1, max_size=60),
       deb=st.builds(DebounceConfig, raise_k=st.integers(1, 3), raise_n=st.integers(3, 5),
                     clear_m=st.integers(1, 3), unknown_after=st.integers(1, 8), switch_after=st.integers(1, 5)),
       data=st.data())
def test_tracker_is_new_again_once_quiet(seq: list[tuple[str, str]], deb: DebounceConfig, data: Any) -> None:
    """The property the rewind rule rests on: once the tracker is quiet (``clear_m`` normal windows in a
    row, no fault's aftermath), a tracker that started at ANY earlier window acts like it from then on.
    Each window carries its class and its nearest class, as the daemon feeds them."""
    from netsiam.debounce import FaultTracker

    t = FaultTracker(deb)
    quiet = []
    for i, (cls, near) in enumerate(seq):
        t.update(cls, float(i), near)
        if t.quiet:
            quiet.append(i)
    if not quiet:
        return
    q = data.draw(st.sampled_from(quiet))
    start = data.draw(st.integers(0, q + 1))

    def run(first: int) -> list[tuple[int, Any]]:
        t = FaultTracker(deb)
        out = []
        for i in range(first, len(seq)):
            out += [(i, tr) for tr in t.update(seq[i][0], float(i), seq[i][1])]
        return [(i, tr) for i, tr in out if i > q]

    assert run(start) == run(0)


@settings(max_examples=200, deadline=None)
@given(seq=st.lists(st.sampled_from(CLASSES), min_size=1, max_size=40), clear_m=st.integers(1, 4))
def test_the_tracker_is_quiet_exactly_after_clear_m_normal_windows(seq: list[str], clear_m: int) -> None:
    """Without nearest classes (nothing counts as a fault's aftermath) quiet is the tracker's own streak."""
    from netsiam.debounce import FaultTracker

    t = FaultTracker(DebounceConfig(clear_m=clear_m))
    for i, cls in enumerate(seq):
        t.update(cls, float(i))
        assert t.quiet == (i + 1 >= clear_m and all(c == "normal" for c in seq[i + 1 - clear_m:i + 1]))


def test_idle_sources_reset_by_record_time_and_max_sources_caps_state(model: Model) -> None:
    cfg = Config(detector=DetectorConfig(idle_evict_s=60.0, max_sources=100))
    p = Pipeline(cfg, model.fake())
    mets = {"OutgoingCall": 5, "SuccessfulCall": 5, "FailedCall": 0, "Retransmissions": 0, "CurrentCall": 9,
            "ResponseTime1": 3.0}
    base = 1795384000.0

    def msg(off: int, src: str, ts: float) -> Msg:
        return Msg(TOPIC, 0, off, 0, None, orjson.dumps({"source": src, "ts": ts, "metrics": mets}))

    p.feed((TOPIC, 0), [msg(i, f"s{i}", base + i * 0.01) for i in range(250)])
    assert len(p.sources) <= 100
    assert p.metrics.sources_evicted._value.get() >= 150
    st = p.sources["s249"]
    p.feed((TOPIC, 0), [msg(250, "s249", base + 70)])  # gap > idle_evict_s: a fresh state
    assert p.sources["s249"] is not st and p.sources["s249"].first_offset == 250
    n = len(p.sources)
    assert p.evict_idle() == n - 1 and list(p.sources) == ["s249"]  # the rest are > 60 s behind the clock


def test_swap_artifact_resets_buffers_only_when_windowing_changes(model: Model, trace: Any) -> None:
    lines, _ = trace
    p = Pipeline(Config(), model.fake())
    run_all(p, partitioned(lines[:600]))
    filled = {n: s.buf.last_slot for n, s in p.sources.items()}
    assert all(v is not None for v in filled.values())
    assert p.swap_artifact(model.fake("linear-2")) is False
    assert {n: s.buf.last_slot for n, s in p.sources.items()} == filled
    other = model.fake("linear-3")
    other.window = replace(model.window, length=20)
    assert p.swap_artifact(other) is True
    assert all(s.buf.last_slot is None for s in p.sources.values())


