"""``rss_mib_per_1k_sources``: daemon memory as the number of tracked sources grows.

``python -m bench.rss --model DIR --sizes 10,1000,10000`` builds the daemon's per-source state
through the daemon's own code path in one fresh process that holds the model as the daemon does:
for each source, ``T + 3 S`` records go through :meth:`Pipeline.feed` (decode, window buffer,
offsets), its three windows are taken as a batch and applied (:meth:`Pipeline.apply`: debounce,
gauges) with a synthetic classification where every third source is ``blocked`` (a raised fault,
so it holds a ``netsiam_fault_active`` series, as ~30 % of a real fleet may). No embedding runs:
it allocates nothing per source. Sources are added in chunks, so the messages themselves never
pile up; the resident set size is read after each size is reached. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import gc
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson

from bench.procstats import rss_bytes
from tests.helpers import Msg  # the tests' fake Kafka message: what Pipeline.feed reads

__all__ = ["main"]

CHUNK = 200  # sources fed (and their messages freed) at a time


def _records(first: int, count: int, n_records: int, interval: float, offset: int) -> Iterator[Msg]:
    """``n_records`` consecutive samples for each of ``count`` sources, in time order."""
    t0 = 1795384000.0
    for k in range(n_records):
        for s in range(first, first + count):
            value = orjson.dumps({"source": f"bench-src-{s:06d}", "ts": t0 + k * interval,
                                  "metrics": {"OutgoingCall": 50 + s % 7, "SuccessfulCall": 48, "FailedCall": 1,
                                              "Retransmissions": 2, "CurrentCall": 400 + k % 5,
                                              "ResponseTime1": 12.5, "FailedMaxUDPRetrans": 0,
                                              "FailedTimeoutOnRecv": 0}})
            yield Msg("bench", 0, offset, int((t0 + k * interval) * 1000), None, value)
            offset += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="artifact directory to hold in memory, as the daemon does")
    ap.add_argument("--sizes", default="10,1000,10000", help="comma-separated source counts, increasing")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    from prometheus_client import CollectorRegistry

    from netsiam.config import Config
    from netsiam.detector.batch import BatchResult
    from netsiam.detector.metrics import DetectorMetrics
    from netsiam.detector.pipeline import Pipeline
    from netsiam.detector.reload import warm_up
    from netsiam.features import RAW_METRICS
    from netsiam.schemas.classes import BLOCKED, NORMAL
    from netsiam.serving import load_artifact

    art = load_artifact(args.model)
    warm_up(art)
    cfg = Config()
    pipe = Pipeline(cfg, art, DetectorMetrics(CollectorRegistry()))
    w = art.window
    n_records = w.length + 3 * w.stride
    classes = list(art.prototypes.classes)
    dim = int(art.encoder.output_shape[-1])
    tp = ("bench", 0)
    offset = 0

    def add(first: int, count: int) -> None:
        nonlocal offset
        msgs = list(_records(first, count, n_records, w.interval_s, offset))
        offset += len(msgs)
        for i in range(0, len(msgs), 2000):
            pipe.feed(tp, msgs[i:i + 2000])
        batch = pipe.take_batch()
        if batch is not None:
            names = np.array([BLOCKED if int(w.state.name[-6:]) % 3 == 0 and BLOCKED in classes else NORMAL
                              for w in batch.items], dtype=object)
            n = len(names)
            pipe.apply(batch, BatchResult(names, np.zeros(n), np.zeros((n, len(classes))), np.zeros((n, dim)), 0.0))
        pipe.take_outbox()

    # warm-up: every code path once, and one full chunk, so the allocator's high-water mark from a
    # chunk's transient messages and batch is reached before the baseline (these sources stay)
    add(10**6 - CHUNK, CHUNK)
    gc.collect()
    base = rss_bytes()
    out: dict[str, Any] = {"rss_base_mib": round(base / 2**20, 1)}
    done = 0
    points = []
    for size in sizes:
        while done < size:
            count = min(CHUNK, size - done)
            add(done, count)
            done += count
        gc.collect()
        now = rss_bytes()
        points.append((size, now))
        out[f"rss_mib_at_{size}_sources"] = round(now / 2**20, 1)
    assert len(pipe.sources) == sizes[-1] + CHUNK, len(pipe.sources)
    window_bytes = w.length * len(RAW_METRICS) * 8
    (n_lo, lo), (n_hi, hi) = points[-2] if len(points) > 1 else (0, base), points[-1]
    per_source = (hi - lo) / (n_hi - n_lo)
    out.update({
        "rss_window_buffer_bytes": window_bytes,
        "rss_bytes_per_source": round(per_source),
        "rss_kib_per_source_beyond_window": round((per_source - window_bytes) / 1024, 2),
        "rss_mib_per_1k_sources": round(per_source * 1000 / 2**20, 2),
        "rss_faulted_sources": sum(1 for st in pipe.sources.values() if st.tracker.active is not None),
    })
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
