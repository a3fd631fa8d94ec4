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
    detect_offline,
    easy_sim_params,
    embed_all,
    labelled_trace,
    labelled_windows,
    partitioned,
    prototypes_at,
    raised_series,
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
from netsiam.trainer.detection import episodes_from_intervals


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
    cfg = override(Config(), {"detector.debounce.hold_within": False})   # the linear model's thresholds hold everything
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
    w, _ = assert_as_offline(evs, lines, labels, art, model.window, cfg)
    m = p.metrics
    assert m.records_consumed._value.get() == len(lines) == m.records_valid._value.get()
    assert m.windows_embedded._value.get() == len(w)


def assert_as_offline(evs: list[dict[str, Any]], lines: Sequence[bytes], labels: Any, art: Any, window: WindowConfig,
                      cfg: Config) -> tuple[Any, np.ndarray | None]:
    """The daemon's events ``evs`` are those ``detect_events`` finds over the same windows, given what the
    daemon's debounce is given (:func:`~netsiam.givens.debounce_view`); -> (the windows, their ``added``)."""
    w, x, _, _ = labelled_windows_from_lines(lines, labels, window)
    offline, added = detect_offline(art, art.head.embed(x), x, w, cfg.detector.debounce)
    ends = {(e["source"], e["fault"], e["started_at"], e["state"]): e["window_end"] for e in evs}
    assert len(ends) == len(evs)
    assert sorted((e.source, e.fault, e.started_at, e.raised_at, e.cleared_at) for e in offline) == sorted(
        (s, f, t, ends[(s, f, t, "raised")], ends.get((s, f, t, "cleared"))) for s, f, t, st in ends if st == "raised")
    return w, added


def test_a_class_added_after_training_is_debounced_as_the_offline_evaluation_does(model: Model, trace: Any) -> None:
    """A class taught after training (here between normal and blocked, where a freeze's edges fall) gets the
    debounce's grace in another fault's recovery: the daemon and ``detect_events`` agree on it."""
    import copy

    lines, labels = trace
    cfg = override(Config(), {"detector.debounce.hold_within": False})
    art = model.fake()
    art.prototypes = copy.deepcopy(model.prototypes)
    art.manifest = {"classes": list(model.prototypes.classes)}   # what the encoder was trained on
    normal, blocked = (art.prototypes.points[art.prototypes.classes.index(c)].mean(axis=0) for c in ("normal", "blocked"))
    art.prototypes.set("degraded", (normal + blocked) / 2, float(np.linalg.norm(normal - blocked)) / 2, 10)
    evs = events(run_all(Pipeline(cfg, art), partitioned(lines)))
    _, added = assert_as_offline(evs, lines, labels, art, model.window, cfg)
    assert added is not None and 0 < added.sum() < len(added)


