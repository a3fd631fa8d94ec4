"""``max_sources_1hz``: how many sources one daemon holds at one record per second each, lag bounded.

One ``netsiam detect`` process (a subprocess, the default configuration but for the broker, fast
group timeouts and silence watching off, see below) on a 4-partition topic of the embedded broker.
A paced producer in its own process (``python -m bench.sources produce``, confluent-kafka where it
is installed) plays N sources: every second of wall-clock time each active source sends one record
stamped with the next second of record time (``ts``), the N records spread evenly over the second
(the sources are not in step, as a real fleet is not). Values come from simulated traffic (20
simulated sources, faults included, source ``i`` replaying simulated source ``i % 20`` from its own
offset, so events are not in step either). The parent tells the producer how many sources to play
(a line on its stdin, taking effect at the next second); a source that joins first sends ``T - 1``
records at once (ts one second apart, ending one second in the past), so that its window is full
and its very first paced record is a decision: a decision per source per second from then on
(``window.stride`` 1).

One step holds N sources: a settle period (at least ``SETTLE_MIN_S``, until the daemon has caught
up with the joining sources' records, at most ``SETTLE_MAX_S``), then ``steady_s`` seconds sampled
every ``SAMPLE_S`` (the daemon's ``/metrics``, its CPU, the producer's progress). It holds when,
over the steady period:

* lag bounded: records sent minus ``netsiam_records_consumed_total`` stays under ``MAX_LAG_S``
  seconds of records (2 N) at every sample (a step is cut short the moment it does not);
* no drift: the daemon consumed at least ``MIN_RATE_RATIO`` of the rate sent (a backlog growing by
  a few per cent of N a second can stay under 2 N for a whole steady period);
* a decision per source per second: ``netsiam_windows_embedded_total`` grew by at least
  ``MIN_WINDOW_RATIO`` N per second;
* and the driver kept its pace (no record sent more than ``MAX_BEHIND_S`` after it was due): when
  it did not, the step says ``driver`` and the search stops, as what failed was not the daemon.

The search: N doubles from ``start`` until a step fails, then bisects between the largest step
that held and the smallest that failed, until they are within ``resolution`` of each other or the
step/time budget is spent. ``max_sources_1hz`` is the largest N that held. Going down a step stops
sources; with silence watching on (``detector.silent_after_s``) each would raise ``silent`` 30 s
later, in a later step, so the benchmark daemon runs with ``silent_after_s: 0``: the per-record
liveness bookkeeping is the same either way (the one queue per partition that also decides idle
eviction, detector/liveness.py); only those artificial events and the wall-clock partition check
are gone.

Scraping is every ``SAMPLE_S`` (2 s): a scrape renders one series per tracked source
(``netsiam_source_last_record_timestamp_seconds``), work done by the daemon; those lines are
dropped before parsing here. Not in ``--quick``: the daemon's start alone takes longer than the
smoke test allows. Manual runs: ``python -m bench.sources MODEL_DIR [--start N] [--steady-s S]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from bench.common import REPO, Ctx, child_env, trace_lines

__all__ = ["Sample", "Step", "bench_sources", "judge", "next_size", "search"]

PARTITIONS = 4
SAMPLE_S = 2.0
SETTLE_MIN_S = 4.0
SETTLE_MAX_S = 25.0
STEADY_S = 20.0
MAX_LAG_S = 2.0
MIN_RATE_RATIO = 0.97
MIN_WINDOW_RATIO = 0.95
MAX_BEHIND_S = 0.5
SOURCE_SERIES = "netsiam_source_last_record_timestamp_seconds"
TEMPLATE_SOURCES = 20
NEVER = -(10**9)


# -- the producer (its own process) ------------------------------------------------------------
def _templates(n: int, minutes: float, seed: int) -> list[list[Any]]:
    """Per simulated source, its metrics objects second by second."""
    per: dict[str, list[Any]] = {}
    for line in trace_lines(n, minutes, seed=seed):
        obj = orjson.loads(line)
        per.setdefault(obj["source"], []).append(obj["metrics"])
    return list(per.values())


def produce_main(argv: list[str]) -> int:
    """``python -m bench.sources produce --bootstrap H:P --topic T --warmup W``: play sources.

    stdin: a line ``N`` sets the number of sources from the next second on; ``stop`` (or EOF) ends.
    stdout: a JSON progress line every 0.1 s (``t`` monotonic, ``k`` second, ``n`` sources, ``sent``,
    ``acked``, ``failed``, ``behind_s`` the most a record was sent after it was due since the last
    line, ``cpu`` seconds of this process), and a last one with ``"done": true``.
    """
    from netsiam.config import KafkaConfig
    from netsiam.producer import producer_factory

    ap = argparse.ArgumentParser(prog="python -m bench.sources produce")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--warmup", type=int, required=True, help="records a joining source sends at once (T - 1)")
    ap.add_argument("--client", default="confluent-kafka")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args(argv)
    tmpl = _templates(TEMPLATE_SOURCES, 10, args.seed)
    period = len(tmpl[0])
    producer = producer_factory(KafkaConfig(client=args.client), args.bootstrap, linger_ms=5,
                                max_block_ms=10_000)()
    target = [0]
    stop = threading.Event()

    def read_commands() -> None:
        for line in sys.stdin:
            word = line.strip()
            if word == "stop":
                break
            if word:
                target[0] = int(word)
        stop.set()

    threading.Thread(target=read_commands, daemon=True).start()
    counts = {"acked": 0, "failed": 0}

    def on_delivery(exc: BaseException | None) -> None:
        counts["failed" if exc else "acked"] += 1

    names: list[str] = []
    keys: list[bytes] = []
    last: list[int] = []          # the last second each source sent (NEVER: none yet)
    ts0 = float(math.floor(time.time()))
    t0 = time.monotonic()
    sent = 0
    behind = 0.0
    last_report = 0.0

    def send(i: int, k: int) -> None:
        nonlocal sent
        metrics = tmpl[i % len(tmpl)][(k + 37 * i) % period]
        value = orjson.dumps({"source": names[i], "ts": ts0 + k, "metrics": metrics})
        producer.send(args.topic, keys[i], value, on_delivery)
        last[i] = k
        sent += 1

    def report(k: int, n: int, done: bool = False) -> None:
        nonlocal behind, last_report
        last_report = time.monotonic()
        line = {"t": round(last_report, 4), "k": k, "n": n, "sent": sent, **counts, "behind_s": round(behind, 4),
                "cpu": round(time.process_time(), 3)}
        if done:
            line["done"] = True
        print(json.dumps(line), flush=True)
        behind = 0.0

    k = 0
    n = 0
    while not stop.is_set():
        start = t0 + k
        wanted = target[0]
        while len(names) < wanted:
            names.append(f"bench-src-{len(names):06d}")
            keys.append(names[-1].encode())
            last.append(NEVER)
        for i in range(n, wanted):  # joining (or returning) sources fill their window at once
            for j in range(max(last[i] + 1, k - args.warmup), k):
                send(i, j)
        n = wanted
        j = 0
        while j < n and not stop.is_set():
            now = time.monotonic()
            due = min(n, int((now - start) * n) + 1)
            if due > j:
                behind = max(behind, now - (start + j / n))
                for i in range(j, due):
                    send(i, k)
                j = due
                producer.poll(0)
            else:
                time.sleep(min(0.005, max(0.0005, start + j / n - now)))
            if now - last_report >= 0.1:
                report(k, n)
        while not stop.is_set() and time.monotonic() < start + 1:  # idle second (n = 0) or done early
            producer.poll(0)
            time.sleep(min(0.005, max(0.0, start + 1 - time.monotonic())))
            if time.monotonic() - last_report >= 0.1:
                report(k, n)
        k += 1
    producer.close(10)
    report(k, n, done=True)
    return 0


class Driver:
    """The producer process: commands in, progress lines out (read on a thread)."""

    def __init__(self, bootstrap: str, topic: str, warmup: int, client: str, log: Path) -> None:
        from bench.e2e import _die_with_parent

        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sources", "produce", "--bootstrap", bootstrap, "--topic", topic,
             "--warmup", str(warmup), "--client", client],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=child_env(), cwd=REPO,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        self._lock = threading.Lock()
        self.last: dict[str, Any] = {}
        self._behind = 0.0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                with self._lock:
                    self.last = obj
                    self._behind = max(self._behind, float(obj.get("behind_s", 0.0)))

    def take(self) -> tuple[dict[str, Any], float]:
        """The latest progress line, and the most a record was late since the last call."""
        with self._lock:
            last, behind, self._behind = dict(self.last), self._behind, 0.0
        return last, behind

    def play(self, n: int) -> None:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(f"{n}\n")
        stdin.flush()

    def close(self, timeout_s: float = 20.0) -> dict[str, Any]:
        """Stop playing (the driver flushes), wait for it; its last progress line."""
        with contextlib.suppress(OSError, ValueError):
            stdin = self.proc.stdin
            assert stdin is not None
            stdin.write("stop\n")
            stdin.close()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        self._log.close()
        return self.last


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
    foreign_cores: float = 0.0

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
    stats = {
        "seconds": round(dt, 1),
        "sent_per_s": round(sent_rate),
        "records_per_s": round(rate),
        "windows_per_s": round(wins),
        "max_lag_s": round(max_lag / n, 2),
        "driver_max_behind_s": round(behind_s, 3),
        "daemon_cores": round((last.daemon_cpu - first.daemon_cpu) / dt, 2),
        "daemon_cpu_us_per_record": round((last.daemon_cpu - first.daemon_cpu) / max(rate * dt, 1.0) * 1e6, 1),
        "embed_busy": round((last.embed_s - first.embed_s) / dt, 2),   # share of the embed thread's time
        "embed_batch_mean_windows": round((last.batch_windows - first.batch_windows) / batches, 1) if batches else None,
        "broker_cores": round((last.broker_cpu - first.broker_cpu) / dt, 2),
        "driver_cores": round((last.driver_cpu - first.driver_cpu) / dt, 2),
        "foreign_cores": round(last.foreign_cores, 2),
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


def search(hold: Callable[[int], Step], start: int, *, resolution: float = 0.2, cap: int = 64_000,
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
        self.foreign = ForeignCpu([daemon.proc.pid, broker_pid, driver.proc.pid, os.getpid()])

    def sample(self) -> tuple[Sample, float]:
        from bench.procstats import cpu_seconds
        from bench.scrape import scrape

        s = scrape(self.daemon.port, drop=(SOURCE_SERIES,))
        progress, behind = self.driver.take()
        if self.driver.proc.poll() is not None:
            raise RuntimeError(f"the driver exited ({self.driver.proc.returncode}); see its log")
        return Sample(
            t=time.monotonic(), sent=int(progress.get("sent", 0)),
            consumed=s.value("netsiam_records_consumed_total"), windows=s.value("netsiam_windows_embedded_total"),
            embed_s=s.value("netsiam_embed_batch_seconds_sum"), batches=s.value("netsiam_embed_batch_size_count"),
            batch_windows=s.value("netsiam_embed_batch_size_sum"), daemon_cpu=self.daemon.cpu(),
            broker_cpu=cpu_seconds(self.broker_pid), driver_cpu=float(progress.get("cpu", 0.0)),
            foreign_cores=self.foreign()), behind

    def hold(self, n: int) -> Step:
        self.driver.play(n)
        t_set = time.monotonic()
        time.sleep(SETTLE_MIN_S)
        while True:  # settle: the joining sources' records consumed, the daemon caught up
            s, _ = self.sample()
            if s.lag < n:
                break
            if time.monotonic() - t_set > SETTLE_MAX_S:
                return Step(n, False, "settle", {"lag_s": round(s.lag / n, 2), "loadavg": _loadavg()})
            time.sleep(SAMPLE_S / 2)
        first, last = s, s
        self.foreign()  # from here: the steady period's foreign CPU
        max_lag, behind = s.lag, 0.0
        while last.t - first.t < self.steady_s - 1e-3:
            time.sleep(max(0.0, min(SAMPLE_S, first.t + self.steady_s - time.monotonic())))
            last, b = self.sample()
            max_lag, behind = max(max_lag, last.lag), max(behind, b)
            if max_lag >= MAX_LAG_S * n:
                break  # cut short: it did not hold
        ok, why, stats = judge(n, first, last, max_lag, behind)
        stats["loadavg"] = _loadavg()
        return Step(n, ok, why, stats)


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


@contextlib.contextmanager
def _running(ctx: Ctx, steady_s: float) -> Iterator[tuple[Bench, str]]:
    """Broker, topic, one daemon (silence watching off), the driver."""
    import importlib.util

    from bench.e2e import _unique, daemons
    from netsiam.broker import create_topics, start_broker
    from netsiam.config import DetectorConfig, TopicsConfig

    assert ctx.model is not None
    manifest = json.loads((ctx.model / "manifest.json").read_text())
    warmup = int(manifest["window"]["length"]) - 1
    client = "confluent-kafka" if importlib.util.find_spec("confluent_kafka") else "kafka-python"
    with start_broker(0, log_path=ctx.tmp / "tansu-sources.log") as bp:
        name = _unique("src")
        topics = TopicsConfig(samples=f"{name}.samples", faults=f"{name}.faults", deadletter=f"{name}.dl",
                              samples_partitions=PARTITIONS)
        create_topics(bp.bootstrap, topics)
        det = DetectorConfig(silent_after_s=0.0)
        with daemons(1, ctx, bp.bootstrap, topics, _unique("gsrc"), detector=det) as (d,):
            driver = Driver(bp.bootstrap, topics.samples, warmup, client, ctx.tmp / "sources-driver.log")
            try:
                yield Bench(d, driver, bp.proc.pid, steady_s), client
            finally:
                driver.close()


def bench_sources(ctx: Ctx, start: int = 2000, steady_s: float = STEADY_S, max_steps: int = 6,
                  budget_s: float = 150.0) -> dict[str, Any]:
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
        "sources_driver_kept_pace": all(s.why != "driver" for s in steps),
        "sources_driver_client": client,
        "sources_steady_s": steady_s,
        "sources_loadavg": f"{load0} at start, {_loadavg()} at the end",
        "sources_seconds": round(time.monotonic() - t0, 1),
        # every step, in order (nested: results.json only)
        "sources_steps": {f"{i + 1}: {s.n}": {"held": s.ok, "why": s.why, **s.stats} for i, s in enumerate(steps)},
    }
    return out


def main(argv: list[str] | None = None) -> int:
    import shutil

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["produce"]:
        return produce_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--start", type=int, default=2000)
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
