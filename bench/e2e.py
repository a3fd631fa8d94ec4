"""Streaming benchmarks on the embedded broker: ``e2e_ratio``, ``e2e_two_procs_ratio``, latency.

One broker; two identical pre-filled topics (``PARTITIONS`` partitions, simulated records keyed by
source, many sources):

* bare: a consumer of the daemons' client (kafka-python; ``NETSIAM_KAFKA__CLIENT=confluent-kafka``
  for librdkafka on both sides) with the daemon's own fetch settings, partitions assigned, no group,
  reads all N records of topic 1; records/s from its first poll with records to its last.
* one daemon (``netsiam detect`` subprocess, new group) on topic 1: records/s from the first
  scrape where its ``netsiam_records_consumed_total`` is non-zero (records consumed before that
  are not counted) until the group's committed offsets cover all N. Start-up (imports, model load,
  group join) is excluded; the final commit (every 0.5 s) is included.
* latency: the same daemon, now idle and caught up, gets a paced stream of new sources (simulated,
  with faults) at half the rate it just sustained, from ``bench.pace`` (its own process; it produces
  as ``netsiam collect`` does, and through confluent-kafka where installed). Per event:
  the event message's timestamp (CreateTime, stamped by the daemon's producer as it sends; its ack
  follows within a round trip) minus the broker ack time of the record that completed the
  triggering window (same source, ``ts == window_end``), so window fill time is not included.
  The daemon's own ``netsiam_record_to_event_seconds`` histogram is reported next to it.
* two daemons in one new group on topic 2: as for one, counting from when both consume.

CPU seconds per record (the daemon and broker processes; ``process_time`` of the bare consumer) are
reported too: on 2 shared cores throughput is mostly a CPU budget.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import yaml

from bench.common import REPO, Ctx, child_env, new_topics, run_json, trace_lines, unique_name
from bench.procstats import cpu_seconds
from bench.scrape import Scrape, scrape
from netsiam.broker import stop_process

__all__ = ["PARTITIONS", "bare_kafka_python", "bench_e2e", "daemon_config", "latency_trace", "pace"]

PARTITIONS = 4
POLL_S = 0.05


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # PR_SET_PDEATHSIG: a daemon left behind by a killed benchmark would reconnect forever
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


# -- processes ----------------------------------------------------------------------------------
class DaemonProc:
    """``python -m netsiam detect`` as a child; output to a log file; metrics scraped over HTTP."""

    def __init__(self, config: Path, model: Path, log: Path) -> None:
        self.log = log
        with log.open("ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "netsiam", "detect", "--config", str(config), "--model", str(model),
                 "--metrics-port", "0"], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=child_env(), cwd=REPO, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        self._port: int | None = None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.text():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({self.proc.returncode}):\n{self.text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError(f"daemon: no {needle!r} within {timeout_s:.0f} s:\n{self.text()[-2000:]}")

    @property
    def port(self) -> int:
        if self._port is None:
            m = re.search(r"metrics listening on http://[^:]+:(\d+)/", self.text())
            if not m:
                raise RuntimeError(f"daemon metrics port not logged:\n{self.text()[-2000:]}")
            self._port = int(m.group(1))
        return self._port

    def scrape(self) -> Scrape:
        return scrape(self.port)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def consumed(self) -> float:
        return self.scrape().value("netsiam_records_consumed_total")

    def stop(self, timeout_s: float = 30.0) -> None:
        stop_process(self.proc, timeout_s)


def daemon_config(ctx: Ctx, bootstrap: str, topics: Any, group: str, detector: Any = None) -> Path:
    """A benchmark daemon's config file (default detector settings unless ``detector`` is given, fast
    group timeouts, any metrics port)."""
    from netsiam.config import Config, DetectorConfig, KafkaConfig, MetricsConfig

    cfg = Config(kafka=KafkaConfig(bootstrap_servers=bootstrap, group_id=group, topics=topics,
                                   session_timeout_ms=6000, heartbeat_interval_ms=1000),
                 detector=detector or DetectorConfig(), metrics=MetricsConfig(port=0))
    path = ctx.tmp / f"{group}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


@contextlib.contextmanager
def daemons(n: int, ctx: Ctx, bootstrap: str, topics: Any, group: str, detector: Any = None
            ) -> Iterator[list[DaemonProc]]:
    """``n`` daemon processes in ``group``, each with partitions assigned (or an error)."""
    assert ctx.model is not None
    path = daemon_config(ctx, bootstrap, topics, group, detector)
    procs = [DaemonProc(path, ctx.model, ctx.tmp / f"{group}-{i}.log") for i in range(n)]
    try:
        for p in procs:
            p.wait_for("partitions assigned: ", 180)
        yield procs
    finally:
        for p in procs:
            p.stop()


# -- kafka helpers ------------------------------------------------------------------------------
def _committed_total(admin: Any, group: str, topic: str) -> int:
    offs = admin.list_group_offsets({group: None}).get(group, {})
    return sum(max(0, int(o.offset)) for tp, o in offs.items() if tp.topic == topic)


def _bare_polls(bootstrap: str, topic: str, client: str) -> tuple[Callable[[], int], Callable[[], None]]:
    """(poll: the number of records one poll returned, close) of a bare consumer of ``client`` with
    the daemon's fetch settings, every partition assigned from the beginning, no group."""
    from netsiam.config import KafkaConfig

    kcfg = KafkaConfig()
    if client == "confluent-kafka":
        import confluent_kafka

        from netsiam.confluent_consumer import consumer_config

        ck = confluent_kafka.Consumer(consumer_config(kcfg, bootstrap, unique_name("bare")))
        ck.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                   for p in range(PARTITIONS)])
        return lambda: len(ck.consume(kcfg.max_poll_records, 0.2)), ck.close
    c = bare_kafka_python(bootstrap, topic)
    return lambda: sum(len(v) for v in c.poll(timeout_ms=200).values()), c.close