def test_answers_slower_than_the_source_s_own_raise_unknown_as_the_offline_evaluation_does(model: Model) -> None:
    """Far ends answering 100-400 ms late on testbeds that answer in 2-8 ms: the test encoder reads them
    normal; each source's own answer-time level (netsiam.slowanswers) makes them ``unknown``, alike in the
    daemon and in ``detect_events``."""
    from netsiam.trainer.simulate import SLOW_ANSWERS

    lines, labels = labelled_trace(params=replace(easy_sim_params(), faults=("blocked", "capacity_limit", SLOW_ANSWERS)))
    slow = [iv for iv in labels if iv.label == SLOW_ANSWERS]
    assert slow
    art = model.fake()

    def raised(factor: float, after: int = 3) -> list[dict[str, Any]]:
        cfg = override(Config(), {"detector.debounce.hold_within": False, "detector.debounce.slow_answer_factor": factor,
                                  "detector.debounce.slow_unknown_after": after})
        evs = events(run_all(Pipeline(cfg, art), partitioned(lines)))
        assert_as_offline(evs, lines, labels, art, model.window, cfg)
        return [next((e for e in evs if e["state"] == "raised" and e["source"] == iv.source
                      and iv.start <= e["window_end"] <= iv.end + 15), {}) for iv in slow]

    first = raised(3.0)
    assert [e["fault"] for e in first] == ["unknown"] * len(slow)
    # 3 windows in a row answered slowly raise: no wait for 10 unknown ones (the simulated slowdown ramps up)
    delay = [e["window_end"] - iv.start for e, iv in zip(first, slow, strict=True)]
    waited = [e["window_end"] - iv.start for e, iv in zip(raised(3.0, after=0), slow, strict=True)]
    assert all(w - d >= 7 for d, w in zip(delay, waited, strict=True)), (delay, waited)
    # evaluate's encoder column (beside the baselines) debounces as its report does
    from netsiam.trainer.dataset import LabelledWindows
    from netsiam.trainer.evaluate import evaluate_detailed

    w, x, lab, straddle = labelled_windows_from_lines(lines, labels, model.window)
    lw = LabelledWindows(w.raw, x, w.end_ts, w.sources, lab, straddle)
    art.manifest = {"classes": list(art.prototypes.classes),
                    "normalisation": {"mean": [0.0] * x.shape[2], "std": [1.0] * x.shape[2]}}
    rep = evaluate_detailed(art, lw, override(Config(), {"detector.debounce.hold_within": False,
                                                         "detector.debounce.slow_answer_factor": 3.0}),
                            intervals=labels, support=lw).report
    col = rep["baselines"]["encoder"]["detection"]
    assert {k: v for k, v in rep["detection"].items() if k in col} == col
    for e in first:   # why: the answer time against the range the source's own level allows, 3x either way
        why = e["evidence"][0]
        lo, hi = why["normal"]
        assert why["feature"] == "log_response_ms" and why["value"] > hi and hi - lo == pytest.approx(2 * np.log(3), abs=0.02)
    assert "unknown" not in [e.get("fault") for e in raised(0.0)]


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
                        "FailedCall": 0, "Retransmissions": 0, "CurrentCall": 1, "ResponseTime1": 3.0,
                        "FailedMaxUDPRetrans": 0, "FailedTimeoutOnRecv": 0}})
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


T0 = 1795384000.0      # the labelled test trace's first ts
QUIET_GAP = (250.0, 330.0)  # sbc-1 sends nothing here (normal time): silent, then back
GONE_AT = 440.0             # sbc-5 sends nothing from here on (inside a blocked episode): silent, then forgotten
SHORT_GAP = (650.0, 670.0)  # sbc-2: 20 s, shorter than silent_after_s: not silent
IDLE_S = 300.0


def gapped(lines: Sequence[bytes]) -> list[bytes]:
    """The labelled trace with sources going quiet: a gap, a departure, a gap too short to matter."""
    out = []
    for b in lines:
        r = orjson.loads(b)
        t = r["ts"] - T0
        if ((r["source"] == "sbc-1" and QUIET_GAP[0] <= t < QUIET_GAP[1]) or (r["source"] == "sbc-5" and t >= GONE_AT)
                or (r["source"] == "sbc-2" and SHORT_GAP[0] <= t < SHORT_GAP[1])):
            continue
        out.append(b)
    return out


def silent_cfg(**debounce: int) -> Config:
    return override(Config(), {"detector.idle_evict_s": IDLE_S,
                               **{f"detector.debounce.{k}": v for k, v in debounce.items()}})


@pytest.mark.parametrize("cut", [0.17, 0.25, 0.46, 0.71])
@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("kind", ["clean", "noisy", "silent"])
def test_restart_from_markers_reproduces_every_event(model: Model, trace: Any, cut: float, pipelined: bool,
                                                     kind: str) -> None:
    """Crash after a commit, restart from the stored markers: the union of both runs' events equals
    an uninterrupted run, and the replayed ones carry the same ids (the restart rule). ``silent``:
    sources go quiet and come back, or leave and are forgotten (markers between the windows)."""
    lines, _ = trace
    # a debounce quick to raise unknown and to switch, so the wobble makes many hard cases to rebuild
    hard = {"raise_n": 3, "unknown_after": 6, "switch_after": 3}
    cfg = silent_cfg(**hard) if kind == "silent" else override(
        Config(), {f"detector.debounce.{k}": v for k, v in hard.items()})
    parts = partitioned(gapped(lines) if kind == "silent" else lines, 3)

    def art() -> Any:
        return noisy(model) if kind == "noisy" else model.fake()

    full = events(run_all(Pipeline(cfg, art()), parts))
    if kind == "noisy":  # the wobble must actually produce the hard cases
        assert any(e["fault"] == "unknown" for e in full)
        assert len(full) > 20 + len(events(run_all(Pipeline(cfg, model.fake()), parts)))
    if kind == "silent":  # and the gaps theirs: back from silence, a fault cleared by it, an eviction
        assert sorted((e["source"], e["state"]) for e in full if e["fault"] == "silent") == [
            ("sbc-1", "cleared"), ("sbc-1", "raised"), ("sbc-5", "cleared"), ("sbc-5", "raised")]

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


