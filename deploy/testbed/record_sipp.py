#!/usr/bin/env python3
"""Record labelled signalling traces with real SIPp peers on 127.0.0.1.

A UAC (``scenarios/uac_corpus.xml``) offers calls at ``rate`` calls/s through a fault-injecting SIP
relay (``faultproxy.py``, where a session border controller would stand) to a UAS
(``scenarios/uas.xml``), the far end. SIPp writes its per-second statistics (``-trace_stat -fd 1``).
Every recording starts cold (no call in progress). Events run on a schedule; the wall-clock moments
a fault is injected and removed become the labels:

``blocked``         ``how: freeze``: the UAS is stopped (SIGSTOP) and resumed (SIGCONT): nothing
                    answers, the UAC retransmits and its calls fail on its timeout.
                    ``how: loss, share: S``: the path loses every message of a share S of the calls.
``capacity_limit``  the path admits only part of the offered calls; the rest are rejected with
                    ``code`` (503, 500, 480) or, with ``code: 0``, held with 100 Trying until the
                    UAC's final-answer timeout fails them (rejection by timeout).
                    ``how: surge, factor: F, cap: C``: the offered load jumps to F x the rate against
                    a capacity of C x the base rate; ``how: drop, cap: C``: at constant load the
                    capacity drops to C x the offered rate (C = 0: everything rejected).
``degraded``        a fault outside the trained classes (novelty tests): ``how: delay, ms: D``
                    relays every answer D ms late; ``how: stall``: the UAS is stopped 0.3-0.45 s of
                    every second. Calls still complete.
``rate``            not a fault: the offered load moves to ``rate: X`` x the base rate (normal swings).

One recording is a mapping (see ``corpus.yaml``): ``name, source, rate, hold_s, hold (fixed |
exponential), timeout_s (final-answer timeout; 0 = SIPp's own retransmission limit), minutes, seed,
events``. Outputs in ``-o OUTDIR``: ``NAME_stat.csv.gz`` (SIPp's file, compressed),
``NAME_labels.csv`` and ``NAME_meta.json`` (the spec, what happened when, relay counters, SIPp version).

Ports: the relay listens on P; the UAC uses P+1, control ports P+2 (UAC) and P+3 (UAS), the UAS
P+4, the relay's back side P+5, media ports from P+10 and P+20. Parallel recordings: bases >= 30 apart.

    python deploy/testbed/record_sipp.py --corpus deploy/testbed/corpus.yaml -o deploy/testbed/corpus \\
        [--only NAME ...] [--parallel 4]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    from netsiam.traceio import LabelInterval, write_labels
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(HERE.parents[1]))
    from netsiam.traceio import LabelInterval, write_labels
from faultproxy import FaultProxy  # noqa: E402

__all__ = ["FAULT_KINDS", "Event", "Recording", "load_corpus", "main", "record"]

SCENARIOS = HERE / "scenarios"
FAULT_KINDS = ("blocked", "capacity_limit", "degraded")
HOWS = {"blocked": ("freeze", "loss"), "capacity_limit": ("surge", "drop"), "degraded": ("delay", "stall")}
HOST = "127.0.0.1"
RECV_TIMEOUT_MS = 60_000  # any other message (a BYE's answer) waited for at most this long
# SIPp aborts when its own timer loop stalls too often (it would after a SIGSTOP stall every second):
# the stalls are the fault being recorded, not an overloaded tester.
NO_WATCHDOG = ["-watchdog_minor_maxtriggers", "1000000", "-watchdog_major_maxtriggers", "1000000"]


@dataclass(frozen=True)
class Event:
    at: float                       # seconds after the recording starts
    duration: float = 0.0           # faults only
    fault: str = ""                 # "" = a normal load change
    how: str = ""
    params: dict[str, float] = field(default_factory=dict)
    rate: float = 0.0               # load change: new rate as a multiple of the base rate


@dataclass(frozen=True)
class Recording:
    name: str
    source: str
    rate: float
    hold_s: float
    hold: str = "fixed"             # fixed | exponential
    timeout_s: float = 0.0
    minutes: float = 10.0
    seed: int = 0
    events: tuple[Event, ...] = ()


def _event(d: dict[str, Any], total_s: float, where: str) -> Event:
    d = dict(d)
    at = float(d.pop("at"))
    if "rate" in d:
        ev = Event(at=at, rate=float(d.pop("rate")))
    else:
        fault, how = str(d.pop("fault")), str(d.pop("how"))
        if fault not in FAULT_KINDS or how not in HOWS[fault]:
            raise ValueError(f"{where}: unknown fault {fault}/{how}; known: {HOWS}")
        ev = Event(at=at, duration=float(d.pop("for")), fault=fault, how=how,
                   params={k: float(v) for k, v in d.items()})
        d = {}
    if d:
        raise ValueError(f"{where}: unexpected keys {sorted(d)}")
    if at < 0 or at + ev.duration > total_s:
        raise ValueError(f"{where}: event at {at:g}+{ev.duration:g} s does not fit in {total_s:g} s")
    return ev


def load_corpus(path: Path) -> list[Recording]:
    doc = yaml.safe_load(path.read_text())
    out = []
    for spec in doc["recordings"]:
        spec = dict(spec)
        total = float(spec.get("minutes", 10.0)) * 60.0
        events = tuple(sorted((_event(e, total, f"{spec['name']} event {i}") for i, e in enumerate(spec.pop("events", []))),
                              key=lambda e: e.at))
        faults = [e for e in events if e.fault]
        for a, b in zip(faults, faults[1:], strict=False):
            if b.at < a.at + a.duration:
                raise ValueError(f"{spec['name']}: faults overlap at {b.at:g} s")
        out.append(Recording(events=events, **spec))
    return out


class Testbed:
    """The two SIPp processes and the relay of one recording."""

    def __init__(self, rec: Recording, port: int, stat_path: Path, workdir: Path) -> None:
        self.rec, self.port, self.stat_path, self.workdir = rec, port, stat_path, workdir
        self.rate = rec.rate                       # current offered rate (changes with `rate` events)
        self.uas: subprocess.Popen[bytes] | None = None
        self.uac: subprocess.Popen[bytes] | None = None
        self.proxy = FaultProxy(HOST, port, port + 5, port + 4, seed=rec.seed)
        self._logs: list[IO[bytes]] = []

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / log_name, "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        return subprocess.Popen(args, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=log)

    def verify(self) -> None:
        time.sleep(0.3)
        for proc, what, log_name in ((self.uas, "UAS", "uas.log"), (self.uac, "UAC", "uac.log")):
            if proc is not None and proc.poll() is not None:
                text = (self.workdir / log_name).read_text(errors="replace").strip()
                raise RuntimeError(f"{what} exited (rc={proc.returncode}): {' | '.join(text.splitlines()[-3:])}")

    def _uac_scenario(self) -> Path:
        r = self.rec
        hold_ms = int(r.hold_s * 1000)
        pause = (f'<pause distribution="exponential" mean="{hold_ms}" />' if r.hold == "exponential"
                 else f'<pause milliseconds="{hold_ms}" />')
        timeout_ms = int(r.timeout_s * 1000) if r.timeout_s > 0 else RECV_TIMEOUT_MS
        text = (SCENARIOS / "uac_corpus.xml").read_text()
        text = text.replace("@FINAL_TIMEOUT_MS@", str(timeout_ms)).replace("@PAUSE@", pause)
        path = self.workdir / "uac.xml"
        path.write_text(text)
        return path

    def start(self) -> None:
        p, total = self.port, self.rec.minutes * 60.0
        self.proxy.start()
        self.uas = self._spawn([
            "sipp", "-sf", str(SCENARIOS / "uas.xml"), "-i", HOST, "-p", str(p + 4), "-cp", str(p + 3),
            "-mp", str(p + 20), "-set", "admit", "1", "-nostdin", "-timeout", f"{int(total) + 300}s", *NO_WATCHDOG,
        ], "uas.log")
        self.verify()
        # -l: during a fault calls pile up for up to a minute at the surge rate; never throttle.
        limit = max(5000, int(self.rec.rate * 4 * (self.rec.hold_s * 3 + 90)))
        self.uac = self._spawn([
            "sipp", "-sf", str(self._uac_scenario()), f"{HOST}:{p}", "-i", HOST, "-p", str(p + 1),
            "-cp", str(p + 2), "-mp", str(p + 10), "-r", f"{self.rate:g}", "-rp", "1000", "-l", str(limit),
            "-recv_timeout", str(RECV_TIMEOUT_MS), "-trace_stat", "-fd", "1", "-stf", str(self.stat_path),
            "-nostdin", "-timeout", f"{int(total) + 300}s", *NO_WATCHDOG,
        ], "uac.log")
        self.verify()

    def set_rate(self, rate: float) -> None:
        """SIPp's UDP control port: a datagram starting with 'c' is a command."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(f"cset rate {rate:.3f}".encode(), (HOST, self.port + 2))

    def signal_uas(self, sig: int) -> None:
        if self.uas is not None and self.uas.poll() is None:
            self.uas.send_signal(sig)

    def close(self) -> None:
        # SIGKILL, not SIPp's quit: the file ends on the last whole period instead of a drain tail.
        for proc in (self.uac, self.uas):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
        self.proxy.close()
        for log in self._logs:
            log.close()


