"""Soak (issue 8): the 2-minute version of ``make soak``, and the flatness criterion on synthetic series.

The slow test runs :func:`bench.soak.run.soak` (embedded broker, a real ``netsiam detect`` with the shipped
model, half the daemon's measured maximum load, looped simulated trace with faults) for 2 minutes and
asserts what ``make soak`` asserts over 20: nothing lost, RSS, latency and the daemon's CPU per record flat by
:func:`bench.soak.criteria.assess`.
The fast tests prove that criterion fails on a leak and on rising latency, so "flat" means something.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # bench/ is a top-level folder of the repository, not an installed package
    sys.path.insert(0, str(REPO))

from bench.soak.criteria import RSS_ABS_MIB, assess, fit_slope, pooled_slope  # noqa: E402
from bench.soak.run import soak, summary  # noqa: E402

EVENTS_PER_S = 80        # fault events per second at half load (~70-80 measured)
RECORDS_PER_S = 12_000   # half the daemon's measured maximum on the 2-core machine


def series(minutes: float, *, rss_per_s: float = 0.0, lat_per_s: float = 0.0, seed: int = 0,
           rss_noise: float = 4.0) -> tuple[list[tuple[float, float]], list[tuple[float, float]], float]:
    """1-s RSS samples (MiB) and per-event latencies (ms) as a healthy soak gives them (RSS ~650 MiB with
    a few MiB of jitter, latency log-normal around 200 ms with a long tail), plus linear trends."""
    rng = np.random.default_rng(seed)
    dur = minutes * 60.0
    t = np.arange(0.0, dur, 1.0)
    rss = 650.0 + rng.normal(0.0, rss_noise, len(t)) + rss_per_s * t
    ev = np.sort(rng.uniform(0.0, dur, int(EVENTS_PER_S * dur)))
    lat = rng.lognormal(np.log(200.0), 0.6, len(ev)) + lat_per_s * ev
    return list(zip(t.tolist(), rss.tolist(), strict=True)), list(zip(ev.tolist(), lat.tolist(), strict=True)), dur


def test_slopes() -> None:
    t = np.arange(100.0)
    assert fit_slope(t, 3.0 + 0.5 * t) == pytest.approx(0.5)
    assert fit_slope([1.0], [2.0]) == 0.0
    # two stretches at different levels, each rising 0.1/s: the step between them does not count
    seg = (t >= 50).astype(int)
    y = 0.1 * t + 40.0 * seg
    assert pooled_slope(t, y, seg) == pytest.approx(0.1)
    assert fit_slope(t, y) > 0.5


@pytest.mark.parametrize("minutes", [2, 20])
def test_flat_series_pass(minutes: float) -> None:
    for seed in range(5):
        rss, lat, dur = series(minutes, seed=seed)
        res = assess(rss, lat, dur)
        assert res["flat"] is True, res["reasons"]
        assert abs(res["rss_growth_mib"]) < RSS_ABS_MIB


def test_gross_leak_fails_in_two_minutes() -> None:
    """100 bytes kept per record at 12k records/s (1.1 MiB/s): the 2-minute test catches it."""
    rss, lat, dur = series(2, rss_per_s=100 * RECORDS_PER_S / 2**20)
    res = assess(rss, lat, dur)
    assert res["rss_flat"] is False and res["flat"] is False
    assert "RSS grows" in res["reasons"][0]


def test_slow_leak_fails_in_twenty_minutes() -> None:
    """1 KiB kept per fault event (~80/s: 0.08 MiB/s, ~280 MiB/h) rises ~75 MiB over the judged 16
    minutes, far past max(3 % of 650, 16) = 19.5 MiB. The 2-minute run cannot see it (~7.5 MiB over its
    96 s, within the bound): that is what the 20-minute ``make soak`` is for."""
    per_s = EVENTS_PER_S * 1024 / 2**20
    res20 = assess(*series(20, rss_per_s=per_s))
    assert res20["rss_flat"] is False
    assert res20["rss_slope_mib_per_h"] == pytest.approx(per_s * 3600, rel=0.05)
    assert assess(*series(2, rss_per_s=per_s))["rss_flat"] is True  # the short run's blind spot, on record


def test_rising_latency_fails() -> None:
    """Latency that climbs by 5 ms per second (a backlog building up) fails; so does one bad tail."""
    res = assess(*series(2, lat_per_s=5.0))
    assert res["latency_flat"] is False and res["flat"] is False
    assert any("latency p50" in r for r in res["reasons"])
    rss, lat, dur = series(2)
    tail = [(t, ms * (10.0 if t > 0.9 * dur and i % 10 == 0 else 1.0)) for i, (t, ms) in enumerate(lat)]
    res = assess(rss, tail, dur)
    assert res["latency_flat"] is False and any("latency p99" in r for r in res["reasons"])


def test_unmatched_events_fail() -> None:
    rss, lat, dur = series(2)
    assert assess(rss, lat, dur, unmatched=len(lat) // 10)["latency_flat"] is False


def test_busy_machine_is_not_judged() -> None:
    """Other processes using a core throughout: neither verdict is given (None), not a pass."""
    rss, lat, dur = series(2, lat_per_s=5.0)
    busy = [(float(t), 1.0) for t in range(int(dur))]
    res = assess(rss, lat, dur, foreign=busy)
    assert res["rss_flat"] is None and res["latency_flat"] is None and res["flat"] is None
    assert res["busy_share"] == 1.0


def test_busy_spell_step_is_not_a_leak_but_a_leak_still_fails() -> None:
    """A backlog while another process hogged the CPU raises RSS in a step (fetch buffers, high-water);
    the slope is fitted within the quiet stretches, so the step does not count, but a rise does."""
    rss, lat, dur = series(2)
    spell = [(float(t), 1.0 if 60 <= t < 70 else 0.0) for t in range(int(dur))]
    stepped = [(t, m + (25.0 if t >= 62 else 0.0)) for t, m in rss]
    res = assess(stepped, lat, dur, foreign=spell)
    assert res["flat"] is True, res["reasons"]
    assert assess(stepped, lat, dur)["rss_flat"] is False  # without knowing about the busy spell: a jump
    leak, _, _ = series(2, rss_per_s=1.1)
    assert assess(leak, lat, dur, foreign=spell)["rss_flat"] is False


def test_a_feed_behind_its_schedule_leaves_latency_unjudged_but_a_costlier_record_still_fails() -> None:
    """Latency rising while the soak's own feed falls behind (the machine saturated by broker, daemon and
    feed, as measured: feed 0.05 -> 4.9 s behind, p99 234 -> 809 ms) is the machine, not the daemon: not
    judged. The daemon's CPU per record is judged whatever the feed does."""
    rss, lat, dur = series(2, lat_per_s=5.0)
    late = [(t, 0.1 if t < 80 else 2.0) for t in np.arange(5.0, dur + 1, 5.0)]
    res = assess(rss, lat, dur, feed_behind=late, cpu_us_per_record=(128.0, 120.0))
    assert res["latency_flat"] is None and res["cpu_flat"] is True and res["flat"] is None
    assert res["saturated_share"] > 0.3 and any("saturated" in r for r in res["reasons"])
    assert assess(rss, lat, dur, cpu_us_per_record=(128.0, 120.0))["latency_flat"] is False  # else: judged
    res = assess(rss, lat, dur, feed_behind=late, cpu_us_per_record=(128.0, 180.0))
    assert res["cpu_flat"] is False and res["flat"] is False
    assert any("CPU per record 128 -> 180" in r for r in res["reasons"])
    ok_rss, ok_lat, _ = series(2)
    short = [(t, 0.1 if t < 80 else 2.0) for t in np.arange(5.0, 80.0, 5.0)]  # on schedule: all judged
    assert assess(ok_rss, ok_lat, dur, feed_behind=short, cpu_us_per_record=(128.0, 120.0))["flat"] is True


