"""``max_sources_1hz``: how many sources one daemon holds at one record per second each, lag bounded.

One ``netsiam detect`` process (a subprocess; the default configuration but for the broker, fast
group timeouts and silence watching off, see below) on a 4-partition topic of the embedded broker.
A paced producer in its own process (:mod:`bench.sources_driver`, confluent-kafka where it
is installed) plays N sources: every second of wall-clock time each source sends one record
stamped with the next second of record time (``ts``), the N records spread evenly over the second
(a fleet's sources are not in step). Values come from simulated traffic, faults included (20
simulated sources; source ``i`` replays simulated source ``i % 20`` from its own offset).

One step holds N sources, each a new generation of them: the driver stops the previous sources and
sends ``T - 1`` records for each new one at once (``T`` the model's window), its record time
``idle_evict_s + 100`` s past the last one sent, so the daemon forgets the previous generation (idle
by record time) and holds these N only. Once the daemon has consumed all of it, the driver paces
them; with a full window, each source's every paced record is a decision (``window.stride`` 1).
After ``SETTLE_S``, ``steady_s`` seconds are sampled every ``SAMPLE_S`` (the daemon's ``/metrics``
and CPU, the driver's progress, the machine's CPU). The step held when, over that period:

* lag bounded: records sent minus ``netsiam_records_consumed_total`` stayed under ``MAX_LAG_S``
  seconds of records (2 N) at every sample (the step is cut short the moment it does not);
* no drift: the daemon consumed at least ``MIN_RATE_RATIO`` of the rate sent (a backlog growing by
  a few per cent of N a second can stay under 2 N for a whole steady period);
* a decision per source per second: ``netsiam_windows_embedded_total`` grew by at least
  ``MIN_WINDOW_RATIO`` N a second;
* and the driver kept its pace (no record sent more than ``MAX_BEHIND_S`` after it was due); if it
  did not, the step says ``driver`` and the search stops: what failed was not the daemon.

The search: N doubles from ``start`` until a step fails, then bisects between the largest N that
held and the smallest that failed, until they are within ``resolution`` or the step or time budget
is spent. ``max_sources_1hz`` is the largest N that held. Each step starts from a daemon that has
caught up, so a failed step's backlog does not count against the next. Silence watching is off
(``detector.silent_after_s: 0``): every previous generation would raise ``silent`` first. The
per-record liveness bookkeeping is the same either way (one queue per partition also decides idle
eviction, detector/liveness.py); the wall-clock partition check (every 2 s) is off.

Each sample asks the daemon's ``/metrics`` for the few counters it reads (``name[]``). Beside it, a
thread scrapes all of ``/metrics`` as the shipped Prometheus does (deploy/prometheus/prometheus.yml:
the detector job's ``scrape_interval``, 5 s), one series per tracked source
(``netsiam_source_last_record_timestamp_seconds``) included: the daemon does Prometheus' work at the
deployed rate. (Until 2026-12-03 every 2-s sample was a full scrape: at 18,000 sources rendering it
held the GIL ~10 % of the time, 2.5 times the deployed cost.) Not in ``--quick``: the daemon's start alone
is longer than the smoke test allows. Manual runs: ``python -m bench.sources MODEL_DIR [--start N]
[--steady-s S] [--max-steps K]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import REPO, Ctx, new_topics, unique_name
from bench.procstats import thread_cpu_seconds
from bench.sources_driver import Driver

__all__ = ["Sample", "Step", "bench_sources", "detector_scrape_interval", "judge", "next_size", "search"]

PARTITIONS = 4
SAMPLE_S = 2.0
SETTLE_S = 3.0
DRAIN_MAX_S = 90.0
STEADY_S = 20.0
MAX_LAG_S = 2.0
MIN_RATE_RATIO = 0.97
MIN_WINDOW_RATIO = 0.95
MAX_BEHIND_S = 0.5
SOURCE_SERIES = "netsiam_source_last_record_timestamp_seconds"
SAMPLED = ("netsiam_records_consumed_total", "netsiam_windows_embedded_total", "netsiam_embed_batch_seconds_sum",
           "netsiam_embed_batch_size_sum", "netsiam_embed_batch_size_count")   # the samples a Sample reads
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
NEVER = -(10**9)


# -- one step, and the search -------------------------------------------------------------------
@dataclass
class Sample:
    """What is known at one instant: the daemon's counters and CPU, the driver's, the machine's."""

    t: float
    sent: int
    consumed: float
    windows: float
    embed_s: float = 0.0
    batches: float = 0.0
    batch_windows: float = 0.0
    daemon_cpu: float = 0.0
    broker_cpu: float = 0.0
    driver_cpu: float = 0.0
    foreign_cores: float = 0.0  # every other process (the whole period, set by the caller)
    gen: int = 0                # the driver's generations started, from the same progress line as ``sent``

    @property
    def lag(self) -> float:
        return max(0.0, self.sent - self.consumed)


