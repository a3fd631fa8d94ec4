#!/usr/bin/env python3
"""``make demo-live``: the live path end to end on 127.0.0.1, with real parts only.

A real SIPp UAC offers calls through the fault relay (``faultproxy.py``, where an SBC would stand)
to a real SIPp UAS, as ``record_sipp.py`` does. ``netsiam collect sipp --follow`` publishes the
UAC's ``-trace_stat -fd 1`` rows (source ``sbc-live``) and ``netsiam collect pcap --interface lo``
the SIP seen on the wire (sources ``127.0.0.1:P`` = the relay, what the UAC calls, and
``127.0.0.1:P+4`` = the UAS) into the embedded broker (``netsiam broker``), where ``netsiam
detect`` with the shipped model raises and clears faults. After a normal warm-up (one model window
and a few seconds) the UAS is frozen (SIGSTOP) for 40 s, then, once that has cleared, the relay
admits only the base rate while the UAC offers 2.5 x as many calls (the rest get 503) for 40 s.
Every fault event is timed on arrival (wall clock); the timeline says, per fault and source, how
long after the fault started it was raised and how long after it ended it was cleared.

    python deploy/testbed/live_demo.py [--out DIR] [--rate 20]

``tests/test_collect_live.py`` runs the same :class:`LiveBed` and checks the outcome.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from record_sipp import Recording, Testbed  # noqa: E402

__all__ = ["SIPP_SOURCE", "Fault", "LiveBed", "main"]

SIPP_SOURCE = "sbc-live"
HOST = "127.0.0.1"
FAULT_S = 40.0
CLEAR_WAIT_S = 45.0        # after a fault ends, wait this long at most for its clears
SURGE_FACTOR, SURGE_CAP = 2.5, 1.0


@dataclass
class Fault:
    fault: str                 # blocked | capacity_limit
    how: str                   # freeze | surge (503)
    start: float = 0.0         # wall clock
    end: float = 0.0


@dataclass
class Arrived:
    at: float                  # wall clock on arrival
    event: dict[str, Any]


@dataclass
class LiveBed:
    workdir: Path
    rate: float = 20.0
    hold_s: float = 2.0
    log: IO[str] = field(default_factory=lambda: sys.stderr)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    events: list[Arrived] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    warm_start: float = 0.0

    def __post_init__(self) -> None:
        self.port = free_port_base(30)                 # the testbed's SIP ports: P .. P+25
        self.kafka_port = free_port_base(1)
        self.bootstrap = f"{HOST}:{self.kafka_port}"
        self.tag = f"live-{random.randrange(16**8):08x}"
        self.faults_topic = f"{self.tag}.faults"
        self.relay_source, self.uas_source = f"{HOST}:{self.port}", f"{HOST}:{self.port + 4}"
        self._stop = threading.Event()
        self._bed: Testbed | None = None

    # -- start and stop ------------------------------------------------------------------------
    def start(self) -> None:
        w = self.workdir
        w.mkdir(parents=True, exist_ok=True)
        cfg = w / "config.yaml"
        cfg.write_text(
            "kafka:\n"
            f"  bootstrap_servers: \"{self.bootstrap}\"\n  group_id: {self.tag}\n"
            "  session_timeout_ms: 6000\n  heartbeat_interval_ms: 1000\n"
            f"  topics: {{samples: {self.tag}.samples, faults: {self.faults_topic}, "
            f"deadletter: {self.tag}.deadletter, samples_partitions: 2}}\n"
            "detector: {batch_wait_ms: 20}\nmetrics: {port: 0}\n")
        broker = self._netsiam("broker", "--config", str(cfg), "--port", str(self.kafka_port), log="broker.log")
        _wait(lambda: "netsiam broker: ready" in (w / "broker.log").read_text(errors="replace"), 60,
              "the broker", broker)                 # ready: port open and topics created
        detect = self._netsiam("detect", "--config", str(cfg), "--metrics-port", "0", log="detect.log")
        _wait(lambda: "partitions assigned" in (w / "detect.log").read_text(errors="replace"), 120,
              "the daemon", detect)
        threading.Thread(target=self._read_events, daemon=True).start()
        rec = Recording(name="live", source=SIPP_SOURCE, rate=self.rate, hold_s=self.hold_s, minutes=10, seed=1)
        self._bed = Testbed(rec, self.port, w / "stat.csv", w)
        cap = self._netsiam("collect", "pcap", "--interface", "lo", "--filter",
                            f"udp portrange {self.port}-{self.port + 5}", "--config", str(cfg),
                            "--bootstrap", self.bootstrap, "--metrics-port", "0", log="collect_pcap.log")
        _wait(lambda: "Capturing on" in (w / "collect_pcap.log").read_text(errors="replace"), 30,
              "the capture (collect pcap)", cap)
        self._bed.start()
        self._netsiam("collect", "sipp", str(w / "stat.csv"), "--source", SIPP_SOURCE, "--follow",
                      "--config", str(cfg), "--bootstrap", self.bootstrap, "--state", str(w / "state.json"),
                      "--metrics-port", "0", log="collect_sipp.log")
        self.warm_start = time.time()
        self._say(f"testbed up: UAC -> relay {self.relay_source} -> UAS {self.uas_source}, {self.rate:g} calls/s")

    def close(self) -> None:
        self._stop.set()
        if self._bed is not None:
            self._bed.close()
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def _netsiam(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        with (self.workdir / log).open("ab") as f:
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
            p = subprocess.Popen([sys.executable, "-m", "netsiam", *args], stdout=f, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env)
        p.log_path = str(self.workdir / log)  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def _read_events(self) -> None:
        import logging

        from kafka import KafkaConsumer

        logging.getLogger("kafka").setLevel(logging.CRITICAL)
        c = KafkaConsumer(self.faults_topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                          enable_auto_commit=False, fetch_max_wait_ms=50)
        try:
            while not self._stop.is_set():
                for msgs in c.poll(200).values():
                    for m in msgs:
                        ev = json.loads(m.value)
                        self.events.append(Arrived(time.time(), ev))
                        self._say(f"event {ev['state']:<7} {ev['fault']:<15} {ev['source']}")
        finally:
            c.close()

    # -- the fault schedule ----------------------------------------------------------------------
    def run(self, warmup_s: float) -> None:
        """Warm up, freeze the UAS for FAULT_S, wait for the clears and until no window holds the
        freeze, then a 503 surge for FAULT_S. (A fault inside another's aftermath is the corpus's
        back-to-back recordings; here each fault is judged on its own.)"""
        bed = self._bed
        assert bed is not None
        apart_s = model_window_s() + 3.0
        _sleep_until(self.warm_start + warmup_s)
        schedule = (Fault("blocked", "freeze"), Fault("capacity_limit", "surge"))
        for fault in schedule:
            fault.start = time.time()
            if fault.how == "freeze":
                bed.signal_uas(signal.SIGSTOP)
            else:
                bed.proxy.set_mode("capacity", cps=SURGE_CAP * self.rate, code=503)
                bed.set_rate(self.rate * SURGE_FACTOR)
            self.faults.append(fault)
            self._say(f"fault {fault.fault} ({fault.how}) starts")
            _sleep_until(fault.start + FAULT_S)
            if fault.how == "freeze":
                bed.signal_uas(signal.SIGCONT)
            else:
                bed.set_rate(self.rate)
                bed.proxy.set_mode("normal")
            fault.end = time.time()
            self._say(f"fault {fault.fault} ({fault.how}) ends")
            _wait(lambda f=fault: self._all_cleared(f.start), CLEAR_WAIT_S, "", quiet=True)
            if fault is not schedule[-1]:   # the next fault starts once no window holds this one
                _sleep_until(max(time.time() + 3.0, fault.end + apart_s))
            else:                           # the last: past the 10 s after its end where a flap would show
                _sleep_until(max(time.time() + 3.0, fault.end + 12.0))

    def _all_cleared(self, since: float) -> bool:
        raised = {(a.event["source"], a.event["fault"], a.event["started_at"]) for a in self.events
                  if a.event["state"] == "raised" and a.at >= since}
        cleared = {(a.event["source"], a.event["fault"], a.event["started_at"]) for a in self.events
                   if a.event["state"] == "cleared"}
        return bool(raised) and raised <= cleared

    def dump(self) -> None:
        """What went through the broker, as training/evaluation data: ``netsiam dump`` of the samples
        (trace.jsonl) with the daemon's episodes (draft_labels.csv), and the true labels (labels.csv)."""
        from netsiam.traceio import LabelInterval, write_labels

        w = self.workdir
        p = self._netsiam("dump", "--config", str(w / "config.yaml"), "--bootstrap", self.bootstrap,
                          "-o", str(w / "trace.jsonl"), "--labels", str(w / "draft_labels.csv"), log="dump.log")
        p.wait(120)
        truth = [LabelInterval(src, f.start, f.end, f.fault) for f in self.faults
                 for src in (SIPP_SOURCE, self.relay_source)]
        truth += [LabelInterval(self.uas_source, f.start, f.end, f.fault) for f in self.faults if f.how == "freeze"]
        write_labels(w / "labels.csv", sorted(truth, key=lambda iv: (iv.source, iv.start)))

    # -- the outcome -----------------------------------------------------------------------------
    def first(self, source: str, state: str, after: float, before: float = float("inf")) -> Arrived | None:
        hits = [a for a in self.events if a.event["source"] == source and a.event["state"] == state
                and after <= a.at < before]
        return min(hits, key=lambda a: a.at) if hits else None

    def timeline(self) -> str:
        rows = [f"{'fault':<22}{'source':<18}{'started':>10}{'raised':>10}{'after':>8}{'as':>16}"
                f"{'ended':>10}{'cleared':>10}{'after end':>10}"]
        for i, f in enumerate(self.faults):
            nxt = self.faults[i + 1].start if i + 1 < len(self.faults) else float("inf")
            for src in (SIPP_SOURCE, self.relay_source, self.uas_source):
                r = self.first(src, "raised", f.start, nxt)
                c = self.first(src, "cleared", r.at, nxt) if r else None
                rows.append(f"{f.fault + ' (' + f.how + ')':<22}{src:<18}{_hms(f.start):>10}"
                            f"{_hms(r.at) if r else '-':>10}{f'+{r.at - f.start:.1f}s' if r else '':>8}"
                            f"{r.event['fault'] if r else '':>16}{_hms(f.end):>10}"
                            f"{_hms(c.at) if c else '-':>10}{f'+{c.at - f.end:.1f}s' if c else '':>10}")
        return "\n".join(rows)

    def _say(self, what: str) -> None:
        t = time.time() - self.warm_start if self.warm_start else 0.0
        print(f"[{_hms(time.time())} +{t:5.1f}s] {what}", file=self.log, flush=True)


