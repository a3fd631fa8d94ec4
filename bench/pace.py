"""Paced producer for the latency benchmark (a separate process, like a real feed).

``python -m bench.pace TRACE --bootstrap H:P --topic T --rate R --acks OUT`` sends the trace's lines
(time order, keyed by source) at a steady ``R`` records/s and writes, per record, when the broker
acknowledged it: ``[[source, ts, ack_ms], ...]`` as JSON. The broker (Tansu) ignores
``message.timestamp.type=LogAppendTime`` and a producer's CreateTime is stamped before the record
may wait in the client's queue, so the ack time is the closest observable bound on the append.
Prints one JSON line of stats.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import orjson

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from kafka import KafkaProducer

    from netsiam.config import KafkaConfig
    from netsiam.kafka_io import producer_kwargs, quiet_kafka_logs

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("trace")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--rate", type=float, required=True, help="records per second")
    ap.add_argument("--acks", required=True, help="JSON file: [[source, ts, ack_ms], ...]")
    args = ap.parse_args(argv)
    quiet_kafka_logs()
    lines = [ln for ln in Path(args.trace).read_bytes().splitlines() if ln.strip()]
    objs = [orjson.loads(ln) for ln in lines]
    keys = [str(o["source"]).encode() for o in objs]
    acked = [0.0] * len(lines)

    def on_ack(i: int, _meta: object) -> None:
        acked[i] = time.time() * 1000.0

    producer = KafkaProducer(**producer_kwargs(KafkaConfig(), args.bootstrap, linger_ms=0))
    t0 = time.perf_counter()
    lag_max = 0.0
    for i, line in enumerate(lines):
        ahead = t0 + i / args.rate - time.perf_counter()
        if ahead > 0.002:
            time.sleep(ahead)
        else:
            lag_max = max(lag_max, -ahead)
        producer.send(args.topic, key=keys[i], value=line).add_callback(functools.partial(on_ack, i))
    producer.flush()
    seconds = time.perf_counter() - t0
    producer.close(10)
    Path(args.acks).write_bytes(orjson.dumps([[o["source"], o["ts"], a] for o, a in zip(objs, acked, strict=True)]))
    print(json.dumps({"sent": len(lines), "seconds": round(seconds, 3), "rate": round(len(lines) / seconds, 1),
                      "max_behind_s": round(lag_max, 3), "unacked": sum(1 for a in acked if not a)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