MAX_REPLAY_S = 120.0


@pytest.fixture(scope="module")
def long_faults() -> dict[Any, list[Msg]]:
    """Four sources for 40 minutes whose faults last 5-7 minutes: longer than MAX_REPLAY_S."""
    lines, _ = labelled_trace(4, 40, params=replace(easy_sim_params(), fault_duration_s=(300.0, 420.0)))
    return partitioned(lines, 2)


def key(e: dict[str, Any]) -> tuple[Any, ...]:
    return e["source"], e["fault"], e["state"], e["window_end"]


@pytest.mark.parametrize(("cut", "restarted"), [(0.2, False), (0.45, False), (0.7, True)])
def test_a_bounded_replay_publishes_every_transition_at_its_window(model: Model, long_faults: Any,
                                                                   cut: float, restarted: bool) -> None:
    """``detector.max_replay_s``: a restart replays a fault older than the bound from a later window
    (where the windows carry the fault; one held through normal windows keeps its epoch). It publishes
    every transition of an uninterrupted run, at the same window, and no other (no second raise of a
    fault already raised); only an event of a fault active at the restart may carry a later start
    (hence another id), at least half the bound before the restart."""
    parts = long_faults
    cfg = override(Config(), {"detector.max_replay_s": MAX_REPLAY_S})
    full = events(run_all(Pipeline(cfg, model.fake()), parts))
    assert full == events(run_all(Pipeline(Config(), model.fake()), parts))  # the bound changes no decision

    prefix = {tp: msgs[:int(len(msgs) * cut)] for tp, msgs in parts.items()}
    p1, exact = Pipeline(cfg, model.fake()), Pipeline(Config(), model.fake())
    before = events(run_all(p1, prefix))
    run_all(exact, prefix)
    positions = dict(p1.positions)
    markers, unbounded = p1.resync_offsets(positions, p1.seq), exact.resync_offsets(positions, exact.seq)
    assert all(markers[tp] >= unbounded[tp] for tp in positions)
    assert any(markers[tp] > unbounded[tp] for tp in positions)  # a fault older than the bound was active
    cut_ts = {tp: float(orjson.loads(parts[tp][positions[tp] - 1].value)["ts"]) for tp in positions}

    # another source may pin the partition further back: a replay from between the source's own
    # episode start and its moved marker must publish the same transitions too
    between = {tp: (markers[tp] + unbounded[tp]) // 2 for tp in positions}
    for start in (between, markers):
        after = events(run_all(Pipeline(cfg, model.fake()), {tp: m[start[tp]:] for tp, m in parts.items()},
                               suppress=positions))
        assert sorted(map(key, before + after)) == sorted(map(key, full))
    by_key = {key(e): e for e in full}
    moved = [e for e in after if e["started_at"] != by_key[key(e)]["started_at"]]
    assert bool(moved) == restarted  # (at 0.7 a blocked fault held since its episode clears after the restart)
    for e in moved:
        orig = by_key[key(e)]
        tp = next(tp for tp in parts if any(orjson.loads(m.value)["source"] == e["source"] for m in parts[tp][:50]))
        assert orig["started_at"] < e["started_at"] <= cut_ts[tp] - MAX_REPLAY_S / 2, (orig, e)
    assert all(e == by_key[key(e)] for e in after if e not in moved)


CLASSES = ["normal", "blocked", "capacity_limit", "unknown", "degraded"]   # degraded: a class added later
# class, nearest class, the classes whose threshold it is within (None: not known), window end (s), every input
# back in its normal range (None: not known), its class added after training, the faults whose signature it
# shows and those whose mark it shows (None: not known), read unknown for its slow answers (its slow seconds in
# a row, in windows; 0: not slow)
Window = tuple[str, str, "frozenset[str] | None", float, "bool | None", bool, "frozenset[str] | None",
               "frozenset[str] | None", int]


def transitions_after(seq: Sequence[Window], deb: DebounceConfig, first: int, q: int) -> list[tuple[int, Any]]:
    """The transitions after window ``q`` of a tracker started at window ``first``."""
    from netsiam.debounce import FaultTracker

    t = FaultTracker(deb)
    out = []
    for i in range(first, len(seq)):
        cls, near, within, end, in_range, added, held, marked, slow = seq[i]
        out += [(i, tr) for tr in t.update(cls, end, near, within, in_range, added, held, marked, slow)]
    return [(i, tr) for i, tr in out if i > q]


def quiet_points(seq: Sequence[Window], deb: DebounceConfig) -> list[int]:
    from netsiam.debounce import FaultTracker

    t = FaultTracker(deb)
    out = []
    for i, (cls, near, within, end, in_range, added, held, marked, slow) in enumerate(seq):
        t.update(cls, end, near, within, in_range, added, held, marked, slow)
        if t.quiet:
            out.append(i)
    return out


def assert_agree_after_every_quiet_window(seq: Sequence[Window], deb: DebounceConfig) -> None:
    for q in quiet_points(seq, deb):
        for start in range(q + 2):
            assert transitions_after(seq, deb, start, q) == transitions_after(seq, deb, 0, q), (q, start)


def timed(windows: Sequence[tuple[Any, ...]], gaps: Sequence[float] | None = None) -> list[Window]:
    """(class, nearest, within[, in_range[, added[, held[, marked[, slow]]]]]) per window -> windows at their end
    times."""
    ends = np.cumsum(gaps if gaps is not None else np.ones(len(windows)))
    return [(w[0], w[1], w[2], float(e), w[3] if len(w) > 3 else None, len(w) > 4 and w[4],
             w[5] if len(w) > 5 else None, w[6] if len(w) > 6 else None, len(w) > 7 and w[7])
            for w, e in zip(windows, ends, strict=True)]


@settings(max_examples=300, deadline=None)
@given(windows=st.lists(st.tuples(st.sampled_from(CLASSES), st.sampled_from(CLASSES[:3]),
                                  st.none() | st.frozensets(st.sampled_from(CLASSES[:3])),
                                  st.sampled_from([0.5, 1.0, 1.0, 1.0, 2.5, 40.0]), st.none() | st.booleans(),
                                  st.booleans(), st.none() | st.frozensets(st.sampled_from(CLASSES[1:3])),
                                  st.none() | st.frozensets(st.sampled_from(CLASSES[1:3])), st.integers(0, 4)),
                        min_size=1, max_size=60),
       deb=st.builds(DebounceConfig, raise_k=st.integers(1, 3), raise_n=st.integers(3, 5),
                     clear_m=st.integers(1, 3), unknown_after=st.integers(1, 8), switch_after=st.integers(1, 5),
                     hold_within=st.booleans(), aftermath_s=st.sampled_from([0.0, 4.0, 35.0]),
                     added_grace_s=st.sampled_from([0.0, 4.0, 65.0]),
                     release_in_range=st.booleans(), hold_signature=st.booleans(),
                     name_on_signature=st.booleans(), name_on_mark=st.booleans(),
                     slow_unknown_after=st.integers(0, 3), release_named=st.booleans()),
       data=st.data())
def test_tracker_is_new_again_once_quiet(windows: list[Any], deb: DebounceConfig, data: Any) -> None:
    """The property the rewind rule rests on: once the tracker is quiet, a tracker that started at ANY
    earlier window acts like it from then on. Each window carries its class, its nearest class, the
    thresholds it is within, whether its inputs are back in range, whether its class was added after
    training, the fault signatures and marks it shows and whether it was read unknown for its slow answers, as
    the daemon feeds them, at irregular times."""
    seq = timed([(*w[:3], w[4], w[5], w[6], w[7], w[8]) for w in windows], [w[3] for w in windows])
    quiet = quiet_points(seq, deb)
    if not quiet:
        return
    q = data.draw(st.sampled_from(quiet))
    start = data.draw(st.integers(0, q + 1))
    assert transitions_after(seq, deb, start, q) == transitions_after(seq, deb, 0, q)
    if start > 0:   # a restart's replay from there is itself the running tracker of the next restart
        quiet2 = [i for i in quiet_points(seq[start:], deb) if i + start > q]
        if quiet2:
            q2 = start + data.draw(st.sampled_from(quiet2))
            start2 = data.draw(st.integers(start, q2 + 1))
            assert transitions_after(seq, deb, start2, q2) == transitions_after(seq, deb, start, q2)


def unstarted(trans: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    return [(i, replace(tr, started_at=0.0)) for i, tr in trans]


@settings(max_examples=300, deadline=None)
@given(runs=st.lists(st.tuples(st.sampled_from(CLASSES), st.sampled_from(CLASSES[:3]),
                               st.none() | st.frozensets(st.sampled_from(CLASSES[:3])),
                               st.sampled_from([0.5, 1.0, 1.0, 1.0, 2.5, 40.0]), st.integers(1, 10),
                               st.none() | st.booleans(), st.booleans(),
                               st.none() | st.frozensets(st.sampled_from(CLASSES[1:3])),
                               st.none() | st.frozensets(st.sampled_from(CLASSES[1:3])), st.integers(0, 4)),
                     min_size=1, max_size=14),
       deb=st.integers(1, 3).flatmap(lambda k: st.builds(
           DebounceConfig, raise_k=st.just(k), raise_n=st.integers(k, 5), clear_m=st.integers(1, 3),
           unknown_after=st.integers(1, 8), switch_after=st.integers(1, 5), hold_within=st.booleans(),
           aftermath_s=st.sampled_from([0.0, 4.0, 35.0]), added_grace_s=st.sampled_from([0.0, 4.0, 65.0]),
           release_in_range=st.booleans(), hold_signature=st.booleans(), name_on_signature=st.booleans(),
           name_on_mark=st.booleans(), slow_unknown_after=st.integers(0, 3), release_named=st.booleans())),
       data=st.data())
def test_a_tracker_started_within_the_restart_span_agrees_but_for_the_start(runs: list[Any], deb: DebounceConfig,
                                                                          data: Any) -> None:
    """What ``detector.max_replay_s`` rests on: where ``restart_span`` is s > 0, a tracker started at
    any window but the last s - 1 holds the same fault after this window and makes the same
    transitions from then on, their ``started_at`` aside (a replay starts at its partition's earliest
    replay-from offset, so anywhere before the source's own). Runs of one class, so that spans occur."""
    from netsiam.debounce import FaultTracker

    windows = [w for w in runs for _ in range(w[4])]
    seq = timed([(*w[:3], w[5], w[6], w[7], w[8], w[9]) for w in windows], [w[3] for w in windows])
    t, spans = FaultTracker(deb), []
    for q, (cls, near, within, end, in_range, added, held, marked, slow) in enumerate(seq):
        t.update(cls, end, near, within, in_range, added, held, marked, slow)
        if t.restart_span:
            assert t.restart_span <= t.given_run
            spans.append((q, t.restart_span, t.given_run, t.active))
    if not spans:
        return
    q, span, _run, active = data.draw(st.sampled_from(spans))
    want = unstarted(transitions_after(seq, deb, 0, q))
    for first in range(q - span + 2):
        fresh = FaultTracker(deb)
        for cls, near, within, end, in_range, added, held, marked, slow in seq[first:q + 1]:
            fresh.update(cls, end, near, within, in_range, added, held, marked, slow)
        assert fresh.active == active, first
        assert unstarted(transitions_after(seq, deb, first, q)) == want, first


N, B, U, NONE = "normal", "blocked", "unknown", frozenset[str]()


@pytest.mark.parametrize(("seq", "deb"), [
    # a blocked window under an active unknown: a tracker started there raises blocked and is in its
    # aftermath when the first one, whose unknown cleared, would raise unknown again
    (timed([(U, N, NONE), (B, N, NONE), (N, N, NONE), (U, N, NONE), (N, N, NONE), (N, N, NONE)]),
     DebounceConfig(raise_k=1, raise_n=3, clear_m=1, unknown_after=1, switch_after=2, aftermath_s=4.0)),
    # a normal window within blocked's threshold holds the blocked fault of a tracker started at window 1,
    # while the first one has only an unknown to clear there
    (timed([(B, N, NONE), (B, N, NONE), (U, N, NONE), (B, N, NONE), (N, N, frozenset({N, B})), (B, N, NONE)]),
     DebounceConfig(raise_k=2, raise_n=3, clear_m=1, unknown_after=1, switch_after=1, aftermath_s=0.0)),
    # a normal window back in range whose last second still shows blocked's signature: it holds no fault in
    # any tracker (one started at window 2 held blocked through it while the first one went quiet)
    (timed([(N, N, None), ("capacity_limit", N, None), (N, N, None), (B, N, None),
            (N, N, None, True, False, frozenset({B})), (N, N, None), (N, N, None)], [0.5] * 7),
     DebounceConfig(raise_k=1, raise_n=3, clear_m=2, unknown_after=1, switch_after=2, hold_within=False,
                    aftermath_s=0.0, added_grace_s=0.0)),
])
def test_trackers_started_anywhere_agree_after_every_quiet_window(seq: list[Window], deb: DebounceConfig) -> None:
    """Counterexamples hypothesis found, checked for every quiet window and every start before it."""
    assert_agree_after_every_quiet_window(seq, deb)


def test_a_named_window_no_tracker_could_raise_does_not_hold_quiet_off() -> None:
    """One stray blocked window (the defaults raise on two in a row), then normal windows that are also
    within blocked's threshold, as a fault's neighbours often are: quiet again after ``clear_m`` of them,
    not pinning the partition's replay-from offset for as long as the overlap lasts."""
    deb = DebounceConfig()
    seq = timed([(N, N, frozenset({N}))] * 3 + [(B, B, frozenset({B}))] + [(N, N, frozenset({N, B}))] * 20)
    assert quiet_points(seq, deb) == [1, 2, *range(5, len(seq))]
    assert_agree_after_every_quiet_window(seq, deb)


def test_windows_back_in_range_let_the_tracker_go_quiet_though_within_the_fault() -> None:
    """After a blocked fault, normal windows still within blocked's threshold hold it in some tracker
    unless their inputs are back in range: then no tracker holds them, the fault clears, and quiet
    comes ``aftermath_s`` after ``clear_m`` of them instead of never."""
    deb = DebounceConfig()                                      # clear_m 2, aftermath_s 35
    head = [(N, N, frozenset({N}), True)] * 3 + [(B, B, frozenset({B}), False)] * 2
    back = timed(head + [(N, N, frozenset({N, B}), True)] * 60)
    assert quiet_points(back, deb) == [1, 2, *range(41, len(back))]   # settled at window 6 (t=7) + 35 s
    assert_agree_after_every_quiet_window(back, deb)
    held = timed(head + [(N, N, frozenset({N, B}), False)] * 60)
    assert quiet_points(held, deb) == [1, 2]                    # the fault is held throughout
    assert quiet_points(back, replace(deb, release_in_range=False)) == [1, 2]


@settings(max_examples=200, deadline=None)
@given(seq=st.lists(st.sampled_from(CLASSES), min_size=1, max_size=40), clear_m=st.integers(1, 4),
       grace=st.integers(0, 12))
def test_the_tracker_is_quiet_exactly_after_clear_m_normal_windows_and_the_grace(seq: list[str], clear_m: int,
                                                                                  grace: int) -> None:
    """Without nearest classes and thresholds quiet is the tracker's own normal streak, except after a named
    window that some tracker could have raised (here two in a row: the default 2 of 2): from then on it
    waits for ``clear_m`` normal windows in a row, then for a run of them ending ``aftermath_s`` (the
    grace) or more later."""
    from netsiam.debounce import FaultTracker

    t = FaultTracker(DebounceConfig(clear_m=clear_m, aftermath_s=float(grace)))
    settle_at: float | None = None      # when the windows since the last raisable named one may be forgotten
    named = False                       # a raisable named window not yet forgotten
    for i, cls in enumerate(seq):
        t.update(cls, float(i))
        streak = i + 1 >= clear_m and all(c == "normal" for c in seq[i + 1 - clear_m:i + 1])
        if cls not in ("normal", "unknown") and i > 0 and seq[i - 1] == cls:
            named, settle_at = True, None
        elif named and streak:
            settle_at = i + grace if settle_at is None else settle_at
            named = i < settle_at
        assert t.quiet == (streak and not named)


def test_idle_sources_reset_by_record_time_and_max_sources_caps_state(model: Model) -> None:
    cfg = Config(detector=DetectorConfig(idle_evict_s=60.0, max_sources=100))
    p = Pipeline(cfg, model.fake())
    mets = {"OutgoingCall": 5, "SuccessfulCall": 5, "FailedCall": 0, "Retransmissions": 0, "CurrentCall": 9,
            "ResponseTime1": 3.0, "FailedMaxUDPRetrans": 0, "FailedTimeoutOnRecv": 0}
    base = 1795384000.0

    def msg(off: int, src: str, ts: float) -> Msg:
        return Msg(TOPIC, 0, off, 0, None, orjson.dumps({"source": src, "ts": ts, "metrics": mets}))

    p.feed((TOPIC, 0), [msg(i, f"s{i}", base + i * 0.01) for i in range(250)])
    assert len(p.sources) <= 100
    assert p.metrics.sources_evicted._value.get() >= 150
    st = p.sources["s249"]
    p.feed((TOPIC, 0), [msg(250, "s249", base + 70)])  # gap > idle_evict_s: a fresh state
    assert p.sources["s249"] is not st and p.sources["s249"].first_offset == 250
    assert list(p.sources) == ["s249"]  # the rest are > 60 s behind that record: forgotten at once
    embed_all(p)
    out = [o.event for o in p.take_outbox() if isinstance(o, EventOut)]
    # each went silent before it was forgotten (the silence raised, then cleared by the eviction)
    assert {(e.source, e.state) for e in out} == {(f"s{i}", s) for i in range(150, 250) for s in ("raised", "cleared")}
    assert all(e.fault == "silent" for e in out)
    assert p.metrics.registry.get_sample_value("netsiam_active_faults", {"fault": "silent"}) == 0


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




# -- silence ------------------------------------------------------------------------------------------
def silent_run(model: Model, lines: Sequence[bytes], cfg: Config) -> tuple[Pipeline, list[dict[str, Any]]]:
    p = Pipeline(cfg, model.fake())
    return p, events(run_all(p, partitioned(lines, 3)))


def last_ts_before(lines: Sequence[bytes], source: str, t: float) -> float:
    return max(r["ts"] for r in map(orjson.loads, lines) if r["source"] == source and r["ts"] - T0 < t)


def test_a_source_that_stops_sending_is_silent_until_it_sends_again(model: Model, trace: Any) -> None:
    lines = gapped(trace[0])
    cfg = silent_cfg()
    p, evs = silent_run(model, lines, cfg)
    after = cfg.detector.silent_after_s
    schema = jsonschema.Draft202012Validator(load_schema("event"))
    for e in evs:
        schema.validate({**e, "detected_at": 0.0})
    silent = [e for e in evs if e["fault"] == "silent"]
    gap_last = last_ts_before(lines, "sbc-1", QUIET_GAP[0])
    back = min(r["ts"] for r in map(orjson.loads, lines) if r["source"] == "sbc-1" and r["ts"] - T0 >= QUIET_GAP[1])
    gone_last = last_ts_before(lines, "sbc-5", GONE_AT)
    stamps = [(e["source"], e["state"], e["started_at"], e["window_end"]) for e in silent]
    assert sorted(stamps) == [
        ("sbc-1", "cleared", gap_last + 1, back),
        ("sbc-1", "raised", gap_last + 1, gap_last + after),
        ("sbc-5", "cleared", gone_last + 1, gone_last + IDLE_S),   # forgotten: cleared, never left open
        ("sbc-5", "raised", gone_last + 1, gone_last + after),
    ]
    for e in silent:
        assert e["embedding"] == [] and e["distances"] == {} and e["distance"] == 0.0 and e["evidence"] == []
        assert e["event_id"] == event_id(e["source"], "silent", e["started_at"], e["state"])
    # sbc-5 went quiet inside a blocked episode: that fault is cleared when the silence is raised
    five = [(e["state"], e["fault"], e["window_end"]) for e in evs if e["source"] == "sbc-5"]
    i = five.index(("raised", "silent", gone_last + after))
    assert five[i - 1] == ("cleared", "blocked", gone_last + after) and five[i + 1:] == [
        ("cleared", "silent", gone_last + IDLE_S)]
    assert not [e for e in evs if e["source"] == "sbc-2" and e["fault"] == "silent"]  # 20 s: not silent
    # nothing is left active for sources that are gone; the gauges agree with the events
    assert "sbc-5" not in p.sources
    active: set[tuple[str, str]] = set()
    for e in evs:  # in the order they were emitted
        (active.add if e["state"] == "raised" else active.discard)((e["source"], e["fault"]))
    gauges = {(s.labels["source"], s.labels["fault"]) for s in raised_series(p, "netsiam_fault_active")}
    assert gauges == active and "sbc-5" not in {s for s, _ in gauges}
    assert gauges == {(s.labels["source"], s.labels["fault"]) for s in raised_series(p, "netsiam_fault_evidence_info")}   # the annotations' series: one per active fault, none left over
    assert p.metrics.registry.get_sample_value("netsiam_active_faults", {"fault": "silent"}) == 0


def test_silence_seen_by_the_wall_clock_makes_the_events_records_would(model: Model, trace: Any) -> None:
    """A partition that receives nothing: the daemon's wall clock raises the silence, with the very
    events a later record would have raised (same stamps, same ids)."""
    lines = gapped(trace[0])
    cfg = silent_cfg()
    _, full = silent_run(model, lines, cfg)
    gone_last = last_ts_before(lines, "sbc-5", GONE_AT)
    parts = partitioned(lines, 3)
    tp = next(tp for tp, msgs in parts.items() if any(m.key == b"sbc-5" for m in msgs))
    p = Pipeline(cfg, model.fake())
    # the stream stops right after sbc-5's last record
    run_all(p, {t: [m for m in msgs if orjson.loads(m.value)["ts"] <= gone_last] for t, msgs in parts.items()})
    n = p.silence_partition(tp)
    assert n == len({m.key for m in parts[tp]})  # every source on it
    assert p.silence_partition(tp) == 0           # once
    embed_all(p)
    wall = {e["event_id"]: e for e in events(p.take_outbox())}
    rec = {e["event_id"]: e for e in full if e["source"] == "sbc-5" and e["window_end"] == gone_last + 30}
    assert rec and all(same_event(wall[i], e) for i, e in rec.items())


def test_evicting_a_faulted_source_over_max_sources_clears_its_fault(model: Model, trace: Any) -> None:
    lines, labels = trace
    iv = next(iv for iv in labels if iv.label == "blocked")
    inside = [b for b in lines if (r := orjson.loads(b))["source"] == iv.source and r["ts"] < iv.start + 40]
    cfg = Config(detector=DetectorConfig(max_sources=1))
    p = Pipeline(cfg, model.fake())
    run_all(p, {(TOPIC, 0): [Msg(TOPIC, 0, i, 0, None, b) for i, b in enumerate(inside)]})
    assert p.sources[iv.source].tracker.active == "blocked"
    other = orjson.dumps({**orjson.loads(inside[-1]), "source": "newcomer"})
    p.feed((TOPIC, 0), [Msg(TOPIC, 0, len(inside), 0, None, other)])
    embed_all(p)
    out = events(p.take_outbox())
    assert [(e["source"], e["state"], e["fault"]) for e in out] == [(iv.source, "cleared", "blocked")]
    assert out[0]["window_end"] == orjson.loads(other)["ts"] and list(p.sources) == ["newcomer"]
    assert not raised_series(p, "netsiam_fault_active") and not raised_series(p, "netsiam_fault_evidence_info")
