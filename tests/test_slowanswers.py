"""Answers slower than the source's own (netsiam.slowanswers): which windows it calls unknown, and which not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import MeanEncoder, manifest, prototypes_at, small_artifact

from netsiam.config import DebounceConfig
from netsiam.errors import NetsiamError
from netsiam.features import RAW_METRICS
from netsiam.givens import slow_run_stride
from netsiam.slowanswers import (
    TAIL,
    answer_times,
    factor_for,
    flag_slow,
    slow_seconds,
    source_levels,
    taught_factor,
)

RT = RAW_METRICS.index("ResponseTime1")
T = 30
ON = 3.0   # the default is 2


def windows(rt_ms: list[float], **other: list[float]) -> np.ndarray:
    """Per-second answer times (and other metrics, by name) -> the sliding windows (N, T, R) a source's records
    make, one per second; 100 calls offered a second."""
    series = np.zeros((len(rt_ms), len(RAW_METRICS)))
    series[:, RAW_METRICS.index("OutgoingCall")] = 100.0
    series[:, RT] = rt_ms
    for name, values in other.items():
        series[:, RAW_METRICS.index(name)] = values
    return np.stack([series[i:i + T] for i in range(len(rt_ms) - T + 1)])


def flagged(rt_ms: list[float], names: list[str] | None = None, factor: float = ON,
            **other: list[float]) -> np.ndarray:
    raw = windows(rt_ms, **other)
    cls = np.array(names if names is not None else ["normal"] * len(raw), dtype=object)
    sources = np.array(["a"] * len(raw), dtype=object)
    return flag_slow(source_levels(sources), cls, raw, factor, np.arange(len(raw), dtype=float)) == "unknown"


def test_answer_times_take_the_median_of_the_clean_seconds_of_the_tail() -> None:
    rt = np.zeros((3, 8))
    rt[0, -TAIL:] = [4.0, 0.0, 9.0, 900.0, 5.0]      # unanswered and resent seconds are left out
    rt[1, -TAIL:] = [4.0, 9.0, 900.0, 900.0, 0.0]
    rt[2, :-TAIL] = 5.0                              # before the tail: not read
    raw = np.zeros((3, 8, len(RAW_METRICS)))
    raw[..., RAW_METRICS.index("OutgoingCall")] = 20.0
    raw[..., RT] = rt
    raw[0, -3, RAW_METRICS.index("Retransmissions")] = 1.0         # 9 ms: an INVITE answered on its resend
    tail, last = answer_times(raw)
    assert tail[0] == pytest.approx(math.log1p(5)) and last[0] == pytest.approx(math.log1p(5))   # of 4, 900, 5
    assert tail[1] == pytest.approx((math.log1p(9) + math.log1p(900)) / 2) and math.isnan(last[1])
    assert math.isnan(tail[2]) and math.isnan(last[2])
    raw[0, -1, RAW_METRICS.index("FailedCall")] = 2.0              # a tenth of the calls failed: not clean
    assert math.isnan(answer_times(raw)[1][0])


def test_a_far_end_slower_than_its_own_usual_is_unknown_until_it_recovers() -> None:
    rt = [5.0] * 120 + [65.0] * 90 + [5.0] * 60    # 13 times slower for 90 s
    f = flagged(rt)
    end = np.arange(len(f)) + T - 1                # each window's last second
    slow = (end >= 120) & (end < 210)
    assert not f[~slow & (end < 120)].any() and not f[end >= 210 + TAIL].any()
    # flagged from the third slow second (3 of the last 5 slow: their median) to the episode's end
    assert not f[slow & (end < 122)].any() and f[slow & (end >= 122)].all()


def test_a_source_slow_by_nature_is_not_flagged_but_one_slowing_down_is() -> None:
    assert not flagged([60.0] * 200).any()
    assert flagged([5.0] * 100 + [60.0] * 100).sum() >= 95


def test_slower_by_less_than_the_factor_is_not_flagged() -> None:
    assert not flagged([5.0] * 100 + [12.0] * 100).any()   # log1p: 2.6 times slower
    assert flagged([5.0] * 100 + [12.0] * 100, factor=2.0).any()


def test_a_freeze_answers_nothing_and_leaves_the_level_where_it_was() -> None:
    # nothing answered for 5 minutes, then the far end answers as before: no second is slow
    assert not flagged([5.0] * 100 + [0.0] * 300 + [5.0] * 100).any()


def test_seconds_of_refused_or_resent_calls_teach_nothing() -> None:
    # a capacity limit refuses a third of the calls fast (answers in 0.5 ms) for 5 minutes; a lossy path
    # resends INVITEs (answers 0.5 s late): the level stays at 5 ms, so what follows is not slow, and the
    # seconds of resent calls are not slow either
    rt = [5.0] * 100 + [0.5] * 300 + [5.0] * 100 + [500.0] * 100 + [5.0] * 60
    failed = [0.0] * 100 + [33.0] * 300 + [0.0] * 260
    resent = [0.0] * 500 + [3.0] * 100 + [0.0] * 60
    assert not flagged(rt, FailedCall=failed, Retransmissions=resent).any()
    # the same seconds clean teach it the fast level, so the answers after the limit read 3x slower
    assert flagged(rt).any()


def test_only_normal_windows_are_flagged_and_off_changes_nothing() -> None:
    rt = [5.0] * 100 + [65.0] * 100
    assert not flagged(rt, ["capacity_limit"] * (len(rt) - T + 1)).any()
    raw = windows(rt)
    cls = np.array(["normal"] * len(raw))
    slow = np.ones(len(raw), dtype=bool)
    assert flag_slow(source_levels(np.array(["a"] * len(raw))), cls, raw, 0.0, slow=slow) is cls
    assert not slow.any()


def test_the_debounce_s_slow_mask_marks_every_unknown_window_answered_slowly() -> None:
    """Whoever read it unknown (the level, or the encoder at a fault's onset), a window answered beyond the
    bound is slow for the debounce; a named window never is, and its class stays."""
    rt = [5.0] * 100 + [65.0] * 100
    raw = windows(rt)
    end = np.arange(len(raw)) + T - 1
    cls = np.where(end % 3 == 0, "unknown", np.where(end % 3 == 1, "normal", "blocked")).astype(object)
    slow = np.zeros(len(raw), dtype=np.int32)
    out = flag_slow(source_levels(np.array(["a"] * len(raw))), cls, raw, ON, end.astype(float), slow=slow)
    late = end >= 102                                  # the third slow second on
    assert (out[cls == "blocked"] == "blocked").all() and not slow[cls == "blocked"].any()
    assert (slow[late & (cls != "blocked")] > 0).all() and (out[late & (cls != "blocked")] == "unknown").all()
    assert not slow[~late].any() and (out[~late] == cls[~late]).all()
    # each carries its slow seconds in a row: 3 at the third slow second, one more a second, the window's T at most
    assert (slow[late & (cls != "blocked")] == np.minimum(end - 99, T)[late & (cls != "blocked")]).all()
    strided = np.zeros(len(raw), dtype=np.int32)   # in windows of 2 s: half as many
    flag_slow(source_levels(np.array(["a"] * len(raw))), cls, raw, ON, end.astype(float), slow=strided, stride=2)
    assert (strided == np.where(slow > 0, np.maximum(slow // 2, 1), 0)).all()


def test_slow_seconds_counts_the_clean_slow_seconds_in_a_row_at_the_window_s_end() -> None:
    raw = windows([5.0] * 25 + [65.0, 5.0, 65.0, 65.0, 65.0])[0]
    lo = math.log1p(5.0)
    assert slow_seconds(raw, lo, math.log(ON)) == 3                  # a fast second breaks the run
    raw[-2, RAW_METRICS.index("Retransmissions")] = 1.0               # a resent INVITE: not clean
    assert slow_seconds(raw, lo, math.log(ON)) == 1
    assert slow_seconds(raw, lo, math.log(20.0)) == 0                 # 13 times slower is not 20 times
    assert slow_seconds(windows([65.0] * 30)[0], lo, math.log(ON)) == T


def test_each_source_keeps_its_own_level() -> None:
    fast, slow = windows([5.0] * 100), windows([65.0] * 100)
    raw = np.concatenate([fast, slow])
    sources = np.array(["fast"] * len(fast) + ["slow"] * len(slow), dtype=object)
    end = np.concatenate([np.arange(len(fast)), np.arange(len(slow))]).astype(float)   # interleaved in time
    cls = np.array(["normal"] * len(raw), dtype=object)
    assert not (flag_slow(source_levels(sources), cls, raw, ON, end) == "unknown").any()


def test_the_factor_is_off_or_above_one() -> None:
    with pytest.raises(NetsiamError, match="slow_answer_factor"):
        DebounceConfig(slow_answer_factor=0.5)


def test_the_factor_in_force_is_the_config_s_raised_to_what_feedback_taught() -> None:
    cfg = DebounceConfig()
    assert factor_for(cfg, None) == factor_for(cfg, {}) == 2.0
    assert factor_for(cfg, {"slow_answers": {"normal_up_to": 16.5}}) == 16.5
    assert factor_for(cfg, {"slow_answers": {"normal_up_to": 1.5}}) == 2.0
    assert factor_for(DebounceConfig(slow_answer_factor=0), {"slow_answers": {"normal_up_to": 16.5}}) == 0.0


def test_a_false_alarm_taught_normal_lets_the_same_slowdown_pass() -> None:
    rt = [5.0] * 100 + [65.0] * 90 + [5.0] * 60
    raw = windows(rt)
    cls = np.array(["normal"] * len(raw), dtype=object)
    excess = np.full(len(raw), np.nan)
    first = flag_slow(source_levels(np.array(["a"] * len(raw))), cls, raw, ON, None, excess)
    assert (first == "unknown").any()
    taught = taught_factor(excess, ON)
    assert taught is not None and taught > (1 + 65) / (1 + 5)      # log1p: 11 times slower
    assert not (flag_slow(source_levels(np.array(["a"] * len(raw))), cls, raw, taught) == "unknown").any()
    assert taught_factor(excess, taught) is None                     # nothing left to teach
    assert taught_factor(np.full(3, np.nan), ON) is None


def test_a_model_taught_a_class_counts_each_slow_window_once() -> None:
    """The seconds count only while the model holds no class added after training (``slow_run_stride``)."""
    points = {"normal": (0.1, 0.1, 0.1), "blocked": (0.9, 0.1, 0.1)}
    trained = small_artifact(MeanEncoder(), prototypes_at(points), manifest(stride=2, classes=list(points)))
    assert slow_run_stride(trained) == 2
    taught = small_artifact(MeanEncoder(), prototypes_at({**points, "degraded": (0.1, 0.9, 0.1)}),
                            manifest(stride=2, classes=list(points)))
    assert slow_run_stride(taught) is None
    rt = [5.0] * 100 + [65.0] * 100
    raw = windows(rt)
    cls = np.array(["normal"] * len(raw), dtype=object)
    slow = np.zeros(len(raw), dtype=np.int32)
    flag_slow(source_levels(np.array(["a"] * len(raw))), cls, raw, ON, slow=slow, stride=slow_run_stride(taught))
    assert set(slow.tolist()) == {0, 1}