@dataclass
class Step:
    n: int
    ok: bool
    why: str
    stats: dict[str, Any] = field(default_factory=dict)


def judge(n: int, first: Sample, last: Sample, max_lag: float, behind_s: float) -> tuple[bool, str, dict[str, Any]]:
    """Did the steady period from ``first`` to ``last`` hold ``n`` sources? (ok, why, figures)."""
    dt = max(last.t - first.t, 1e-9)
    sent_rate = (last.sent - first.sent) / dt
    rate = (last.consumed - first.consumed) / dt
    wins = (last.windows - first.windows) / dt
    batches = last.batches - first.batches
    cores = {k: round((getattr(last, f"{k}_cpu") - getattr(first, f"{k}_cpu")) / dt, 2)
             for k in ("daemon", "broker", "driver")}
    stats: dict[str, Any] = {
        "seconds": round(dt, 1),
        "sent_per_s": round(sent_rate),
        "records_per_s": round(rate),
        "windows_per_s": round(wins),
        "max_lag_s": round(max_lag / n, 2),
        "driver_max_behind_s": round(behind_s, 3),
        "daemon_cores": cores["daemon"],
        "daemon_cpu_us_per_record": round((last.daemon_cpu - first.daemon_cpu) / max(rate * dt, 1.0) * 1e6, 1),
        "embed_busy": round((last.embed_s - first.embed_s) / dt, 2),   # share of the embed thread's time
        "embed_batch_mean_windows": round((last.batch_windows - first.batch_windows) / batches, 1) if batches else None,
        "broker_cores": cores["broker"],
        "driver_cores": cores["driver"],
        "foreign_cores": round(last.foreign_cores, 2),
        "machine_cores": round(sum(cores.values()) + last.foreign_cores, 2),
    }
    if behind_s > MAX_BEHIND_S:
        return False, "driver", stats
    if max_lag >= MAX_LAG_S * n:
        return False, "lag", stats
    if rate < MIN_RATE_RATIO * sent_rate:
        return False, "drift", stats
    if wins < MIN_WINDOW_RATIO * n:
        return False, "windows", stats
    return True, "held", stats


def _round2(x: float) -> int:
    """``x`` to two significant digits (step sizes that read well: 6,000, 7,500, 750)."""
    if x < 10:
        return max(1, round(x))
    q = 10 ** (int(math.log10(x)) - 1)
    return int(round(x / q) * q)


def next_size(lo: int, hi: int | None, last: int, *, resolution: float, cap: int, floor: int = 10) -> int | None:
    """The next number of sources to try: double the last while every step held (up to ``cap``),
    then bisect between ``lo`` (largest held, 0 for none) and ``hi`` (smallest failed); None: done."""
    if hi is None:
        return min(2 * last, cap) if last < cap else None
    if lo and hi - lo <= resolution * lo:
        return None
    n = _round2((lo + hi) / 2)
    if n <= lo or n >= hi or n < floor:
        return None
    return n


def search(hold: Callable[[int], Step], start: int, *, resolution: float = 0.25, cap: int = 64_000,
           max_steps: int = 6, budget_s: float = 200.0, clock: Callable[[], float] = time.monotonic
           ) -> tuple[int, list[Step]]:
    """Largest N that ``hold`` says held, and every step. Stops at a ``driver`` step (the figure is
    then the driver's limit, not the daemon's), after ``max_steps`` or once ``budget_s`` is spent."""
    lo, hi = 0, None
    steps: list[Step] = []
    n: int | None = start
    t0 = clock()
    while n is not None and len(steps) < max_steps and clock() - t0 < budget_s:
        step = hold(n)
        steps.append(step)
        if step.why == "driver":
            break
        if step.ok:
            lo = max(lo, n)
        else:
            hi = n if hi is None else min(hi, n)
        n = next_size(lo, hi, n, resolution=resolution, cap=cap)
    return lo, steps


