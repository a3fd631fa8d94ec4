"""Where the daemon's CPU per record goes, offline: decode + window (``Pipeline.feed``), embed +
classify (``run_batch``), debounce (``Pipeline.apply``), with the compiled encoder off and on.

No broker: simulated records as the consumer would hand them over (polls of ``POLL`` per partition,
``PARTITIONS`` partitions keyed by source), micro-batches of the daemon's ``batch_max``. CPU seconds
of this process (every thread: TensorFlow's too) per record. Not part of ``make bench`` (it answers
"what next", not a target); ``python -m bench.cpusplit [--sources 200 --minutes 10]`` prints one
JSON line. docs/throughput.md quotes it.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

from netsiam.kafka_io import ConsumedRecord

__all__ = ["PARTITIONS", "POLL", "cpu_split", "main"]

PARTITIONS = 4
POLL = 500  # records per partition per poll (kafka-python's max_poll_records default)
T = TypeVar("T")


def _partitioned(lines: list[bytes]) -> dict[int, list[ConsumedRecord]]:
    import orjson

    parts: dict[int, list[ConsumedRecord]] = {p: [] for p in range(PARTITIONS)}
    for ln in lines:
        key = str(orjson.loads(ln)["source"]).encode()
        msgs = parts[zlib.crc32(key) % PARTITIONS]
        msgs.append(ConsumedRecord("samples", zlib.crc32(key) % PARTITIONS, len(msgs), 0, key, ln))
    return parts


def cpu_split(parts: dict[int, list[ConsumedRecord]], art: Any) -> dict[str, float]:
    """CPU microseconds per record in each stage, for one pass of ``parts`` through a fresh pipeline."""
    from netsiam.config import Config
    from netsiam.detector.batch import run_batch
    from netsiam.detector.pipeline import Pipeline

    cfg = Config()
    pl = Pipeline(cfg, art)
    cpu = {"feed": 0.0, "embed": 0.0, "apply": 0.0}

    def timed(stage: str, fn: Callable[[], T]) -> T:
        c0 = time.process_time()
        out = fn()
        cpu[stage] += time.process_time() - c0
        return out

    n = sum(len(v) for v in parts.values())
    for i in range(0, max(len(v) for v in parts.values()), POLL):
        for p, msgs in parts.items():
            timed("feed", functools.partial(pl.feed, ("samples", p), msgs[i:i + POLL]))
        while (batch := pl.take_batch(cfg.detector.batch_max)) is not None:
            res = timed("embed", functools.partial(run_batch, batch))
            timed("apply", functools.partial(pl.apply, batch, res))
        pl.outbox.clear()  # nothing publishes here
    out = {k: round(v / n * 1e6, 1) for k, v in cpu.items()}
    out["total"] = round(sum(cpu.values()) / n * 1e6, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sources", type=int, default=200, help="sources (simulated 50 at a time, renamed copies)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--model", default=None, help="artifact (default: the shipped model)")
    args = ap.parse_args(argv)

    from bench.common import trace_lines
    from netsiam.serving import Artifact, load_artifact

    sim = min(50, args.sources)
    parts = _partitioned(trace_lines(sim, args.minutes, copies=max(1, args.sources // sim)))
    base = load_artifact(args.model)
    result: dict[str, Any] = {"cpusplit_records": sum(len(v) for v in parts.values())}
    for mode, compiled in (("plain", False), ("compiled", True)):
        art = Artifact(base.encoder, base.prototypes, base.manifest, base.path, compiled=compiled)
        art.warm_up()
        result[f"cpusplit_us_per_record_{mode}"] = cpu_split(parts, art)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
