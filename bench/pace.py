"""Paced producer for the latency benchmark (a separate process, like a real feed).

``python -m bench.pace TRACE --bootstrap H:P --topic T --rate R --acks OUT [--client C]`` sends the
trace's lines (time order, keyed by source) at a steady ``R`` records/s and writes, per record, when
the broker acknowledged it: ``[[source, ts, ack_ms], ...]`` as JSON. The broker (Tansu) ignores
``message.timestamp.type=LogAppendTime`` and a producer's CreateTime is stamped before the record
may wait in the client's queue, so the ack time is the closest observable bound on the append.
Prints one JSON line of stats.

It produces as ``netsiam collect`` does (5 ms linger), through confluent-kafka where it is installed:
the feed is not what is measured, and on 2 cores a kafka-python feed at 15k records/s takes ~0.6 of
a core from the daemon and broker it feeds. With no linger, the embedded broker also slows down as
the tiny batches pile up: its in-memory store answers a fetch more slowly the more batches it holds
(measured on a bare consumer at 15k records/s: append->poll p99 173 ms with 0 ms, 53 ms with 5 ms).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import time
from pathlib import Path

import orjson

__all__ = ["LINGER_MS", "main"]

LINGER_MS = 5  # as netsiam collect's sink


def main(argv: list[str] | None = None) -> int:
    from netsiam.config import KafkaConfig
    from netsiam.kafka_io import quiet_kafka_logs
    from netsiam.producer import producer_factory

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("trace")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--rate", type=float, required=True, help="records per second")
    ap.add_argument("--acks", required=True, help="JSON file: [[source, ts, ack_ms], ...]")
    ap.add_argument("--client", choices=("kafka-python", "confluent-kafka"), default=None,
                    help="default: confluent-kafka where it is installed")
    args = ap.parse_args(argv)
    quiet_kafka_logs()
    lines = [ln for ln in Path(args.trace).read_bytes().splitlines() if ln.strip()]
    objs = [orjson.loads(ln) for ln in lines]
    keys = [str(o["source"]).encode() for o in objs]
    acked = [0.0] * len(lines)

    def on_ack(i: int, exc: BaseException | None) -> None:
        if exc is None:
            acked[i] = time.time() * 1000.0

    client = args.client or ("confluent-kafka" if importlib.util.find_spec("confluent_kafka") else "kafka-python")
    producer = producer_factory(KafkaConfig(client=client), args.bootstrap, linger_ms=LINGER_MS, idempotent=False,
                                max_block_ms=10_000)()
    t0 = time.perf_counter()
    lag_max = 0.0
    # librdkafka runs acknowledgement callbacks only inside poll: wait in it, so ack times are not late
    wait = producer.poll if client == "confluent-kafka" else time.sleep
    for i, line in enumerate(lines):
        due = t0 + i / args.rate
        ahead = due - time.perf_counter()
        lag_max = max(lag_max, -ahead)
        while ahead > 0.002:
            wait(ahead)
            ahead = due - time.perf_counter()
        producer.send(args.topic, keys[i], line, functools.partial(on_ack, i))
        producer.poll(0)
    producer.flush()
    seconds = time.perf_counter() - t0
    producer.close(10)
    Path(args.acks).write_bytes(orjson.dumps([[o["source"], o["ts"], a] for o, a in zip(objs, acked, strict=True)]))
    print(json.dumps({"client": client, "sent": len(lines), "seconds": round(seconds, 3),
                      "rate": round(len(lines) / seconds, 1),
                      "max_behind_s": round(lag_max, 3), "unacked": sum(1 for a in acked if not a)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