def model_window_s(model: str | None = None) -> float:
    """Seconds of data the served model needs for its first window (the warm-up)."""
    from netsiam.serving import default_model_path

    manifest = json.loads((Path(model) if model else default_model_path()).joinpath("manifest.json").read_text())
    return float(manifest["window"]["length"]) * float(manifest["window"]["interval_s"])


def _hms(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.2))


def _wait(cond: Any, timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None,
          quiet: bool = False) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            log = Path(getattr(proc, "log_path", ""))
            last = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
            raise RuntimeError(f"{what} exited with code {proc.returncode}: {' '.join(last)}")
        time.sleep(0.2)
    if quiet:
        return False
    raise RuntimeError(f"{what} did not start within {timeout_s:.0f} s")


def free_port_base(n: int, lo: int = 10000, hi: int = 32000) -> int:
    """P with P..P+n-1 free for UDP and TCP on 127.0.0.1 now (SIPp peers, relay, broker); below
    Linux's ephemeral ports (32768-60999), which any outgoing connection may take meanwhile."""
    rng = random.Random()
    for _ in range(200):
        base, socks = rng.randrange(lo, hi - n), []
        try:
            for p in range(base, base + n):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    s.bind((HOST, p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range on 127.0.0.1")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="keep the logs and the statistics file here")
    ap.add_argument("--rate", type=float, default=20.0, help="base offered load, calls/s")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="netsiam-live-") as tmp:
        bed = LiveBed(args.out or Path(tmp), rate=args.rate, log=sys.stdout)
        try:
            bed.start()
            bed.run(warmup_s=model_window_s() + 8.0)
            bed.dump()
        except (RuntimeError, OSError) as e:
            print(f"demo-live: {e} (logs in {bed.workdir})", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            bed.close()
        print("\n== timeline (wall clock; 'after' = from the fault's start to the raise arriving)")
        print(bed.timeline())
        print(f"\ndemo-live took {time.monotonic() - t0:.0f} s" + (
            f"; logs, trace.jsonl (netsiam dump), labels.csv and draft_labels.csv in {args.out}" if args.out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
