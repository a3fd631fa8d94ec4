"""Is a soak flat? RSS and record->event latency judged on the quiet part of a run.

:func:`assess` skips the first ``WARMUP_FRACTION`` of the run (buffers and allocator arenas reach
their working size) and every bin in which other processes on the shared machine used more than
``FOREIGN_MAX_CORES`` (and the bin after it, while the backlog drains): that is the neighbour, not
the daemon. Where fewer than ``MIN_QUIET`` of the compared bins are quiet the verdict is None ("not
judged", never a pass). RSS: the least-squares slope through the quiet samples, one level per quiet
stretch, may rise by at most max(``RSS_REL`` x mean, ``RSS_ABS_MIB``) over the judged span. Latency:
p50 and p99 of the last third against the first third (factors + ``LAT_ABS_MS``), leaving out bins
where the soak's own feed ran more than ``FEED_MAX_BEHIND_S`` behind its schedule too: the machine is
then saturated by the soak itself (the embedded broker's cost grows with its log) and latency measures
the machine. The daemon's CPU per record, which saturation does not inflate, is judged instead, always:
the last third may cost at most ``CPU_FACTOR`` x the first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["CPU_FACTOR", "FEED_MAX_BEHIND_S", "FOREIGN_MAX_CORES", "RSS_ABS_MIB", "WARMUP_FRACTION", "assess",
           "busy_bins", "criteria", "fit_slope", "percentile", "pooled_slope", "saturated_bins"]

WARMUP_FRACTION = 0.2
# The daemon's RSS (~650 MiB, mostly TensorFlow and the model) jitters by +-5 MiB and steps by 5-10 MiB
# now and then (a larger batch, a burst of fetched records): a tighter bound fails a 2-minute run on
# one step. A 100 B/record leak still fails the 2-minute test five-fold; 1 KiB per event fails 20 min.
RSS_REL = 0.03
RSS_ABS_MIB = 16.0
# At half the maximum load a per-record cost that grows shows up in latency roughly in proportion;
# p99 rests on a few dozen events, hence the wider factor; 50 ms absorbs scheduler noise.
LAT_P50_FACTOR = 1.5
LAT_P99_FACTOR = 2.0
LAT_ABS_MS = 50.0
MIN_EVENTS = 30
MAX_UNMATCHED = 0.01
FOREIGN_MAX_CORES = 0.25       # a bin where other processes used more CPU than this is "busy"
MIN_QUIET = 0.5                # judge only when at least this share of the bins compared is quiet
FEED_MAX_BEHIND_S = 0.5        # a bin where the feed fell further behind is "saturated" (latency not judged)
# Measured first -> last third: 138 -> 127, 128 -> 120 us (2 min), 60.3 -> 58.7 us (20 min): a cost per
# record that grows by a third is not noise.
CPU_FACTOR = 1.3


def fit_slope(t: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Least-squares slope of ``y`` over ``t`` (units of y per unit of t); 0 for fewer than 2 points."""
    ta, ya = np.asarray(t, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(ta) < 2 or float(np.ptp(ta)) == 0.0:
        return 0.0
    tc = ta - ta.mean()
    return float((tc * (ya - ya.mean())).sum() / (tc * tc).sum())


def pooled_slope(t: np.ndarray, y: np.ndarray, segment: np.ndarray) -> float:
    """Least-squares slope common to all segments, each with its own level (intercept): steps between
    segments do not count, a rise within them does. One segment: the ordinary least-squares slope."""
    tc, yc = np.array(t, dtype=np.float64), np.array(y, dtype=np.float64)
    for g in np.unique(segment):
        m = segment == g
        tc[m] -= tc[m].mean()
        yc[m] -= yc[m].mean()
    den = float((tc * tc).sum())
    return float((tc * yc).sum() / den) if den > 0 else 0.0


def percentile(x: np.ndarray, q: float) -> float | None:
    """``q``-th percentile rounded to 0.1, None for no values."""
    return round(float(np.percentile(x, q)), 1) if len(x) else None


def busy_bins(foreign: Sequence[tuple[float, float]], bin_s: float) -> set[int]:
    """Bins (``int(t // bin_s)``) in which processes outside the soak used more than ``FOREIGN_MAX_CORES``
    on average, each with the bin after it (a backlog built while starved takes a while to drain)."""
    per: dict[int, list[float]] = {}
    for t, cores in foreign:
        per.setdefault(int(t // bin_s), []).append(cores)
    busy = {b for b, v in per.items() if float(np.mean(v)) > FOREIGN_MAX_CORES}
    return busy | {b + 1 for b in busy}


def saturated_bins(feed_behind: Sequence[tuple[float, float]], bin_s: float) -> set[int]:
    """Bins in which the feed fell more than ``FEED_MAX_BEHIND_S`` behind its schedule, each with the bin
    after it. ``feed_behind``: (seconds at the end of a sample, the most it was behind since the last)."""
    late = {int(max(0.0, t - 0.5 * bin_s) // bin_s) for t, behind in feed_behind if behind > FEED_MAX_BEHIND_S}
    return late | {b + 1 for b in late}


def assess(rss: Sequence[tuple[float, float]], latencies: Sequence[tuple[float, float]], duration_s: float,
           *, foreign: Sequence[tuple[float, float]] = (), bin_s: float | None = None,
           unmatched: int = 0, feed_behind: Sequence[tuple[float, float]] = (),
           cpu_us_per_record: tuple[float | None, float | None] = (None, None)) -> dict[str, Any]:
    """Are RSS, latency and the daemon's CPU per record flat? ``rss``: (seconds since the start, MiB);
    ``latencies``: (event time in seconds since the start, record->event ms); ``foreign``: (seconds, CPU
    cores used by processes outside the soak); ``duration_s``: the length of the loaded run (later
    points are ignored); ``unmatched``: events whose triggering record was not found; ``feed_behind``:
    see :func:`saturated_bins`; ``cpu_us_per_record``: the daemon's, first and last third.

    Returns the figures and ``rss_flat``, ``latency_flat``, ``flat``: True, False, or None where the
    machine was too busy to judge, with ``reasons`` for each non-True.
    """
    warm = WARMUP_FRACTION * duration_s
    third = (duration_s - warm) / 3.0
    bin_s = bin_s or (10.0 if duration_s >= 600 else 5.0)
    busy = busy_bins(foreign, bin_s)
    unjudged = busy | saturated_bins(feed_behind, bin_s)   # for latency

    def quiet(t: np.ndarray, skip: set[int] = busy) -> np.ndarray:
        return ~np.isin(np.floor(t / bin_s).astype(np.int64), list(skip))

    def quiet_share(a: float, b: float, skip: set[int] = busy) -> float:
        mids = np.arange(math.floor(a / bin_s), math.ceil(b / bin_s)) * bin_s + bin_s / 2
        mids = mids[(mids >= a) & (mids < b)]
        return float(quiet(mids, skip).mean()) if len(mids) else 1.0

    fc = np.asarray([c for t, c in foreign if warm <= t <= duration_s], dtype=np.float64)
    out: dict[str, Any] = {"warmup_s": round(warm, 1), "bin_s": bin_s,
                           "foreign_cpu_cores_mean": round(float(fc.mean()), 2) if len(fc) else None,
                           "busy_share": round(1.0 - quiet_share(warm, duration_s), 2),
                           "saturated_share": round(1.0 - quiet_share(warm, duration_s, unjudged - busy), 2)}
    reasons: list[str] = []

    # -- RSS: least squares over the quiet 1-s samples after the warm-up, one level per quiet stretch
    r = np.asarray([p for p in rss if warm <= p[0] <= duration_s], dtype=np.float64).reshape(-1, 2)
    q = quiet(r[:, 0])
    rq = r[q]
    stretch = np.cumsum(~q)[q]  # samples between the same two busy spells share a stretch
    if len(r) < 3:
        out["rss_flat"] = False
        reasons.append(f"only {len(r)} RSS samples after the warm-up")
    elif len(rq) < MIN_QUIET * len(r) or len(rq) < 3:
        out["rss_flat"] = None
        reasons.append(f"RSS not judged: the machine was busy in {1 - len(rq) / len(r):.0%} of the run")
    if len(rq) >= 3:
        slope = pooled_slope(rq[:, 0], rq[:, 1], stretch)  # MiB/s
        span = float(rq[-1, 0] - rq[0, 0])
        mean = float(rq[:, 1].mean())
        growth, limit = slope * span, max(RSS_REL * mean, RSS_ABS_MIB)
        first = rq[rq[:, 0] < warm + third, 1]
        last = rq[rq[:, 0] >= duration_s - third, 1]
        out.update({
            "rss_mib_mean": round(mean, 1), "rss_mib_min": round(float(r[:, 1].min()), 1),
            "rss_mib_max": round(float(r[:, 1].max()), 1),
            "rss_mib_first_third": round(float(first.mean()), 1) if len(first) else None,
            "rss_mib_last_third": round(float(last.mean()), 1) if len(last) else None,
            "rss_slope_mib_per_h": round(slope * 3600.0, 2), "rss_growth_mib": round(growth, 2),
            "rss_slope_all_mib_per_h": round(fit_slope(r[:, 0], r[:, 1]) * 3600.0, 2),
            "rss_quiet_stretches": len(np.unique(stretch)),
            "rss_limit_mib": round(limit, 1), "rss_fit_span_s": round(span, 1)})
        if "rss_flat" not in out:
            out["rss_flat"] = bool(growth <= limit)
            if growth > limit:
                reasons.append(f"RSS grows {growth:.1f} MiB over {span:.0f} s ({slope * 3600:.0f} MiB/h)"
                               f" > {limit:.1f} MiB")

    # -- latency: quiet events of the first vs the last third after the warm-up
    lat = np.asarray([p for p in latencies if warm <= p[0] <= duration_s], dtype=np.float64).reshape(-1, 2)
    lq = lat[quiet(lat[:, 0], unjudged)]
    first = lq[lq[:, 0] < warm + third, 1]
    last = lq[lq[:, 0] >= duration_s - third, 1]
    p50f, p50l, p99f, p99l = percentile(first, 50), percentile(last, 50), percentile(first, 99), percentile(last, 99)
    bins: list[tuple[float, float, float]] = []  # per-bin percentiles for the slopes (>= 10 events)
    if len(lq):
        idx = np.floor(lq[:, 0] / bin_s).astype(np.int64)
        for b in np.unique(idx):
            v = lq[idx == b, 1]
            if len(v) >= 10:
                bins.append(((b + 0.5) * bin_s, float(np.percentile(v, 50)), float(np.percentile(v, 99))))
    bt = [b[0] for b in bins]
    total = len(latencies) + unmatched
    out.update({
        "latency_events": len(lat), "latency_events_quiet": len(lq), "latency_unmatched": unmatched,
        "latency_p50_ms": percentile(lat[:, 1], 50), "latency_p99_ms": percentile(lat[:, 1], 99),
        "latency_p50_ms_first_third": p50f, "latency_p50_ms_last_third": p50l,
        "latency_p99_ms_first_third": p99f, "latency_p99_ms_last_third": p99l,
        "latency_p50_slope_ms_per_h": round(fit_slope(bt, [b[1] for b in bins]) * 3600.0, 1),
        "latency_p99_slope_ms_per_h": round(fit_slope(bt, [b[2] for b in bins]) * 3600.0, 1),
    })
    ok: bool | None = True
    if total and unmatched > MAX_UNMATCHED * total:
        ok = False
        reasons.append(f"{unmatched}/{total} events not matched to their record")
    shares = (quiet_share(warm, warm + third, unjudged), quiet_share(duration_s - third, duration_s, unjudged))
    if min(shares) < MIN_QUIET:
        ok = None if ok else ok
        reasons.append(f"latency not judged: the machine was busy or saturated (the feed > {FEED_MAX_BEHIND_S} s"
                       f" behind) in {1 - shares[0]:.0%} of the first third and {1 - shares[1]:.0%} of the last")
    elif len(first) < MIN_EVENTS or len(last) < MIN_EVENTS:
        ok = False
        reasons.append(f"too few events to judge latency ({len(first)} first third, {len(last)} last third)")
    else:
        assert p50f is not None and p50l is not None and p99f is not None and p99l is not None
        if p50l > LAT_P50_FACTOR * p50f + LAT_ABS_MS:
            ok = False
            reasons.append(f"latency p50 {p50f:.0f} -> {p50l:.0f} ms (> {LAT_P50_FACTOR}x + {LAT_ABS_MS:.0f} ms)")
        if p99l > LAT_P99_FACTOR * p99f + LAT_ABS_MS:
            ok = False
            reasons.append(f"latency p99 {p99f:.0f} -> {p99l:.0f} ms (> {LAT_P99_FACTOR}x + {LAT_ABS_MS:.0f} ms)")
    out["latency_flat"] = ok
    cpu: bool | None = None
    c0, c1 = cpu_us_per_record
    if c0 and c1 is not None:
        cpu = bool(c1 <= CPU_FACTOR * c0)
        if not cpu:
            reasons.append(f"daemon CPU per record {c0:.0f} -> {c1:.0f} us (> {CPU_FACTOR}x)")
    out["cpu_flat"] = cpu
    verdicts = (out["rss_flat"], ok) if cpu is None else (out["rss_flat"], ok, cpu)
    out["flat"] = False if False in verdicts else (None if None in verdicts else True)
    out["reasons"] = reasons
    return out


def criteria() -> dict[str, float]:
    return {"warmup_fraction": WARMUP_FRACTION, "rss_rel": RSS_REL, "rss_abs_mib": RSS_ABS_MIB,
            "lat_p50_factor": LAT_P50_FACTOR, "lat_p99_factor": LAT_P99_FACTOR, "lat_abs_ms": LAT_ABS_MS,
            "min_events": MIN_EVENTS, "max_unmatched": MAX_UNMATCHED, "foreign_max_cores": FOREIGN_MAX_CORES,
            "min_quiet": MIN_QUIET, "feed_max_behind_s": FEED_MAX_BEHIND_S, "cpu_factor": CPU_FACTOR}