class Stall:
    """``degraded/stall``: SIGSTOP the UAS for ``stall_s`` of every second until stopped."""

    def __init__(self, bed: Testbed, stall_s: float) -> None:
        self.bed, self.stall_s = bed, stall_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.bed.signal_uas(signal.SIGSTOP)
            self._stop.wait(self.stall_s)
            self.bed.signal_uas(signal.SIGCONT)
            self._stop.wait(1.0 - self.stall_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.bed.signal_uas(signal.SIGCONT)


def _inject(bed: Testbed, ev: Event, rng: random.Random) -> tuple[dict[str, float], Stall | None]:
    """Start a fault; -> (what was drawn or derived, a running stall to stop later)."""
    p = ev.params
    if ev.how == "freeze":
        bed.signal_uas(signal.SIGSTOP)
    elif ev.how == "loss":
        bed.proxy.set_mode("loss", share=p["share"])
    elif ev.how == "surge":
        cps = p["cap"] * bed.rec.rate
        bed.proxy.set_mode("capacity", cps=cps, code=int(p.get("code", 503)))
        bed.set_rate(bed.rate * p["factor"])
        return {"admitted_cps": cps, "offered_cps": bed.rate * p["factor"]}, None
    elif ev.how == "drop":
        cps = p["cap"] * bed.rate
        bed.proxy.set_mode("capacity", cps=cps, code=int(p.get("code", 503)))
        return {"admitted_cps": cps, "offered_cps": bed.rate}, None
    elif ev.how == "delay":
        bed.proxy.set_mode("delay", delay_ms=p["ms"])
    elif ev.how == "stall":
        stall_s = rng.uniform(0.3, 0.45)
        return {"stall_s": stall_s}, Stall(bed, stall_s)
    return {}, None


def _remove(bed: Testbed, ev: Event, stall: Stall | None) -> None:
    if ev.how == "freeze":
        bed.signal_uas(signal.SIGCONT)
    elif ev.how == "surge":
        bed.set_rate(bed.rate)
    if stall is not None:
        stall.stop()
    bed.proxy.set_mode("normal")


def _sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.2))


