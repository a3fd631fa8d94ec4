from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsiam.config import WindowConfig
from netsiam.features import RAW_METRICS, derive, required_metrics
from netsiam.windowing import WindowBuffer, slot_of, windows_for_source, windows_from_records


def stream(slots: np.ndarray, values: np.ndarray, cfg: WindowConfig) -> tuple[list[int], list[np.ndarray]]:
    buf = WindowBuffer(cfg, values.shape[1])
    ends, wins = [], []
    for i, (s, v) in enumerate(zip(slots, values, strict=True)):
        w = buf.push(int(s), v)
        if w is not None:
            ends.append(i)
            wins.append(w)
    return ends, wins


@st.composite
def traces(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, WindowConfig]:
    length = draw(st.integers(2, 8))
    cfg = WindowConfig(length=length, stride=draw(st.integers(1, length)), max_gap=draw(st.integers(0, 3)))
    steps = draw(st.lists(st.integers(1, 6), min_size=1, max_size=60))
    start = draw(st.integers(0, 50))
    slots = start + np.cumsum(steps)
    values = np.asarray(draw(st.lists(st.floats(0, 1000, allow_nan=False), min_size=len(slots) * 2,
                                      max_size=len(slots) * 2))).reshape(len(slots), 2)
    return slots, values, cfg


@settings(max_examples=300, deadline=None)
@given(traces())
def test_whole_trace_equals_one_record_at_a_time(trace: tuple[np.ndarray, np.ndarray, WindowConfig]) -> None:
    slots, values, cfg = trace
    idx, batch = windows_for_source(slots, values, cfg)
    ends, wins = stream(slots, values, cfg)
    assert list(idx) == ends
    assert batch.shape == (len(ends), cfg.length, 2)
    for a, b in zip(batch, wins, strict=True):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=200, deadline=None)
@given(traces())
def test_window_invariants(trace: tuple[np.ndarray, np.ndarray, WindowConfig]) -> None:
    slots, values, cfg = trace
    idx, wins = windows_for_source(slots, values, cfg)
    for i, w in zip(idx, wins, strict=True):
        assert slots[i] % cfg.stride == 0                      # ends aligned to absolute time
        np.testing.assert_array_equal(w[-1], values[i])        # last row is the record it ends at
        # every row is a real sample no older than T slots before the end (gap-filled = repeated)
        recent = values[(slots > slots[i] - cfg.length - cfg.max_gap) & (slots <= slots[i])]
        for row in w:
            assert any(np.array_equal(row, r) for r in recent)


def test_gaps_are_filled_up_to_max_gap_and_longer_gaps_restart() -> None:
    cfg = WindowConfig(length=4, stride=2, max_gap=1)
    slots = np.array([0, 1, 2, 3, 5, 6, 10, 11, 12, 13, 14])
    values = np.arange(len(slots), dtype=float)[:, None]
    idx, wins = windows_for_source(slots, values, cfg)
    assert list(slots[idx]) == [6, 14]      # 2 and 4 lack history; 12 is too soon after the long gap
    np.testing.assert_array_equal(wins[0][:, 0], [3, 3, 4, 5])   # slot 4 repeats slot 3
    np.testing.assert_array_equal(wins[1][:, 0], [7, 8, 9, 10])


def test_buffer_rejects_duplicates_and_out_of_order() -> None:
    buf = WindowBuffer(WindowConfig(length=3, stride=1), 1)
    buf.push(10, [1.0])
    with pytest.raises(ValueError, match="duplicate"):
        buf.push(10, [2.0])
    with pytest.raises(ValueError, match="out_of_order"):
        buf.push(5, [2.0])


def test_restart_emits_windows_at_the_same_instants() -> None:
    """A buffer started mid-stream emits windows ending at the same slots (once it has T samples)."""
    cfg = WindowConfig(length=5, stride=3)
    slots = np.arange(100, 160)
    values = np.random.default_rng(0).random((60, 2))
    full_idx, full = windows_for_source(slots, values, cfg)
    late_idx, late = windows_for_source(slots[17:], values[17:], cfg)
    late_ends = set(slots[17:][late_idx])
    assert late_ends <= set(slots[full_idx])
    for s, w in zip(slots[17:][late_idx], late, strict=True):
        np.testing.assert_array_equal(w, full[list(slots[full_idx]).index(s)])


def test_windows_from_records_groups_sources_and_drops_repeated_slots() -> None:
    cfg = WindowConfig(length=3, stride=1)
    recs = [("b", 1000.0 + t, (float(t),) * len(RAW_METRICS)) for t in range(5)]
    recs += [("a", 1000.0 + t, (float(t),) * len(RAW_METRICS)) for t in reversed(range(4))]
    recs.append(("a", 1002.2, (99.0,) * len(RAW_METRICS)))   # same slot as 1002.0: dropped
    w = windows_from_records(recs, cfg, len(RAW_METRICS))
    assert list(w.sources) == ["a", "a", "b", "b", "b"]
    assert list(w.end_ts) == [1002.0, 1003.0, 1002.0, 1003.0, 1004.0]
    assert 99.0 not in w.raw


def test_slot_rounds_to_nearest_interval() -> None:
    assert slot_of(10.4, 1.0) == 10 and slot_of(10.5, 1.0) == 11 and slot_of(9.9, 2.0) == 5


def test_features_are_load_invariant() -> None:
    """The same fault shape at 5 and at 500 calls/s gives the same derived features."""
    rng = np.random.default_rng(1)
    shape = rng.random((1, 30, len(RAW_METRICS))) + 0.5
    low, high = shape * 5, shape * 500
    # response time is a time, not a count: it does not scale with load
    rt = RAW_METRICS.index("ResponseTime1")
    low[..., rt] = high[..., rt] = 4.0
    np.testing.assert_allclose(derive(low), derive(high), rtol=1e-5)


def test_refused_log_counts_the_failures_that_did_not_time_out() -> None:
    raw = np.zeros((1, 3, len(RAW_METRICS)))
    col = {m: i for i, m in enumerate(RAW_METRICS)}
    raw[..., col["OutgoingCall"]] = 20.0
    raw[0, :, col["FailedCall"]] = (10.0, 10.0, 4.0)
    raw[0, :, col["FailedMaxUDPRetrans"]] = (10.0, 3.0, 4.0)
    raw[0, :, col["FailedTimeoutOnRecv"]] = (0.0, 2.0, 3.0)    # counters that disagree: never below 0
    got = derive(raw, ("refused_log", "failed_log"))[0]
    np.testing.assert_allclose(got[:, 0], np.log1p(np.array([0.0, 5.0, 0.0]) / 20 / 0.05), rtol=1e-6)
    np.testing.assert_allclose(got[:2, 1], np.log1p(10.0 / 20 / 0.05), rtol=1e-6)
    assert required_metrics(("refused_log",)) == ("OutgoingCall", "FailedCall", "FailedMaxUDPRetrans",
                                                  "FailedTimeoutOnRecv")


def test_required_metrics_follow_features() -> None:
    assert required_metrics(("log_response_ms",)) == ("ResponseTime1",)
    with pytest.raises(ValueError, match="unknown feature"):
        required_metrics(("nope",))
