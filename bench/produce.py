"""``replay`` throughput with ``kafka.client: confluent-kafka`` vs kafka-python, same run, same broker.

The same simulated records (the daemon benchmark's kind) are replayed flat out (``replay --max``'s
path: parse each line for its key, send, wait for every ack) into a fresh 4-partition topic per round
on the embedded broker, the two clients alternating round by round so that a neighbour's load on the
shared cores hits both alike; the best round of each counts. Also each client's records per CPU
second of this process (librdkafka's threads included), less sensitive to other processes.

Full ``make bench`` only: ``--quick`` (the smoke test in ``make test``) skips it. Null ratio, with
the reason, where confluent-kafka is not installed.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

from bench.common import Ctx, new_topics, trace_lines

__all__ = ["bench_produce"]

PARTITIONS = 4
ROUNDS = 3


def bench_produce(ctx: Ctx, records: int = 100_000) -> dict[str, Any]:
    if ctx.quick:
        return {}  # a few seconds of kafka-python per round: not worth it in the smoke test
    if importlib.util.find_spec("confluent_kafka") is None:
        return {"replay_confluent_ratio": None,
                "replay_note": "confluent-kafka is not installed (pip install 'netsiam[confluent]')"}
    from netsiam.broker import start_broker
    from netsiam.config import KafkaConfig
    from netsiam.replay import replay_lines

    lines = trace_lines(20, 25, seed=99, copies=4)[:records]  # ~350 bytes a record, 80 sources
    clients = ("kafka-python", "confluent-kafka")
    wall = dict.fromkeys(clients, 0.0)
    cpu = dict.fromkeys(clients, 0.0)
    with start_broker(0, log_path=ctx.tmp / "tansu-produce.log") as bp:
        for r in range(ROUNDS):
            for client in clients:
                t = new_topics(bp.bootstrap, f"produce-{client}-{r}", PARTITIONS)
                c0 = time.process_time()
                stats = replay_lines(lines, bp.bootstrap, t.samples, kafka=KafkaConfig(client=client))
                dc = time.process_time() - c0
                if stats.failed or stats.sent != len(lines):
                    raise RuntimeError(f"{client}: {stats.sent} sent, {stats.failed} failed: {stats.error}")
                wall[client] = max(wall[client], stats.rate)
                cpu[client] = max(cpu[client], stats.sent / max(dc, 1e-9))
    kp, ck = clients
    return {
        "replay_records": len(lines),
        "replay_kafka_python_records_per_s": round(wall[kp]),
        "replay_confluent_records_per_s": round(wall[ck]),
        "replay_confluent_ratio": round(wall[ck] / wall[kp], 2),
        "replay_confluent_cpu_ratio": round(cpu[ck] / cpu[kp], 2),
    }


if __name__ == "__main__":  # pragma: no cover - manual runs: python -m bench.produce [RECORDS]
    import json
    import shutil
    import sys

    ctx = Ctx(quick=False)
    try:
        n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
        print(json.dumps(bench_produce(ctx, n), indent=2))
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