class Bench:
    """The broker, the daemon and the driver of one run, sampled together."""

    def __init__(self, daemon: Any, driver: Driver, broker_pid: int, steady_s: float) -> None:
        from bench.procstats import ForeignCpu

        self.daemon = daemon
        self.driver = driver
        self.broker_pid = broker_pid
        self.steady_s = steady_s
        self.gen = 0
        pids = [daemon.proc.pid, broker_pid, driver.proc.pid, os.getpid()]
        self.foreign = lambda: ForeignCpu(pids)  # CPU cores of every other process, from now on

    def sample(self) -> tuple[Sample, float]:
        from bench.procstats import cpu_seconds
        from bench.scrape import scrape

        s = scrape(self.daemon.port, names=SAMPLED)
        progress, behind = self.driver.take()
        if self.driver.proc.poll() is not None:
            raise RuntimeError(f"the driver exited ({self.driver.proc.returncode}); see its log")
        return Sample(
            t=time.monotonic(), sent=int(progress.get("sent", 0)),
            consumed=s.value("netsiam_records_consumed_total"), windows=s.value("netsiam_windows_embedded_total"),
            embed_s=s.value("netsiam_embed_batch_seconds_sum"), batches=s.value("netsiam_embed_batch_size_count"),
            batch_windows=s.value("netsiam_embed_batch_size_sum"), daemon_cpu=self.daemon.cpu(),
            broker_cpu=cpu_seconds(self.broker_pid), driver_cpu=float(progress.get("cpu", 0.0)),
            gen=int(progress.get("gen", 0))), behind

    def _drained(self, gen: int, timeout_s: float) -> Sample | None:
        """Wait until the driver has sent generation ``gen``'s warm-up and the daemon has consumed
        every record sent; the sample then, or None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            # gen and sent from one progress line: read apart, a line printed in between (the
            # warm-up just sent) paired the new gen with the old count and ended the drain at once
            s, _ = self.sample()
            if s.gen == gen and s.consumed >= s.sent:
                return s
            time.sleep(0.5)
        return None

    def hold(self, n: int) -> Step:
        """One step: a new generation of ``n`` sources, warmed up and drained, then paced."""
        self.gen += 1
        self.driver.command(f"gen {n}")
        if self._drained(self.gen, DRAIN_MAX_S) is None:
            raise RuntimeError(f"{n} sources: the warm-up was not consumed within {DRAIN_MAX_S:.0f} s")
        self.driver.command("go")
        started, _ = self.sample()
        foreign = self.foreign()
        time.sleep(SETTLE_S)
        first, _ = self.sample()
        if first.lag >= MAX_LAG_S * n:  # lagging already: what figures there are come from the settle period
            first.foreign_cores = foreign()
            ok, why, stats = judge(n, started, first, first.lag, 0.0)
        else:
            foreign = self.foreign()  # the steady period's
            threads0 = thread_cpu_seconds(self.daemon.proc.pid)
            last, max_lag, behind = first, first.lag, 0.0
            while last.t - first.t < self.steady_s - 1e-3 and max_lag < MAX_LAG_S * n:  # cut short once lagging
                time.sleep(max(0.0, min(SAMPLE_S, first.t + self.steady_s - time.monotonic())))
                last, b = self.sample()
                max_lag, behind = max(max_lag, last.lag), max(behind, b)
            last.foreign_cores = foreign()
            ok, why, stats = judge(n, first, last, max_lag, behind)
            stats["daemon_threads_cores"] = _busiest(threads0, thread_cpu_seconds(self.daemon.proc.pid),
                                                     last.t - first.t)
        stats["loadavg"] = _loadavg()
        print(f"bench sources: {n} sources {why} {json.dumps(stats)}", file=sys.stderr, flush=True)
        return Step(n, ok, why, stats)


def _busiest(before: dict[str, float], after: dict[str, float], dt: float, top: int = 4) -> dict[str, float]:
    """Cores used by each of the ``top`` busiest threads between two readings, the rest together."""
    used = sorted(((after[k] - before.get(k, 0.0)) / max(dt, 1e-9), k) for k in after)[::-1]
    out = {k: round(c, 2) for c, k in used[:top]}
    out["others"] = round(sum(c for c, _ in used[top:]), 2)
    return out


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def detector_scrape_interval(path: Path = PROMETHEUS_YML) -> float:
    """Seconds between the shipped Prometheus' scrapes of the detector (its job's ``scrape_interval``)."""
    import yaml

    cfg = yaml.safe_load(path.read_text())
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "netsiam-detector")
    text = str(job.get("scrape_interval", cfg["global"]["scrape_interval"]))
    if not text.endswith("s") or text.endswith("ms"):
        raise ValueError(f"{path}: detector scrape_interval {text!r} is not in seconds")
    return float(text[:-1])


@contextlib.contextmanager
def _prometheus(port: int, every_s: float) -> Iterator[None]:
    """Scrape all of the daemon's ``/metrics`` every ``every_s`` while the block runs, as Prometheus does."""
    import urllib.request

    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(OSError), urllib.request.urlopen(  # noqa: S310 - loopback
                    f"http://127.0.0.1:{port}/metrics", timeout=every_s) as r:
                r.read()

    th = threading.Thread(target=run, name="bench-prometheus", daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join(every_s + 1)


@contextlib.contextmanager
def _running(ctx: Ctx, steady_s: float) -> Iterator[tuple[Bench, str]]:
    """Broker, topic, one daemon (silence watching off), the driver."""
    import importlib.util

    from bench.e2e import daemons
    from netsiam.broker import start_broker
    from netsiam.config import DetectorConfig

    assert ctx.model is not None
    manifest = json.loads((ctx.model / "manifest.json").read_text())
    warmup = int(manifest["window"]["length"]) - 1
    client = "confluent-kafka" if importlib.util.find_spec("confluent_kafka") else "kafka-python"
    with start_broker(0, log_path=ctx.tmp / "tansu-sources.log") as bp:
        topics = new_topics(bp.bootstrap, "src", PARTITIONS)
        det = DetectorConfig(silent_after_s=0.0)
        with daemons(1, ctx, bp.bootstrap, topics, unique_name("gsrc"), detector=det) as (d,):
            driver = Driver(bp.bootstrap, topics.samples, warmup, det.idle_evict_s + 100, client,
                            ctx.tmp / "sources-driver.log")
            try:
                with _prometheus(d.port, detector_scrape_interval()):
                    yield Bench(d, driver, bp.proc.pid, steady_s), client
            finally:
                driver.close()


def bench_sources(ctx: Ctx, start: int = 2500, steady_s: float = STEADY_S, max_steps: int = 6,
                  budget_s: float = 200.0) -> dict[str, Any]:
    # 200 s: room for six steps (~30 s each), so the bisection after the first failure reaches its
    # resolution; 120 s stopped it at 10,000 twice, a lower bound rather than the figure
    if ctx.quick:
        return {}  # the daemon's start alone is longer than the smoke test's share
    load0 = _loadavg()
    t0 = time.monotonic()
    with _running(ctx, steady_s) as (bench, client):
        best, steps = search(bench.hold, start, max_steps=max_steps, budget_s=budget_s)
    held = [s for s in steps if s.ok and s.n == best]
    failed = [s for s in steps if not s.ok]
    top = held[-1].stats if held else {}
    limit = "driver" if any(s.why == "driver" for s in steps) else ("daemon" if failed else "search budget")
    out: dict[str, Any] = {
        "max_sources_1hz": best,
        "sources_first_failed": min((s.n for s in failed), default=None),
        "sources_limited_by": limit,
        "sources_records_per_s": top.get("records_per_s"),
        "sources_windows_per_s": top.get("windows_per_s"),
        "sources_max_lag_s": top.get("max_lag_s"),
        "sources_daemon_cores": top.get("daemon_cores"),
        "sources_daemon_cpu_us_per_record": top.get("daemon_cpu_us_per_record"),
        "sources_embed_batch_mean_windows": top.get("embed_batch_mean_windows"),
        "sources_broker_cores": top.get("broker_cores"),
        "sources_driver_cores": top.get("driver_cores"),
        "sources_foreign_cores": top.get("foreign_cores"),
        "sources_machine_cores": top.get("machine_cores"),
        "sources_daemon_threads_cores": top.get("daemon_threads_cores"),
        "sources_driver_kept_pace": all(s.why != "driver" for s in steps),
        "sources_driver_client": client,
        "sources_steady_s": steady_s,
        "sources_prometheus_scrape_s": detector_scrape_interval(),
        "sources_loadavg": f"{load0} at start, {_loadavg()} at the end",
        "sources_seconds": round(time.monotonic() - t0, 1),
        # every step, in order (nested: results.json only)
        "sources_steps": {f"{i + 1}: {s.n}": {"held": s.ok, "why": s.why, **s.stats} for i, s in enumerate(steps)},
    }
    return out


def main(argv: list[str] | None = None) -> int:
    import shutil

    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--start", type=int, default=2500)
    ap.add_argument("--steady-s", type=float, default=STEADY_S)
    ap.add_argument("--max-steps", type=int, default=6)
    args = ap.parse_args(argv)
    ctx = Ctx(quick=False, model=Path(args.model))
    try:
        print(json.dumps(bench_sources(ctx, args.start, args.steady_s, args.max_steps), indent=2))
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
