"""What a raised fault costs the daemon's main thread: ``Pipeline.apply`` on windows that raise, against
as many windows that raise nothing, and the producer's ``send`` of the events it made.

A cold start of many sources raises a fault on each source found in one, all at once (``bench.sources``:
about a third of them), so this cost times thousands is what such a step pays in its first seconds.
Every source sends ``RECORDS`` records of steady traffic; in the raising run its last ``FROZEN`` seconds
are a frozen far end (nothing answered, retransmissions, calls piling up), which the shipped model
raises as ``blocked`` after two windows. Main-thread CPU (``time.thread_time``): embedding runs outside
the timed part. The events are then sent through a kafka-python producer configured as the daemon's,
to the embedded broker. Not part of ``make bench`` (it answers "what does a raise cost", not a
target); ``python -m bench.raises [--sources 4000]`` prints one JSON line; docs/throughput.md quotes it.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from typing import Any

import orjson

__all__ = ["FROZEN", "RECORDS", "main", "raise_costs"]

RECORDS = 40   # per source: 11 windows of 30
FROZEN = 10    # the raising run's last seconds of each source


def _record(source: int, second: int, frozen: bool) -> bytes:
    # Unanswered calls pile up from the freeze's first second on (30 a second), not from the run's start.
    piled = (second - (RECORDS - FROZEN) + 1) * 30 if frozen else 0
    m = {"OutgoingCall": 30, "SuccessfulCall": 0 if frozen else 30, "FailedCall": 0,
         "Retransmissions": 60 if frozen else 0, "CurrentCall": 60 + piled,
         "ResponseTime1": 0.0 if frozen else 5.0, "FailedMaxUDPRetrans": 0, "FailedTimeoutOnRecv": 0}
    return orjson.dumps({"source": f"s{source}", "ts": 1795384000 + second, "metrics": m})


def _apply_cpu(art: Any, sources: int, freeze: bool) -> tuple[float, int, list[Any]]:
    """Main-thread CPU seconds of ``Pipeline.apply`` over every window, the events it made, and them."""
    from netsiam.config import Config
    from netsiam.detector.batch import run_batch
    from netsiam.detector.pipeline import EventOut, Pipeline
    from netsiam.kafka_io import ConsumedRecord

    pl = Pipeline(Config(), art)
    msgs = [ConsumedRecord("samples", 0, i * sources + s, 0, b"k", _record(s, i, freeze and i >= RECORDS - FROZEN))
            for i in range(RECORDS) for s in range(sources)]
    pl.feed(("samples", 0), msgs)
    del msgs
    # As the daemon after start-up (detector/reload.py): what is held now stays out of the collector's
    # scans, so a full collection landing in the timed part costs what it would cost the daemon.
    gc.collect()
    gc.freeze()
    cpu, events = 0.0, 0
    while (batch := pl.take_batch(1024)) is not None:
        res = run_batch(batch)
        c0 = time.thread_time()
        events += pl.apply(batch, res)
        cpu += time.thread_time() - c0
    gc.unfreeze()
    return cpu, events, [o for o in pl.take_outbox() if isinstance(o, EventOut)]


def _send_cpu(values: list[bytes]) -> float:
    """Main-thread CPU seconds per ``send`` of ``values`` by a producer configured as the daemon's."""
    from kafka import KafkaProducer

    from netsiam.broker import start_broker
    from netsiam.config import Config
    from netsiam.kafka_io import producer_kwargs

    from .common import new_topics

    with start_broker() as bp:
        topic = new_topics(bp.bootstrap, "raises", 4).faults
        p = KafkaProducer(**producer_kwargs(Config().kafka, bp.bootstrap, idempotent=False))
        try:
            p.send(topic, key=b"warm", value=values[0]).get(30)   # metadata and connection first
            c0 = time.thread_time()
            for i, v in enumerate(values):
                p.send(topic, key=b"s%d" % i, value=v)
            cpu = time.thread_time() - c0
            p.flush(60)
        finally:
            p.close()
    return cpu / len(values)


def raise_costs(sources: int, model: str | None = None) -> dict[str, Any]:
    from netsiam.serving import load_artifact

    art = load_artifact(model)
    art.warm_up(raw=True)
    calm_cpu, calm_events, _ = _apply_cpu(art, sources, freeze=False)
    cpu, events, out = _apply_cpu(art, sources, freeze=True)
    t0 = time.perf_counter()
    values = [o.event.to_bytes() for o in out]   # the ids were computed in apply (for the gauges), as in the daemon
    to_bytes = (time.perf_counter() - t0) / max(len(out), 1)
    windows = sources * (RECORDS - art.window.length + 1)
    return {
        "raises_sources": sources, "raises_windows": windows,
        "raises_events": events, "raises_events_without_the_freeze": calm_events,
        "raises_apply_us_per_window_calm": round(calm_cpu / windows * 1e6, 2),
        "raises_apply_us_per_raise": round((cpu - calm_cpu) / max(events, 1) * 1e6, 1),
        "raises_to_bytes_us": round(to_bytes * 1e6, 1),
        "raises_send_us_per_event": round(_send_cpu(values) * 1e6, 1) if values else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sources", type=int, default=4000, help="sources, each raising once in the frozen run")
    ap.add_argument("--model", default=None, help="artifact (default: the shipped model)")
    args = ap.parse_args(argv)
    print(json.dumps(raise_costs(args.sources, args.model)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