@pytest.mark.slow
@pytest.mark.serial  # beside another test worker it would find the machine busy and skip its verdict
def test_soak_two_minutes(tmp_path: Path) -> None:
    """``make soak`` in 2 minutes: half the measured max load, nothing lost, RSS and latency flat."""
    res = soak(2.0, log=lambda s: print(s, flush=True))
    (tmp_path / "soak.json").write_text(json.dumps(summary(res), indent=1))
    brief = json.dumps(summary(res))
    assert res["nothing_lost"], f"{res['reasons']}\n{brief}\n{res.get('_daemon_log_tail', '')}"
    assert res["offered_records_per_s"] > 0 and res["events_matched"] > 0, brief
    assert res["rss_flat"] is not False, f"{res['reasons']}\n{brief}"
    assert res["latency_flat"] is not False, f"{res['reasons']}\n{brief}"
    assert res["cpu_flat"] is not False, f"{res['reasons']}\n{brief}"
    if res["flat"] is None:
        pytest.skip(f"not judged: other processes kept the machine busy in {res['busy_share']:.0%} of the judged "
                    f"run ({res['foreign_cpu_cores_mean']} cores), the soak's own feed fell behind in "
                    f"{res['saturated_share']:.0%}: {'; '.join(res['reasons'])}")
    assert res["flat"] is True and res["ok"], brief
