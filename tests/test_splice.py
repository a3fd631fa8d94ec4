"""Back-to-back splices of one recording (netsiam.trainer.splice): what bench.realtraffic --splice trains on."""

from __future__ import annotations

import numpy as np
import pytest

from netsiam.traceio import LabelInterval
from netsiam.trainer.splice import LEAD_S, TAIL_S, spliced

T0 = 1_800_000_000.0


def recording(episodes: list[tuple[int, int, str]], seconds: int = 600) -> tuple[list[dict], list[LabelInterval]]:
    recs = [{"source": "s", "ts": T0 + k, "metrics": {"OutgoingCall": 20.0, "CurrentCall": 100.0 + k}}
            for k in range(seconds)]
    return recs, [LabelInterval("s", T0 + a, T0 + b, lab) for a, b, lab in episodes]


def test_each_ordered_pair_of_classes_follows_within_the_gap() -> None:
    recs, labels = recording([(100, 160, "blocked"), (300, 340, "capacity_limit")])
    out, lab = spliced(recs, labels, np.random.default_rng(0), gap_s=(2.0, 10.0))
    assert sorted({r["source"] for r in out}) == ["s~0to1", "s~1to0"]
    for name, (first, second) in (("s~0to1", ("blocked", "capacity_limit")), ("s~1to0", ("capacity_limit", "blocked"))):
        rs = [r for r in out if r["source"] == name]
        ts = np.array([r["ts"] for r in rs])
        np.testing.assert_allclose(np.diff(ts), 1.0)                    # one record a second, no hole at the cut
        a, b = (iv for iv in lab if iv.source == name)
        assert (a.label, b.label) == (first, second)
        assert 2.0 <= b.start - a.end <= 11.0                             # the gap, plus one interval
        assert ts[0] == pytest.approx(a.start - LEAD_S) and ts[-1] == pytest.approx(b.end + TAIL_S - 1)
        assert b.end - b.start == pytest.approx(next(iv for iv in labels if iv.label == second).end
                                                - next(iv for iv in labels if iv.label == second).start)
        # the gauge goes on from where the first part left it, then back to the second part's own values
        cut = int(np.flatnonzero(ts >= b.start)[0])
        cur = [r["metrics"]["CurrentCall"] for r in rs]
        assert cur[cut] == pytest.approx(cur[cut - 1])
        shift = b.start - next(iv for iv in labels if iv.label == second).start
        assert cur[-1] == pytest.approx(100.0 + (ts[-1] - shift - T0), abs=0.5)


def test_a_third_episode_within_the_kept_time_or_an_excluded_label_skips_the_pair() -> None:
    recs, labels = recording([(100, 160, "blocked"), (180, 200, "degraded"), (300, 340, "capacity_limit")])
    out, lab = spliced(recs, labels, np.random.default_rng(0), exclude=("degraded",))
    # blocked -> capacity keeps 65..170 s at most: degraded (180 s) lies outside; capacity -> blocked keeps
    # blocked's 40 s of aftermath, 160..200 s, which hold it: skipped; degraded itself never pairs
    assert {r["source"] for r in out} == {"s~0to2"} and {iv.label for iv in lab} == {"blocked", "capacity_limit"}
    recs, labels = recording([(100, 160, "blocked"), (165, 170, "degraded"), (300, 340, "capacity_limit")])
    out, lab = spliced(recs, labels, np.random.default_rng(0), gap_s=(8.0, 9.0), exclude=("degraded",))
    assert out == [] and lab == []                                        # degraded lies in blocked's gap either way


def test_no_gauge_is_made_up_where_the_recording_has_none() -> None:
    recs, labels = recording([(100, 160, "blocked"), (300, 340, "capacity_limit")])
    for r in recs:
        del r["metrics"]["CurrentCall"]
    out, _ = spliced(recs, labels, np.random.default_rng(0))
    assert out and all("CurrentCall" not in r["metrics"] for r in out)


def test_overlay_lays_the_first_faults_aftermath_under_the_second() -> None:
    recs, labels = recording([(100, 160, "blocked"), (300, 340, "capacity_limit")])
    for r in recs:
        k = r["ts"] - T0
        r["metrics"] |= {"FailedCall": 1.0 + (5.0 if 160 <= k < 180 else 0.0), "ResponseTime1": 400.0 if k < 180 else 4.0}
    plain, lab = spliced(recs, labels, np.random.default_rng(0), gap_s=(3.0, 3.0))
    over, lab2 = spliced(recs, labels, np.random.default_rng(0), gap_s=(3.0, 3.0), overlay=True)
    assert lab == lab2
    cut = next(iv for iv in lab if iv.source == "s~0to1" and iv.label == "capacity_limit").start
    fail = {r["ts"] - cut: r["metrics"]["FailedCall"] for r in over if r["source"] == "s~0to1" and r["ts"] >= cut}
    resp = {r["ts"] - cut: r["metrics"]["ResponseTime1"] for r in over if r["source"] == "s~0to1" and r["ts"] >= cut}
    # the blocked fault ended at 160 s, cut 3 s on: 17 more seconds of its 5 extra failures, then its own level
    assert [fail[k] for k in (0.0, 16.0, 17.0, 40.0)] == [6.0, 6.0, 1.0, 1.0]
    assert resp[0.0] == 400.0 and resp[17.0] == 4.0
    assert all(r["metrics"]["FailedCall"] == 1.0 for r in plain if r["source"] == "s~0to1" and r["ts"] >= cut)
