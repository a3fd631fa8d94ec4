"""The soak's feed, a process of its own (like traffic from other machines): a paced, looped trace
into the samples topic, and the faults topic read back for record->event latency per event.

The trace loops with every timestamp shifted by the loop's span (a multiple of the window stride),
so record time keeps advancing and every loop is the same work: growth is then a leak, not a change
of workload. Latency per event: the event message's timestamp (stamped by the daemon's producer)
minus the broker ack time of the record that completed the triggering window (same source,
``ts == window_end``).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import orjson

__all__ = ["ACK_KEEP_S", "FEED_NICE", "LINGER_MS", "feed"]

ACK_KEEP_S = 120.0             # the feed remembers ack times this long (an event later than that is unmatched)
LINGER_MS = 20
FEED_NICE = 10


def feed(conn: Connection, spec: dict[str, Any]) -> None:
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
