"""The broker's share of the record -> event latency: a bare consumer on the latency step's stream.

``python -m bench.latency_floor [--rates R,R..] [--quick]``: per rate a fresh embedded broker and
topic (``PARTITIONS`` partitions), ``bench.pace`` playing the stream the latency step plays
(:func:`bench.e2e.latency_trace`), and the throughput step's bare kafka-python consumer
(:func:`bench.e2e.bare_kafka_python`: the daemon's fetch settings, no group) that only parses each
record: per record, the time its poll returned minus the broker's ack. No window, embedding or
event: whatever the daemon's latency (``python -m bench.e2e MODEL --latency R``) adds to this floor
is the daemon's. One JSON line per rate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import orjson

from bench.common import Ctx, new_topics
from bench.e2e import PARTITIONS, bare_kafka_python, latency_trace, pace

__all__ = ["floor"]


def floor(ctx: Ctx, rates: Sequence[float]) -> Iterator[dict[str, Any]]:
    from netsiam.broker import start_broker

    for r in rates:
        with start_broker(0, log_path=ctx.tmp / "tansu-floor.log") as bp:
            yield {"rate": r, **_one_rate(ctx, bp.bootstrap, r)}


def _one_rate(ctx: Ctx, bootstrap: str, records_per_s: float) -> dict[str, Any]:
    t = new_topics(bootstrap, "floor", PARTITIONS)
    consumer = bare_kafka_python(bootstrap, t.samples)
    polled_at: dict[tuple[str, float], float] = {}   # (source, ts) -> ms its poll returned
    stop = threading.Event()
    th = threading.Thread(target=_consume, args=(consumer, stop, polled_at), name="floor-consumer")
    th.start()
    try:
        n, trace = latency_trace(ctx, records_per_s)
        acks_path = ctx.tmp / "floor-acks.json"
        stats = pace(trace, bootstrap, t.samples, records_per_s, acks_path)
        deadline = time.monotonic() + 30
        while len(polled_at) < n and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        th.join()
        consumer.close(autocommit=False)
    lat = np.asarray([polled_at[(str(s), float(ts))] - ack for s, ts, ack in orjson.loads(acks_path.read_bytes())
                      if ack and (str(s), float(ts)) in polled_at])
    return {"records": n, "polled": len(lat), "offered": round(stats["rate"]), "client": stats.get("client"),
            **{f"p{q}_ms": round(float(np.percentile(lat, q)), 1) for q in (50, 99)},
            "max_ms": round(float(lat.max()), 1)}


def _consume(consumer: Any, stop: threading.Event, polled_at: dict[tuple[str, float], float]) -> None:
    while not stop.is_set():
        got = consumer.poll(timeout_ms=100)
        now = time.time() * 1000.0
        for msgs in got.values():
            for m in msgs:
                o = orjson.loads(m.value)
                polled_at[(o["source"], float(o["ts"]))] = now


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.latency_floor", description=__doc__)
    ap.add_argument("--rates", default="1000,2500,5000,7500,12000,15000")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    ctx = Ctx(quick=args.quick)
    try:
        for row in floor(ctx, [float(x) for x in args.rates.split(",")]):
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