def bare_kafka_python(bootstrap: str, topic: str) -> Any:
    """A kafka-python consumer with the daemon's fetch settings, every partition of ``topic``
    (``PARTITIONS``) assigned from the beginning, no group."""
    from kafka import KafkaConsumer, TopicPartition

    from netsiam.config import KafkaConfig
    from netsiam.kafka_io import consumer_kwargs

    c = KafkaConsumer(**consumer_kwargs(KafkaConfig(), bootstrap, None))
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    return c


def bare_consume(bootstrap: str, topic: str, n: int, broker_pid: int, timeout_s: float = 300.0,
                 client: str = "kafka-python") -> dict[str, float]:
    """A bare consumer reads the whole topic: records/s from its first records to its n-th, and CPU."""
    poll, close = _bare_polls(bootstrap, topic, client)
    try:
        got, first, t0, cpu0, bcpu0 = 0, 0, 0.0, 0.0, 0.0
        deadline = time.monotonic() + timeout_s
        while got < n and time.monotonic() < deadline:
            k = poll()
            if k and not got:
                t0, cpu0, bcpu0, first = time.perf_counter(), time.process_time(), cpu_seconds(broker_pid), k
            got += k
        if got < n:
            raise RuntimeError(f"bare consumer read {got}/{n} records")
        dt, done = time.perf_counter() - t0, n - first
        return {"rate": done / dt, "cpu_us": (time.process_time() - cpu0) / done * 1e6,
                "broker_cpu_us": (cpu_seconds(broker_pid) - bcpu0) / done * 1e6}
    finally:
        close()


def daemon_rate(procs: Sequence[DaemonProc], admin: Any, group: str, topic: str, n: int, broker_pid: int,
                timeout_s: float = 600.0) -> dict[str, float]:
    """Records/s of ``procs`` from the moment every one of them has consumed a record until the group's
    committed offsets cover all ``n`` records of ``topic`` (records consumed before that moment are
    not counted), seconds, and CPU per record (daemons, broker)."""
    deadline = time.monotonic() + timeout_s
    c0 = 0.0
    while time.monotonic() < deadline:
        counts = [p.consumed() for p in procs]
        if all(counts):  # every process is assigned and consuming
            c0 = sum(counts)
            break
        time.sleep(POLL_S / 2)
    t0, cpu0, bcpu0 = time.perf_counter(), sum(p.cpu() for p in procs), cpu_seconds(broker_pid)
    while time.monotonic() < deadline:
        if _committed_total(admin, group, topic) >= n:
            dt, done = time.perf_counter() - t0, n - c0
            return {"rate": done / dt, "seconds": dt, "cpu_us": (sum(p.cpu() for p in procs) - cpu0) / done * 1e6,
                    "broker_cpu_us": (cpu_seconds(broker_pid) - bcpu0) / done * 1e6}
        time.sleep(POLL_S)
    raise RuntimeError(f"group {group}: not all {n} records committed within {timeout_s:.0f} s")


