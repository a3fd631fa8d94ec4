"""Soak: the daemon under a steady half-max load for M minutes; are its memory and latency flat?

``python -m bench.soak --minutes M [--rate R] [--model DIR] [-o OUT.json]`` (``make soak``: 20 minutes,
written to ``bench/soak.json``). A 2-minute run with the same assertions is
``tests/test_reliability_soak.py``.

Set-up, as ``bench.e2e`` does it: the embedded broker (Tansu, :func:`start_broker`), fresh topics
(``PARTITIONS`` sample partitions), one real ``netsiam detect`` subprocess (:class:`bench.e2e.DaemonProc`,
the shipped model by default) in a new consumer group.

Load. Without ``--rate``, the daemon's maximum is measured first exactly as ``e2e_daemon_records_per_s``
(:func:`bench.e2e.daemon_rate` on a pre-filled topic, ``MAX_RECORDS`` records) by a *second*, short-lived
daemon: the soaked daemon must not have seen that burst, or its freed heap would absorb a slow leak
(RSS stays flat while a leak reuses the burst's pages). The offered load is half of that maximum.

Feed. A separate process (:func:`_feed`, like a real feed) sends a simulated trace with faults
(``SIM_SOURCES`` simulated sources x ``COPIES`` names = a fixed set of 200 sources, seed ``SEED``) at a
steady rate for exactly M minutes, keyed by source (partition as kafka-python's default partitioner
picks it). The trace is looped: loop ``k`` shifts every timestamp by ``k`` x its span (a multiple of the
window stride), so record time keeps advancing, each source's stream stays gap-free and every loop is
the same work: any growth is then a leak, not a change of workload. The feed compresses (gzip, batches
of <= ``LINGER_MS`` = 20 ms): the embedded broker keeps every record in memory (this Tansu build has no
retention and refuses DeleteRecords): ~690 B a record sent one by one uncompressed (~10 GB for 20 minutes
at 12k/s), ~70 B so; the broker's CPU per record drops from ~25 to ~7 us and the feed's by a third.
Latency is unaffected: it counts from the record's ack, which follows its append.
The process also reads the faults topic and measures record->event latency per event as ``bench.e2e``
does: the event message's timestamp (CreateTime, stamped by the daemon's producer as it sends) minus
the broker ack time of the record that completed the triggering window (same source,
``ts == window_end``).

Samples. Every second the daemon's VmRSS (``/proc/PID/status``), the broker's, and the CPU that
*other* processes used (:class:`ForeignCpu`: the machine's busy time minus the soak's processes; niced
processes count only if the soak runs niced, since they yield to it); every ``sample_s`` seconds (5, or 10 for
runs of 10 minutes or more) a scrape of the daemon's ``/metrics`` (records consumed, consumer lag),
its CPU time and the group's committed offsets. Latencies are binned by event time.

End. After the feed stops: wait until the group's committed offsets equal the partitions' end offsets
(taken from the producer's acks, exact, unlike Tansu's ListOffsets), then check that nothing was lost:
no send failed, consumed (``netsiam_records_consumed_total``) == produced, no dead letters, events on
the faults topic == events the daemon counted as acknowledged, and the daemon stops cleanly (exit 0).

**Flat** (:func:`assess`; the test asserts the same function). The first ``WARMUP_FRACTION`` (20 %) of
the run is warm-up and ignored (first batches of each size, allocator arenas, kafka-python buffers
reach their working size). The machine is shared: a ``bin_s`` bin in which other processes used more
than ``FOREIGN_MAX_CORES`` (0.25 of the 2 cores; the soak itself keeps ~1.5 busy) is *busy*, and so is
the bin after it (the backlog drains). While starved, the daemon falls behind, latency soars and RSS
steps up (fetch buffers up to ``fetch_max_bytes``, kept by the allocator afterwards): that is the
neighbour, not the daemon, so busy bins are left out, and where fewer than ``MIN_QUIET`` (half) of the
compared bins are quiet the verdict is None ("not judged", never a pass). On the quiet rest:

* RSS: least-squares slope through the 1-s samples, one level per quiet stretch (a step across a busy
  spell does not count, a rise within the stretches does; no busy spell: the plain least-squares
  line). Flat if that slope, over the judged span, rises by at most ``max(RSS_REL x mean RSS,
  RSS_ABS_MIB)`` = max(3 %, 16 MiB), ~20 MiB for the ~650 MiB daemon. Why so much: TensorFlow and
  the model are most of it, fixed in size, but the RSS jitters by +-5 MiB from second to second and
  steps by 5-10 MiB now and then (a larger micro-batch, a burst of fetched records, glibc raising
  its mmap threshold), measured on quiet stretches; a tighter bound makes a 2-minute run fail on
  one such step. What it catches: a leak of 100 B per record (~1 MiB/s) fails the 2-minute test
  five-fold; 1 KiB per fault event (~80 events/s, 280 MiB/h) fails the 20-minute soak (~75 MiB over
  the judged 16 minutes) but passes the 2-minute test (7.5 MiB): the slope of the 20-minute run
  resolves ~75 MiB/h, the 2-minute run only gross leaks (~750 MiB/h).
* Latency: among quiet events after the warm-up, p50 of the last third <= ``LAT_P50_FACTOR`` (1.5) x
  p50 of the first third + ``LAT_ABS_MS`` (50 ms), and p99 of the last third <= ``LAT_P99_FACTOR`` (2)
  x p99 of the first + 50 ms, with at least ``MIN_EVENTS`` events in each third and at most 1 % of
  events unmatched. At half the maximum load the daemon has 2x headroom, so a per-record cost that
  grows (bigger state, longer GC pauses) shows up in latency roughly in proportion, and losing the
  headroom makes the backlog and the latency grow without bound: a 1.5x median is a real slowdown.
  p99 rests on a few dozen events, each one hit by whatever the scheduler did at that moment, hence
  the wider 2x; 50 ms absorbs scheduler noise when latencies are small. The latency slopes (ms/h,
  least squares over per-bin p50/p99) are reported; the thirds decide (robust to one bad bin).

Prints one JSON line (the summary) and a short table; ``-o`` writes the summary plus every sample.
Exit status 0 when flat and nothing was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import shutil
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.common import REPO, Ctx, trace_lines
from bench.e2e import PARTITIONS, DaemonProc, _unique, cpu_seconds, daemon_config, daemon_rate, daemons

__all__ = ["assess", "fit_slope", "main", "soak"]

# -- the flatness criterion (see the module docstring for why these values) -----------------------------
WARMUP_FRACTION = 0.2
RSS_REL = 0.03
RSS_ABS_MIB = 16.0
LAT_P50_FACTOR = 1.5
LAT_P99_FACTOR = 2.0
LAT_ABS_MS = 50.0
MIN_EVENTS = 30
MAX_UNMATCHED = 0.01
FOREIGN_MAX_CORES = 0.25       # a bin where other processes used more CPU than this is "busy"
MIN_QUIET = 0.5                # judge only when at least this share of the bins compared is quiet

# -- the workload --------------------------------------------------------------------------------------
SIM_SOURCES, COPIES, SIM_MINUTES, SEED = 20, 10, 30, 321
PREFIX = "soak-"
MAX_RECORDS = 100_000          # pre-filled records for the max-rate measurement (300k for runs >= 10 min)
ACK_KEEP_S = 120.0             # the feed remembers ack times this long (an event later than that is unmatched)
DRAIN_TIMEOUT_S = 120.0
LINGER_MS = 20
FEED_NICE = 10


# -- analysis ------------------------------------------------------------------------------------------
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


def _pct(x: np.ndarray, q: float) -> float | None:
    return round(float(np.percentile(x, q)), 1) if len(x) else None


def busy_bins(foreign: Sequence[tuple[float, float]], bin_s: float) -> set[int]:
    """Bins (``int(t // bin_s)``) in which processes outside the soak used more than ``FOREIGN_MAX_CORES``
    on average, each with the bin after it (a backlog built while starved takes a while to drain)."""
    per: dict[int, list[float]] = {}
    for t, cores in foreign:
        per.setdefault(int(t // bin_s), []).append(cores)
    busy = {b for b, v in per.items() if float(np.mean(v)) > FOREIGN_MAX_CORES}
    return busy | {b + 1 for b in busy}


def assess(rss: Sequence[tuple[float, float]], latencies: Sequence[tuple[float, float]], duration_s: float,
           *, foreign: Sequence[tuple[float, float]] = (), bin_s: float | None = None,
           unmatched: int = 0) -> dict[str, Any]:
    """Are RSS and latency flat? ``rss``: (seconds since the start, MiB); ``latencies``: (event time in
    seconds since the start, record->event ms); ``foreign``: (seconds, CPU cores used by processes
    outside the soak); ``duration_s``: the length of the loaded run (later points are ignored);
    ``unmatched``: events whose triggering record was not found.

    Returns the figures and ``rss_flat``, ``latency_flat``, ``flat``: True, False, or None where the
    machine was too busy to judge (see the module docstring), with ``reasons`` for each non-True.
    """
    warm = WARMUP_FRACTION * duration_s
    third = (duration_s - warm) / 3.0
    bin_s = bin_s or (10.0 if duration_s >= 600 else 5.0)
    busy = busy_bins(foreign, bin_s)

    def quiet(t: np.ndarray) -> np.ndarray:
        return ~np.isin(np.floor(t / bin_s).astype(np.int64), list(busy))

    def quiet_share(a: float, b: float) -> float:
        mids = np.arange(math.floor(a / bin_s), math.ceil(b / bin_s)) * bin_s + bin_s / 2
        mids = mids[(mids >= a) & (mids < b)]
        return float(quiet(mids).mean()) if len(mids) else 1.0

    fc = np.asarray([c for t, c in foreign if warm <= t <= duration_s], dtype=np.float64)
    out: dict[str, Any] = {"warmup_s": round(warm, 1), "bin_s": bin_s,
                           "foreign_cpu_cores_mean": round(float(fc.mean()), 2) if len(fc) else None,
                           "busy_share": round(1.0 - quiet_share(warm, duration_s), 2)}
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
    lq = lat[quiet(lat[:, 0])]
    first = lq[lq[:, 0] < warm + third, 1]
    last = lq[lq[:, 0] >= duration_s - third, 1]
    p50f, p50l, p99f, p99l = _pct(first, 50), _pct(last, 50), _pct(first, 99), _pct(last, 99)
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
        "latency_p50_ms": _pct(lat[:, 1], 50), "latency_p99_ms": _pct(lat[:, 1], 99),
        "latency_p50_ms_first_third": p50f, "latency_p50_ms_last_third": p50l,
        "latency_p99_ms_first_third": p99f, "latency_p99_ms_last_third": p99l,
        "latency_p50_slope_ms_per_h": round(fit_slope(bt, [b[1] for b in bins]) * 3600.0, 1),
        "latency_p99_slope_ms_per_h": round(fit_slope(bt, [b[2] for b in bins]) * 3600.0, 1),
    })
    ok: bool | None = True
    if total and unmatched > MAX_UNMATCHED * total:
        ok = False
        reasons.append(f"{unmatched}/{total} events not matched to their record")
    shares = (quiet_share(warm, warm + third), quiet_share(duration_s - third, duration_s))
    if min(shares) < MIN_QUIET:
        ok = None if ok else ok
        reasons.append(f"latency not judged: the machine was busy in {1 - shares[0]:.0%} of the first third"
                       f" and {1 - shares[1]:.0%} of the last")
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
    verdicts = (out["rss_flat"], ok)
    out["flat"] = False if False in verdicts else (None if None in verdicts else True)
    out["reasons"] = reasons
    return out


def criteria() -> dict[str, float]:
    return {"warmup_fraction": WARMUP_FRACTION, "rss_rel": RSS_REL, "rss_abs_mib": RSS_ABS_MIB,
            "lat_p50_factor": LAT_P50_FACTOR, "lat_p99_factor": LAT_P99_FACTOR, "lat_abs_ms": LAT_ABS_MS,
            "min_events": MIN_EVENTS, "max_unmatched": MAX_UNMATCHED, "foreign_max_cores": FOREIGN_MAX_CORES,
            "min_quiet": MIN_QUIET}


# -- the feed (its own process) ---------------------------------------------------------------------------
def _feed(conn: Connection, spec: dict[str, Any]) -> None:
    """Paced looped trace -> samples topic; faults topic -> latency per event. Talks to the parent over
    ``conn``: ``start``, ``tick`` (about every second), ``done`` (all sent and acked), then, after the
    parent's ``stop``, ``final``; ``error`` with a traceback if anything fails."""
    try:
        _feed_body(conn, spec)
    except BaseException:  # noqa: BLE001 - report it to the parent, which raises
        with contextlib.suppress(Exception):
            conn.send({"type": "error", "error": traceback.format_exc()})


def _feed_body(conn: Connection, spec: dict[str, Any]) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.partitioner.default import murmur2

    from netsiam.config import KafkaConfig
    from netsiam.kafka_io import producer_kwargs, quiet_kafka_logs
    from netsiam.trainer.simulate import simulate
    from netsiam.windowing import slot_of

    quiet_kafka_logs()
    # The feed stands in for traffic that comes from other machines: niced, it gets the CPU the
    # daemon and the broker leave (on 2 cores it needs ~0.9 of one at 12k records/s) instead of
    # starving the daemon it measures; if it falls behind, the offered rate says so.
    os.nice(FEED_NICE)
    interval, stride = float(spec["interval_s"]), int(spec["stride"])
    records, _ = simulate(spec["sim_sources"], spec["sim_minutes"], seed=spec["seed"])
    span = spec["sim_minutes"] * 60.0
    if abs(span / (stride * interval) - round(span / (stride * interval))) > 1e-9:
        raise ValueError(f"loop span {span} s is not a multiple of the window stride")
    copies = int(spec["copies"])
    names = {r.source: [f"{spec['prefix']}{r.source}~{c}" for c in range(copies)] for r in records}
    keys = {s: [n.encode() for n in v] for s, v in names.items()}
    # the partition kafka-python's default partitioner picks for the key, computed once per source
    # (its pure-Python murmur2 per record was a fifth of the feed's CPU)
    parts = {s: [(murmur2(k) & 0x7FFFFFFF) % spec["partitions"] for k in v] for s, v in keys.items()}
    base = [(r.source, r.ts, r.metrics, int(slot_of(r.ts, interval)) % stride == 0) for r in records]
    rate, seconds = float(spec["rate"]), float(spec["seconds"])

    acks: dict[tuple[str, float], float] = {}
    order: deque[tuple[float, tuple[str, float]]] = deque()
    ends = [0] * spec["partitions"]
    st = {"acked": 0, "failed": 0, "events": 0, "unmatched": 0, "matched": 0}
    errors: list[str] = []
    lat: list[tuple[float, float]] = []
    lat_lock = threading.Lock()

    def on_ack(key: tuple[str, float] | None, meta: Any) -> None:
        now = time.time() * 1000.0
        st["acked"] += 1                                   # only this (the producer's I/O) thread writes
        if meta.offset + 1 > ends[meta.partition]:
            ends[meta.partition] = meta.offset + 1
        if key is not None:
            acks[key] = now
            order.append((now, key))

    def on_err(exc: Any) -> None:
        st["failed"] += 1
        if not errors:
            errors.append(f"{type(exc).__name__}: {exc}")

    stop = threading.Event()

    def consume() -> None:
        c = KafkaConsumer(bootstrap_servers=spec["bootstrap"], enable_auto_commit=False, fetch_max_wait_ms=50)
        pending: list[tuple[tuple[str, float], float, float]] = []
        try:
            tp = TopicPartition(spec["faults"], 0)
            c.assign([tp])
            c.seek_to_beginning(tp)
            while True:
                done = stop.is_set()  # read before the last poll: nothing acked before stop is missed
                for msgs in c.poll(timeout_ms=200).values():
                    for m in msgs:
                        ev = orjson.loads(m.value)
                        st["events"] += 1
                        pending.append(((str(ev["source"]), float(ev["window_end"])), float(m.timestamp),
                                        time.monotonic()))
                keep = []
                for key, created, seen in pending:
                    a = acks.get(key)
                    if a is not None:
                        with lat_lock:
                            lat.append((created, created - a))
                        st["matched"] += 1
                    elif time.monotonic() - seen < 5.0 and not done:  # its ack callback may still run
                        keep.append((key, created, seen))
                    else:
                        st["unmatched"] += 1
                pending = keep
                if done and not pending:
                    return
        finally:
            c.close()

    consumer = threading.Thread(target=consume, name="soak-faults", daemon=True)
    consumer.start()
    # gzip, batches of <= LINGER_MS: the embedded broker keeps every record in memory (this Tansu build has
    # no retention and refuses DeleteRecords). Measured at 6k records/s paced: linger 0 uncompressed (as
    # bench.pace) holds ~690 B per record in the broker (~10 GB in 20 minutes at 12k/s) and costs the feed
    # ~110 us and the broker ~25 us per record; linger 20 ms + gzip: ~70 B, ~75 us and ~7 us.
    producer = KafkaProducer(**producer_kwargs(KafkaConfig(), spec["bootstrap"], linger_ms=LINGER_MS),
                             compression_type="gzip")
    topic = spec["topic"]
    behind = 0.0

    def tick(kind: str = "tick", **extra: Any) -> None:
        nonlocal behind
        cutoff = time.time() * 1000.0 - ACK_KEEP_S * 1000.0
        while order and order[0][0] < cutoff:
            _, k = order.popleft()
            if acks.get(k, math.inf) < cutoff:
                del acks[k]
        with lat_lock:
            batch = lat[:]
            lat.clear()
        conn.send({"type": kind, "t": time.time(), "sent": sent, "behind_s": round(behind, 3), "lat": batch,
                   **st, **extra})
        behind = 0.0

    def stream() -> Iterator[tuple[int, str, bytes, int, float, dict[str, Any], bool]]:
        for loop in itertools.count():
            shift = loop * span
            for src, ts, metrics, aligned in base:
                for c in range(copies):
                    yield loop, names[src][c], keys[src][c], parts[src][c], ts + shift, metrics, aligned

    sent, loops = 0, 0
    t0 = time.perf_counter()
    end_t = t0 + seconds
    conn.send({"type": "start", "t": time.time()})
    next_tick = t0 + 1.0
    for loop, name, key, part, t, metrics, aligned in stream():
        now = time.perf_counter()
        if now >= end_t:  # a fixed duration: behind schedule, fewer records go out (offered rate reported)
            break
        ahead = t0 + sent / rate - now
        if ahead > 0.005:  # sleep in steps of >= 5 ms (a batch goes out every LINGER_MS anyway)
            time.sleep(ahead)
        elif -ahead > behind:
            behind = -ahead
        fut = producer.send(topic, key=key, value=orjson.dumps({"source": name, "ts": t, "metrics": metrics}),
                            partition=part)
        fut.add_callback(on_ack, (name, t) if aligned else None)
        fut.add_errback(on_err)
        sent += 1
        loops = loop + 1
        if not sent & 255 and now >= next_tick:
            tick()
            next_tick += 1.0
    producer.flush()
    seconds = time.perf_counter() - t0
    deadline = time.monotonic() + 30
    while st["acked"] + st["failed"] < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    tick("done", seconds=round(seconds, 3), loops=loops, end_offsets=list(ends), error=errors[0] if errors else "")
    while not conn.poll(1.0):
        tick()
    conn.recv()  # stop
    stop.set()
    consumer.join(30)
    producer.close(10)
    tick("final", end_offsets=list(ends))


# -- helpers of the parent --------------------------------------------------------------------------------
def rss_mib(pid: int) -> float | None:
    """VmRSS of a process in MiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _jiffies(pid: int) -> int | None:
    """User + system CPU ticks of a process (all its threads) so far; None once it is gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(f[11]) + int(f[12])


def _busy_jiffies(with_nice: bool) -> int:
    """CPU ticks the whole machine spent busy so far: user, system, irq, softirq, steal, and niced
    processes' time only if ``with_nice`` (a niced job yields the CPU to processes at nice 0)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return f[0] + (f[1] if with_nice else 0) + f[2] + f[5] + f[6] + f[7]


class ForeignCpu:
    """CPU cores used, since the last call, by everything that competes with the soak's processes
    ``pids``: the machine's busy time (``/proc/stat``) minus theirs. Niced processes count only when
    the soak itself runs niced. Machine totals rather than a sum over the other processes, which
    misses every process that ended in between (a test suite's short-lived children)."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.hz = os.sysconf("SC_CLK_TCK")
        self.with_nice = os.getpriority(os.PRIO_PROCESS, 0) > 0
        self._last = self._read()

    def _read(self) -> tuple[float, int, int]:
        return time.monotonic(), _busy_jiffies(self.with_nice), sum(_jiffies(p) or 0 for p in self.pids)

    def __call__(self) -> float:
        (t0, b0, o0), (t1, b1, o1) = self._last, self._read()
        self._last = (t1, b1, o1)
        return max(0.0, ((b1 - b0) - (o1 - o0)) / self.hz / max(t1 - t0, 1e-3))


def _committed(admin: Any, group: str, topic: str) -> dict[int, int]:
    offs = admin.list_group_offsets({group: None}).get(group, {})
    return {int(tp.partition): int(o.offset) for tp, o in offs.items() if tp.topic == topic}


def _topics(tag: str) -> Any:
    from netsiam.config import TopicsConfig

    name = _unique(tag)
    return TopicsConfig(samples=f"{name}.samples", faults=f"{name}.faults", deadletter=f"{name}.dl",
                        samples_partitions=PARTITIONS)


def _sum_metric(samples: dict[str, float], name: str, must: str = "") -> float:
    return sum(v for k, v in samples.items() if (k == name or k.startswith(name + "{")) and must in k)


def _table(res: dict[str, Any], rows: int = 10) -> str:
    """One line per tenth of the run: RSS, records/s consumed, lag, events, latency p50/p99."""
    dur = res["seconds"]
    samples, lats, rss = res["samples"], res["_lat"], res["_rss"]
    lines = ["   t (s)   RSS MiB   rec/s in    lag   events   p50 ms   p99 ms  other CPU"]
    fc = res["_foreign"]
    for i in range(rows):
        a, b = dur * i / rows, dur * (i + 1) / rows
        r = [m for t, m in rss if a <= t < b]
        s = [x for x in samples if a <= x["t"] < b]
        prev = [x for x in samples if x["t"] < a][-1:]
        s = prev + s
        f = [c for t, c in fc if a <= t < b]
        v = np.asarray([ms for t, ms in lats if a <= t < b])
        rec = (s[-1]["consumed"] - s[0]["consumed"]) / max(s[-1]["t"] - s[0]["t"], 1e-9) if len(s) > 1 else math.nan
        lag = float(np.mean([x["lag"] for x in s])) if s else math.nan
        p50 = np.percentile(v, 50) if len(v) else math.nan
        p99 = np.percentile(v, 99) if len(v) else math.nan
        lines.append(f"{a:4.0f}-{b:<4.0f} {np.mean(r) if r else math.nan:8.1f} {rec:10.0f} {lag:6.0f} {len(v):8d}"
                     f" {p50:8.0f} {p99:8.0f} {np.mean(f) if f else math.nan:10.2f}")
    return "\n".join(lines)


# -- the soak ----------------------------------------------------------------------------------------------
def soak(minutes: float, rate: float | None = None, model: Path | None = None, *, sample_s: float | None = None,
         log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the soak; returns the summary (see the module docstring), with ``samples``, ``ok``, ``flat``,
    ``nothing_lost`` and ``reasons``. Raises only when the set-up itself fails."""
    from kafka import KafkaAdminClient

    from netsiam.broker import create_topics, start_broker, stop_process
    from netsiam.replay import replay_lines
    from netsiam.serving import default_model_path

    say = log or (lambda s: print(s, file=sys.stderr, flush=True))
    duration = minutes * 60.0
    sample_s = sample_s or (10.0 if duration >= 600 else 5.0)
    model = Path(model) if model else default_model_path()
    window = json.loads((model / "manifest.json").read_text())["window"]
    ctx = Ctx(quick=False, model=model)
    res: dict[str, Any] = {"minutes": minutes, "model": str(model), "criteria": criteria()}
    t_setup = time.monotonic()
    try:
        with start_broker(0, log_path=ctx.tmp / "tansu.log") as bp:
            admin = KafkaAdminClient(bootstrap_servers=bp.bootstrap)
            try:
                topics = _topics("soak")
                create_topics(bp.bootstrap, topics)
                group = _unique("soak")
                # the soaked daemon loads while the max-rate topic fills
                daemon = DaemonProc(daemon_config(ctx, bp.bootstrap, topics, group), model, ctx.tmp / "soak-daemon.log")
                try:
                    if rate is None:
                        n = 300_000 if minutes >= 10 else MAX_RECORDS
                        mt = _topics("max")
                        create_topics(bp.bootstrap, mt)
                        lines = trace_lines(20, math.ceil(n / (20 * 10 * 60)), seed=99, copies=10)[:n]
                        stats = replay_lines(lines, bp.bootstrap, mt.samples)
                        del lines
                        if stats.failed:
                            raise RuntimeError(f"pre-fill failed: {stats.error}")
                        daemon.wait_for("partitions assigned: ", 180)
                        gm = _unique("max")
                        with daemons(1, ctx, bp.bootstrap, mt, gm) as procs:
                            other = ForeignCpu([p.proc.pid for p in procs] + [daemon.proc.pid, bp.proc.pid, os.getpid()])
                            mx = daemon_rate(procs, admin, gm, mt.samples, n, bp.proc.pid)
                            res["max_other_cpu_cores"] = round(other(), 2)
                        res["max_records_per_s"] = round(mx["rate"])
                        res["max_measure_records"] = n
                        rate = mx["rate"] / 2.0
                        res["rate_source"] = "half the measured max"
                        say(f"soak: daemon max {mx['rate']:.0f} records/s ({n} records, other processes used "
                            f"{res['max_other_cpu_cores']} cores meanwhile); offering {rate:.0f}/s")
                    else:
                        res["max_records_per_s"] = None
                        res["rate_source"] = "given"
                        daemon.wait_for("partitions assigned: ", 180)
                    res["target_records_per_s"] = round(rate)
                    res["setup_s"] = round(time.monotonic() - t_setup, 1)
                    res.update(_run(daemon, bp, admin, topics, group, rate, duration, sample_s, window, say))
                    code = stop_process(daemon.proc, 60)
                    res["daemon_exit"] = code
                    res["daemon_stop_logged"] = "stopped: consumed" in daemon.text()
                finally:
                    if daemon.proc.poll() is None:
                        stop_process(daemon.proc, 30)
                    res["_daemon_log_tail"] = daemon.text()[-3000:]
            finally:
                admin.close()
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    lost = res["lost_reasons"]
    if res.get("daemon_exit") != 0:
        lost.append(f"daemon exit status {res.get('daemon_exit')}")
    res["nothing_lost"] = not lost
    res["ok"] = bool(res["flat"] and res["nothing_lost"])
    res["reasons"] = res["reasons"] + lost
    if res["ok"]:
        res.pop("_daemon_log_tail")
    return res


def _run(daemon: DaemonProc, bp: Any, admin: Any, topics: Any, group: str, rate: float, duration: float,
         sample_s: float, window: dict[str, Any], say: Callable[[str], None]) -> dict[str, Any]:
    spec = {"bootstrap": bp.bootstrap, "topic": topics.samples, "faults": topics.faults, "rate": rate,
            "seconds": duration, "partitions": PARTITIONS, "sim_sources": SIM_SOURCES,
            "sim_minutes": SIM_MINUTES, "copies": COPIES, "seed": SEED, "prefix": PREFIX,
            "interval_s": window["interval_s"], "stride": window["stride"]}
    mp = multiprocessing.get_context("spawn")
    parent, child = mp.Pipe()
    feed = mp.Process(target=_feed, args=(child, spec), name="soak-feed", daemon=True)
    feed.start()
    child.close()
    pid, broker_pid = daemon.proc.pid, bp.proc.pid
    t0: float | None = None
    ticks: list[dict[str, Any]] = []
    lat: list[tuple[float, float]] = []
    rss: list[tuple[float, float]] = []
    foreign: list[tuple[float, float]] = []
    broker_rss: list[tuple[float, float]] = []
    samples: list[dict[str, Any]] = []
    done: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    drained_at: float | None = None
    stop_sent = False
    next_rss = next_sample = 0.0
    end_offsets: list[int] = []
    committed: dict[int, int] = {}
    foreign_cpu: ForeignCpu | None = None
    try:
        while final is None:
            if not feed.is_alive() and not parent.poll():
                raise RuntimeError(f"feed process died (exit {feed.exitcode})")
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({daemon.proc.returncode}) during the soak:\n{daemon.text()[-3000:]}")
            if parent.poll(0.2):
                try:
                    msg = parent.recv()
                except EOFError:
                    raise RuntimeError(f"feed process died (exit {feed.exitcode})") from None
                kind = msg["type"]
                if kind == "error":
                    raise RuntimeError(f"feed failed:\n{msg['error']}")
                if kind == "start":
                    t0 = float(msg["t"])
                    say(f"soak: feeding {rate:.0f} records/s for {duration / 60:.1f} min")
                    continue
                assert t0 is not None
                if foreign_cpu is None:
                    foreign_cpu = ForeignCpu([pid, broker_pid, os.getpid(), feed.pid or 0])
                lat.extend(((c / 1000.0 - t0), ms) for c, ms in msg["lat"])
                ticks.append({k: v for k, v in msg.items() if k != "lat"})
                if kind == "done":
                    done = msg
                    end_offsets = list(msg["end_offsets"])
                    say(f"soak: feed done in {msg['seconds']:.0f} s; draining")
                elif kind == "final":
                    final = msg
            if t0 is None:
                continue
            now = time.time() - t0
            if now >= next_rss:
                m = rss_mib(pid)
                if m is not None:
                    rss.append((round(now, 2), m))
                b = rss_mib(broker_pid)
                if b is not None:
                    broker_rss.append((round(now, 2), b))
                if foreign_cpu is not None:
                    foreign.append((round(now, 2), round(foreign_cpu(), 3)))
                next_rss += 1.0
            if now >= next_sample:
                with contextlib.suppress(Exception):
                    s = daemon.scrape()
                    committed = _committed(admin, group, topics.samples)
                    samples.append({
                        "t": round(now, 2), "rss_mib": rss[-1][1] if rss else None,
                        "consumed": s.get("netsiam_records_consumed_total", 0.0),
                        "daemon_cpu_s": round(cpu_seconds(pid), 2),
                        "broker_cpu_s": round(cpu_seconds(broker_pid), 2),
                        "foreign_cores": foreign[-1][1] if foreign else None,
                        "lag": _sum_metric(s, "netsiam_consumer_lag", f'topic="{topics.samples}"'),
                        "committed": sum(committed.values()),
                        "sent": ticks[-1]["sent"] if ticks else 0,
                        "events": sum(1 for t, _ in lat if t >= now - sample_s)})
                    x = samples[-1]
                    say(f"soak: t={now:5.0f}s rss={x['rss_mib'] or 0:.1f} MiB consumed={x['consumed']:.0f} "
                        f"lag={x['lag']:.0f} events={len(lat)} other-cpu={x['foreign_cores'] or 0:.2f}")
                next_sample += sample_s
            if done is not None and not stop_sent:
                with contextlib.suppress(Exception):
                    committed = _committed(admin, group, topics.samples)
                caught_up = all(committed.get(p, 0) >= e for p, e in enumerate(end_offsets))
                timed_out = time.time() - (t0 + float(done["seconds"])) > DRAIN_TIMEOUT_S
                if caught_up and drained_at is None:
                    drained_at = time.time()
                if (drained_at is not None and time.time() - drained_at > 2.0) or timed_out:
                    parent.send("stop")  # events of the last records had 2 s to reach the faults topic
                    stop_sent = True
        feed.join(30)
    finally:
        if feed.is_alive():
            feed.terminate()
            feed.join(5)
        parent.close()
    assert done is not None and final is not None and t0 is not None
    scrape = daemon.scrape()
    with contextlib.suppress(Exception):
        committed = _committed(admin, group, topics.samples)
    seconds = float(done["seconds"])
    out: dict[str, Any] = {
        "seconds": round(seconds, 1), "sources": SIM_SOURCES * COPIES,
        "offered_records_per_s": round(done["sent"] / seconds), "producer_max_behind_s": max(t["behind_s"] for t in ticks),
        "trace_loops": done["loops"],
        "records_produced": done["acked"], "records_failed": done["failed"],
        "records_consumed": int(scrape.get("netsiam_records_consumed_total", 0.0)),
        "dead_letters": int(_sum_metric(scrape, "netsiam_records_invalid_total")),
        "windows_embedded": int(scrape.get("netsiam_windows_embedded_total", 0.0)),
        "events_on_topic": final["events"], "events_acked_by_daemon": int(_sum_metric(scrape, "netsiam_fault_events_total")),
        "events_matched": final["matched"],
        "end_offsets": end_offsets, "committed": [committed.get(p, 0) for p in range(PARTITIONS)],
        "drain_s": None if drained_at is None else round(drained_at - (t0 + seconds), 1),
        "lag_max": max((s["lag"] for s in samples if s["t"] <= seconds), default=None),
        "broker_rss_mib_start": round(broker_rss[0][1], 1) if broker_rss else None,
        "broker_rss_mib_end": round(broker_rss[-1][1], 1) if broker_rss else None,
        "daemon_rss_mib_start": round(rss[0][1], 1) if rss else None,
        "daemon_rss_mib_end": round(max((m for t, m in rss if t <= seconds), default=0.0), 1) if rss else None,
    }
    for name, frac in (("first", (WARMUP_FRACTION, WARMUP_FRACTION + (1 - WARMUP_FRACTION) / 3)),
                       ("last", (1 - (1 - WARMUP_FRACTION) / 3, 1.0))):
        sel = [s for s in samples if frac[0] * seconds <= s["t"] <= frac[1] * seconds]
        out[f"lag_mean_{name}_third"] = round(float(np.mean([s["lag"] for s in sel])), 1) if sel else None
        if len(sel) > 1 and sel[-1]["consumed"] > sel[0]["consumed"]:
            for who in ("daemon", "broker"):
                out[f"{who}_cpu_us_per_record_{name}_third"] = round(
                    (sel[-1][f"{who}_cpu_s"] - sel[0][f"{who}_cpu_s"]) / (sel[-1]["consumed"] - sel[0]["consumed"]) * 1e6, 1)
    out.update(assess(rss, lat, seconds, foreign=foreign, bin_s=sample_s, unmatched=final["unmatched"]))
    lost = []
    if done["failed"] or done.get("error"):
        lost.append(f"{done['failed']} sends failed: {done.get('error')}")
    if out["records_consumed"] != out["records_produced"]:
        lost.append(f"consumed {out['records_consumed']} != produced {out['records_produced']}")
    if out["committed"] != end_offsets:
        lost.append(f"committed offsets {out['committed']} != end offsets {end_offsets}")
    if out["dead_letters"]:
        lost.append(f"{out['dead_letters']} records dead-lettered")
    if out["events_on_topic"] != out["events_acked_by_daemon"]:
        lost.append(f"{out['events_on_topic']} events on the topic != {out['events_acked_by_daemon']} acked by the daemon")
    if not out["events_on_topic"]:
        lost.append("no fault events at all")
    out["lost_reasons"] = lost
    out["samples"] = samples
    out["_rss"] = rss
    out["_lat"] = lat
    out["_foreign"] = foreign
    out["broker_rss"] = broker_rss[:: max(1, len(broker_rss) // 200)]
    return out


def summary(res: dict[str, Any]) -> dict[str, Any]:
    """The result without its series (the JSON line printed)."""
    return {k: v for k, v in res.items() if k not in ("samples", "broker_rss", "lost_reasons") and not k.startswith("_")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0, help="loaded duration (default 20)")
    ap.add_argument("--rate", type=float, default=None, help="records/s to offer (default: half the measured max)")
    ap.add_argument("--model", default=None, help="artifact directory (default: the shipped model)")
    ap.add_argument("-o", "--out", default=str(REPO / "bench" / "soak.json"), help="JSON report (default bench/soak.json)")
    args = ap.parse_args(argv)
    res = soak(args.minutes, args.rate, Path(args.model) if args.model else None)
    table = _table(res)
    full = {**summary(res), "samples": res["samples"],
            "rss": [(t, round(m, 2)) for t, m in res["_rss"]], "broker_rss": res["broker_rss"],
            "foreign_cpu_cores": res["_foreign"],
            "latency_bins": _bins(res["_lat"], res["seconds"], 10.0 if res["seconds"] >= 600 else 5.0)}
    if "_daemon_log_tail" in res:
        full["daemon_log_tail"] = res["_daemon_log_tail"]
    Path(args.out).write_text(json.dumps(full, indent=1) + "\n")
    print(table)
    print(json.dumps(summary(res)))
    return 0 if res["ok"] else 1


def _bins(lat: Sequence[tuple[float, float]], seconds: float, bin_s: float) -> list[dict[str, Any]]:
    out = []
    arr = np.asarray(lat, dtype=np.float64).reshape(-1, 2)
    for i in range(math.ceil(seconds / bin_s)):
        v = arr[(arr[:, 0] >= i * bin_s) & (arr[:, 0] < (i + 1) * bin_s), 1]
        out.append({"t": i * bin_s, "events": len(v), "p50_ms": _pct(v, 50), "p99_ms": _pct(v, 99)})
    return out


if __name__ == "__main__":
    raise SystemExit(main())