def record(rec: Recording, outdir: Path, port: int, log: IO[str] = sys.stderr) -> dict[str, Any]:
    """Run one recording; returns the metadata written to ``NAME_meta.json``."""
    if shutil.which("sipp") is None:
        raise RuntimeError("sipp is not on PATH (Debian/Ubuntu: apt-get install sip-tester)")
    outdir.mkdir(parents=True, exist_ok=True)
    total_s = rec.minutes * 60.0
    rng = random.Random(rec.seed)
    happened: list[dict[str, Any]] = []
    labels: list[LabelInterval] = []
    with tempfile.TemporaryDirectory(prefix="netsiam-sipp-") as tmp:
        stat_path = Path(tmp) / "stat.csv"
        bed = Testbed(rec, port, stat_path, Path(tmp))
        try:
            bed.start()
            t0 = time.time()
            print(f"[{rec.name}] {total_s:.0f} s at {rec.rate:g} calls/s, hold {rec.hold_s:g} s ({rec.hold}), "
                  f"port {port}", file=log, flush=True)
            for ev in rec.events:
                _sleep_until(t0 + ev.at)
                if not ev.fault:
                    bed.rate = rec.rate * ev.rate
                    bed.set_rate(bed.rate)
                    happened.append({"rate": bed.rate, "at": time.time()})
                    continue
                drawn, stall = _inject(bed, ev, rng)
                start = time.time()
                bed.verify()
                print(f"[{rec.name}] +{start - t0:6.1f}s {ev.fault}/{ev.how} on {ev.params} {drawn}", file=log, flush=True)
                _sleep_until(t0 + ev.at + ev.duration)
                _remove(bed, ev, stall)
                end = time.time()
                bed.verify()
                labels.append(LabelInterval(rec.source, start, end, ev.fault))
                happened.append({"fault": ev.fault, "how": ev.how, "start": start, "end": end,
                                 "params": ev.params | drawn})
            _sleep_until(t0 + total_s)
            bed.verify()
        finally:
            bed.close()
        if not stat_path.is_file() or stat_path.stat().st_size == 0:
            raise RuntimeError(f"SIPp wrote no statistics for {rec.name}")
        with stat_path.open("rb") as src, gzip.open(outdir / f"{rec.name}_stat.csv.gz", "wb", compresslevel=9) as dst:
            shutil.copyfileobj(src, dst)
    write_labels(outdir / f"{rec.name}_labels.csv", labels)
    meta: dict[str, Any] = {
        "spec": asdict(rec), "port": port, "started_at": t0, "happened": happened,
        "relay_invites": dict(bed.proxy.counts), "sipp": _sipp_version(),
    }
    (outdir / f"{rec.name}_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    for suffix in ("_stat.csv.gz", "_labels.csv", "_meta.json"):
        (outdir / f"{rec.name}{suffix}").chmod(0o644)  # the atomic writer creates 0600 files
    print(f"[{rec.name}] done: {len(labels)} episodes, relay {dict(bed.proxy.counts)}", file=log, flush=True)
    return meta


def _sipp_version() -> str:
    out = subprocess.run(["sipp", "-v"], capture_output=True, text=True, check=False).stdout
    return next((ln.strip() for ln in out.splitlines() if "SIPp v" in ln), "unknown")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=HERE / "corpus.yaml", help="recordings to make (YAML)")
    p.add_argument("-o", "--outdir", type=Path, default=HERE / "corpus", help="where the recordings go")
    p.add_argument("--only", nargs="*", default=None, help="record only these names")
    p.add_argument("--parallel", type=int, default=4, help="recordings at once (each uses 30 ports)")
    p.add_argument("--port", type=int, default=30000, help="first port base")
    args = p.parse_args(argv)
    try:
        recs = load_corpus(args.corpus)
        if args.only:
            unknown = set(args.only) - {r.name for r in recs}
            if unknown:
                raise ValueError(f"not in {args.corpus}: {', '.join(sorted(unknown))}")
            recs = [r for r in recs if r.name in args.only]
        # longest first, so the pool finishes together
        recs.sort(key=lambda r: -r.minutes)
        # one process per recording: each relay gets a core's worth of GIL to itself
        with ProcessPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            futures = [pool.submit(record, r, args.outdir, args.port + 40 * i) for i, r in enumerate(recs)]
            for f in futures:
                f.result()
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        print(f"record_sipp: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"wrote {len(recs)} recordings to {os.fspath(args.outdir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