def read_all(bootstrap: str, topic: str, partitions: int, idle_s: float = 1.0, timeout_s: float = 120.0) -> list[Any]:
    """Every message of ``topic`` from the beginning until ``idle_s`` brings nothing new."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: list[Any] = []
        last = time.monotonic()
        deadline = last + timeout_s
        while time.monotonic() < deadline and time.monotonic() - last < idle_s:
            polled = c.poll(timeout_ms=200)
            for msgs in polled.values():
                out.extend(msgs)
            if polled:
                last = time.monotonic()
        return out
    finally:
        c.close()


# -- latency --------------------------------------------------------------------------------------
def _hist_quantile_le(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float) -> float | None:
    """Upper bound (bucket ``le``) of quantile ``q`` of the observations between two scrapes."""
    prev = dict(before)
    diff = [(le, c - prev.get(le, 0.0)) for le, c in after]
    total = diff[-1][1] if diff else 0.0
    if total <= 0:
        return None
    return next((le for le, c in diff if c >= q * total), None)


def latency_trace(ctx: Ctx, records_per_s: float) -> tuple[int, Path]:
    """The paced stream's records (new sources ``lat-*``, simulated, faults included; ~25 s of them at
    ``records_per_s``, 6 s in ``--quick``), written to a file: (number of records, path)."""
    wall_s = 6.0 if ctx.quick else 25.0
    sim_sources, copies = (8, 5) if ctx.quick else (20, 10)
    minutes = max(2.0, wall_s * records_per_s / (sim_sources * copies) / 60.0)
    lines = [re.sub(rb'"source":"', b'"source":"lat-', ln, count=1)
             for ln in trace_lines(sim_sources, minutes, seed=321, copies=copies)]
    trace = ctx.tmp / "latency.jsonl"
    trace.write_bytes(b"\n".join(lines) + b"\n")
    return len(lines), trace


def pace(trace: Path, bootstrap: str, topic: str, records_per_s: float, acks_path: Path) -> dict[str, Any]:
    """Play ``trace`` into ``topic`` at ``records_per_s`` (``bench.pace``, its own process); its stats."""
    return run_json("bench.pace", [str(trace), "--bootstrap", bootstrap, "--topic", topic,
                                   "--rate", f"{records_per_s:.1f}", "--acks", str(acks_path)], timeout_s=600)


def measure_latency(ctx: Ctx, proc: DaemonProc, bootstrap: str, topics: Any, admin: Any, group: str,
                    records_per_s: float, prefilled: int) -> dict[str, Any]:
    """Paced stream at ``records_per_s`` into the running daemon; record->event latency per event."""
    n_lines, trace = latency_trace(ctx, records_per_s)
    acks_path = ctx.tmp / "latency-acks.json"
    before = proc.scrape()
    stats = pace(trace, bootstrap, topics.samples, records_per_s, acks_path)
    total = prefilled + n_lines
    deadline = time.monotonic() + 60
    while _committed_total(admin, group, topics.samples) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    after = proc.scrape()
    acked = {(str(src), float(ts)): float(ms) for src, ts, ms in orjson.loads(acks_path.read_bytes())}
    lat_ms = []
    for m in read_all(bootstrap, topics.faults, 1):
        ev = orjson.loads(m.value)
        ack = acked.get((ev["source"], float(ev["window_end"])))
        if ack:  # the record whose arrival completed the window that caused the transition
            lat_ms.append(m.timestamp - ack)
    hist = "netsiam_record_to_event_seconds"
    p99_le = _hist_quantile_le(before.buckets(hist), after.buckets(hist), 0.99)
    arr = np.asarray(lat_ms, dtype=np.float64)

    def delta(key: str) -> float:
        return after.value(key) - before.value(key)

    batches = max(delta("netsiam_embed_batch_seconds_count"), 1.0)
    return {
        "p50_latency_ms": round(float(np.percentile(arr, 50)), 1) if len(arr) else None,
        "p99_latency_ms": round(float(np.percentile(arr, 99)), 1) if len(arr) else None,
        "latency_events": len(arr),
        "latency_target_records_per_s": round(records_per_s),
        "latency_offered_records_per_s": round(stats["rate"]),
        "latency_producer_max_behind_s": stats["max_behind_s"],
        "latency_producer_client": stats["client"],
        "latency_daemon_hist_p99_le_ms": None if p99_le is None else round(p99_le * 1000),
        # where the time goes: the daemon's micro-batches during the paced stream
        "latency_embed_batch_mean_ms": round(delta("netsiam_embed_batch_seconds_sum") / batches * 1000, 1),
        "latency_embed_batch_mean_windows": round(delta("netsiam_embed_batch_size_sum") / batches, 1),
    }


# -- the benchmark ----------------------------------------------------------------------------------
def bench_e2e(ctx: Ctx) -> dict[str, Any]:
    from kafka import KafkaAdminClient

    from netsiam.broker import start_broker
    from netsiam.config import KafkaConfig
    from netsiam.replay import replay_lines
    from netsiam.settings import env_overrides

    sim_sources, minutes, copies = (8, 10, 3) if ctx.quick else (20, 25, 10)
    lines = trace_lines(sim_sources, minutes, seed=99, copies=copies)
    n = len(lines)
    # the daemons read kafka.client from the environment too (child_env): both sides on one client
    client = str(env_overrides(os.environ).get("kafka.client", KafkaConfig().client))
    out: dict[str, Any] = {"e2e_records": n, "e2e_sources": sim_sources * copies, "e2e_partitions": PARTITIONS,
                           "e2e_client": client}
    with start_broker(0, log_path=ctx.tmp / "tansu.log") as bp:
        # two identical pre-filled topics: one for the bare consumer and one daemon (then the latency
        # stream), one for two daemons
        topics = []
        for tag in ("one", "two"):
            t = new_topics(bp.bootstrap, tag, PARTITIONS)
            stats = replay_lines(lines, bp.bootstrap, t.samples)
            if stats.failed:
                raise RuntimeError(f"pre-fill failed: {stats.error}")
            out["e2e_prefill_records_per_s"] = round(stats.rate)
            topics.append(t)
        t1, t2 = topics
        admin = KafkaAdminClient(bootstrap_servers=bp.bootstrap)
        broker = bp.proc.pid
        try:
            bare = bare_consume(bp.bootstrap, t1.samples, n, broker, client=client)
            out["e2e_bare_records_per_s"] = round(bare["rate"])
            # one daemon: throughput, then latency at half that rate
            g1 = unique_name("g1")
            with daemons(1, ctx, bp.bootstrap, t1, g1) as (d,):
                one = daemon_rate([d], admin, g1, t1.samples, n, broker)
                out["e2e_daemon_records_per_s"] = round(one["rate"])
                out["e2e_ratio"] = round(one["rate"] / bare["rate"], 3)
                out.update(measure_latency(ctx, d, bp.bootstrap, t1, admin, g1, one["rate"] / 2, n))
            # two daemons in one group
            g2 = unique_name("g2")
            with daemons(2, ctx, bp.bootstrap, t2, g2) as procs:
                two = daemon_rate(procs, admin, g2, t2.samples, n, broker)
                out["e2e_two_procs_records_per_s"] = round(two["rate"])
                out["e2e_two_procs_ratio"] = round(two["rate"] / one["rate"], 3)
                out["e2e_two_procs_assignments"] = sum(p.text().count("partitions assigned: ") for p in procs)
            out["e2e_cpu_us_per_record"] = {
                "bare": round(bare["cpu_us"], 1), "daemon": round(one["cpu_us"], 1),
                "two_daemons": round(two["cpu_us"], 1), "broker_bare": round(bare["broker_cpu_us"], 1),
                "broker_daemon": round(one["broker_cpu_us"], 1)}
        finally:
            admin.close()
    return out


def latency_sweep(ctx: Ctx, rates: Sequence[float], detector: Any = None) -> Iterator[dict[str, Any]]:
    """Record->event latency alone at each offered rate: a fresh broker, topic and daemon per rate."""
    from kafka import KafkaAdminClient

    from netsiam.broker import start_broker

    for r in rates:
        with start_broker(0, log_path=ctx.tmp / "tansu-latency.log") as bp:
            t = new_topics(bp.bootstrap, "lat", PARTITIONS)
            admin = KafkaAdminClient(bootstrap_servers=bp.bootstrap)
            try:
                g = unique_name("g")
                with daemons(1, ctx, bp.bootstrap, t, g, detector) as (d,):
                    yield {"rate": r, **measure_latency(ctx, d, bp.bootstrap, t, admin, g, r, 0)}
            finally:
                admin.close()


if __name__ == "__main__":  # pragma: no cover - manual runs: python -m bench.e2e [--quick] [--latency R,R..] MODEL_DIR
    import argparse
    import json
    import shutil

    from netsiam.config import DetectorConfig

    ap = argparse.ArgumentParser(prog="python -m bench.e2e")
    ap.add_argument("model", type=Path)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--latency", default="", help="only the latency, at these records/s (comma-separated)")
    ap.add_argument("--batch-wait-ms", type=int, default=None, help="with --latency: the daemon's detector.batch_wait_ms")
    args = ap.parse_args()
    ctx = Ctx(quick=args.quick, model=args.model)
    det = None if args.batch_wait_ms is None else DetectorConfig(batch_wait_ms=args.batch_wait_ms)
    try:
        if args.latency:
            for row in latency_sweep(ctx, [float(x) for x in args.latency.split(",")], det):
                print(json.dumps(row), flush=True)
        else:
            print(json.dumps(bench_e2e(ctx), indent=2))
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
