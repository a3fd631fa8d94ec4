#!/usr/bin/env python3
"""Record a labelled signalling trace with real SIPp peers on 127.0.0.1.

A UAC (scenarios/uac.xml) offers calls at ``--rate`` calls/s to a UAS (scenarios/uas.xml), the
element under observation, and writes SIPp's per-second statistics (``-trace_stat -fd 1``).
Faults are injected on a schedule and the wall-clock moments of injection and removal become
the labels:

``blocked``         the UAS is killed (SIGKILL) and restarted at the end: nothing answers, the
                    UAC retransmits and its INVITEs time out after ~32 s (SIP timer B).
``capacity_limit``  the offered load surges (UAC control port, ``cset rate``) while the UAS is
                    restarted admitting only a fraction of INVITEs; the rest get 503, which
                    the UAC counts as failed calls. Surge and admitted fraction are drawn from
                    ``--seed`` so the admitted load stays near the normal one.
``degraded``        the UAS stalls intermittently (SIGSTOP/SIGCONT duty cycle): answers are
                    late (ResponseTime1 ~100 ms instead of a few), calls still complete. Not
                    one of the trained classes; it exists to test novelty detection.

Outputs, in ``-o OUTDIR``: ``<name>_stat.csv`` (the raw SIPp file), ``<name>_labels.csv``
(``source,start,end,label``), ``<name>_meta.json`` (arguments and drawn fault parameters) and,
with ``--pcap``, ``<name>.pcap`` captured with tshark on ``lo``.

Ports: the UAS listens on ``--port`` P; the UAC uses P+1, control ports P+2 (UAC) and P+3 (UAS),
media ports from P+10 and P+20. Give parallel recordings port bases >= 30 apart.

    python deploy/testbed/record_sipp.py --rate 15 --minutes 8 \\
        --schedule blocked@60+45,capacity_limit@180+60 --seed 1 --port 15060 \\
        --source sbc-a --name sipp_a -o tests/data
"""

from __future__ import annotations

import argparse
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

try:
    from netsiam.traceio import LabelInterval, write_labels
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from netsiam.traceio import LabelInterval, write_labels

__all__ = ["FAULT_KINDS", "Episode", "main", "parse_schedule", "record"]

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
FAULT_KINDS = ("blocked", "capacity_limit", "degraded")
HOST = "127.0.0.1"
CALL_HOLD_MS = 2000  # short calls keep CurrentCall modest (rate x ~2 s)


@dataclass(frozen=True)
class Episode:
    kind: str
    start_s: float  # offset from the start of the recording
    duration_s: float


@dataclass
class Injected:
    """One episode as it actually happened (wall clock) with its drawn parameters."""

    kind: str
    start: float
    end: float = 0.0
    params: dict[str, float] = field(default_factory=dict)


def parse_schedule(text: str, total_s: float) -> list[Episode]:
    """``"blocked@60+45,capacity_limit@180+60"`` -> episodes; they must fit and not overlap."""
    episodes: list[Episode] = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            kind, rest = item.split("@", 1)
            start, dur = rest.split("+", 1)
            ep = Episode(kind.strip(), float(start), float(dur))
        except ValueError:
            raise ValueError(f"bad schedule item {item!r}; expected KIND@START+DURATION") from None
        if ep.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {ep.kind!r}; known: {', '.join(FAULT_KINDS)}")
        if ep.start_s < 0 or ep.duration_s <= 0 or ep.start_s + ep.duration_s > total_s:
            raise ValueError(f"episode {item!r} does not fit in a {total_s:g} s recording")
        episodes.append(ep)
    episodes.sort(key=lambda e: e.start_s)
    for a, b in zip(episodes, episodes[1:], strict=False):
        if b.start_s < a.start_s + a.duration_s:
            raise ValueError(f"episodes overlap: {a.kind}@{a.start_s:g} and {b.kind}@{b.start_s:g}")
    return episodes


class Testbed:
    """The two SIPp processes (and an optional capture) of one recording."""

    def __init__(self, port: int, rate: float, stat_path: Path, workdir: Path, total_s: float) -> None:
        self.port = port
        self.rate = rate
        self.stat_path = stat_path
        self.workdir = workdir
        self.total_s = total_s
        self.uas: subprocess.Popen[bytes] | None = None
        self.uac: subprocess.Popen[bytes] | None = None
        self.capture: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / log_name, "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        # Foreground + -nostdin: the Popen pid is SIPp itself, so kill/wait act on it directly.
        return subprocess.Popen(
            args, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log
        )

    def verify(self) -> None:
        """Both SIPp processes still run (a bad port or scenario makes SIPp exit at once)."""
        time.sleep(0.3)
        for proc, what, log_name in ((self.uas, "UAS", "uas.log"), (self.uac, "UAC", "uac.log")):
            if proc is not None and proc.poll() is not None:
                text = (self.workdir / log_name).read_text(errors="replace").strip()
                tail = " | ".join(text.splitlines()[-3:])
                raise RuntimeError(f"{what} exited (rc={proc.returncode}): {tail}")

    def start_uas(self, admit: float = 1.0) -> None:
        p = self.port
        args = [
            "sipp", "-sf", str(SCENARIOS / "uas.xml"), "-i", HOST, "-p", str(p),
            "-cp", str(p + 3), "-mp", str(p + 20), "-set", "admit", f"{admit:.4f}",
            "-nostdin", "-timeout", f"{int(self.total_s) + 300}s",
        ]  # fmt: skip
        self.uas = self._spawn(args, "uas.log")

    def kill_uas(self) -> None:
        if self.uas is not None and self.uas.poll() is None:
            self.uas.send_signal(signal.SIGCONT)  # a stopped process must run to die cleanly
            self.uas.kill()
            self.uas.wait()
        self.uas = None

    def restart_uas(self, admit: float = 1.0) -> None:
        self.kill_uas()
        self.start_uas(admit)

    def start_uac(self) -> None:
        p = self.port
        # -l: during `blocked` calls pile up for ~32 s at up to the surge rate; never throttle.
        limit = max(2000, int(self.rate * 3 * 80))
        args = [
            "sipp", "-sf", str(SCENARIOS / "uac.xml"), f"{HOST}:{p}", "-i", HOST,
            "-p", str(p + 1), "-cp", str(p + 2), "-mp", str(p + 10),
            "-r", f"{self.rate:g}", "-rp", "1000", "-d", str(CALL_HOLD_MS), "-l", str(limit),
            # A call stranded by a killed UAS (100 Trying seen, final response never) fails here.
            # Rare (the UAS sends 100/180/200 back to back), but it is a stray FailedCall 60 s
            # after a UAS switch, possibly in normal time.
            "-recv_timeout", "60000",
            "-trace_stat", "-fd", "1", "-stf", str(self.stat_path),
            "-nostdin", "-timeout", f"{int(self.total_s) + 300}s",
        ]  # fmt: skip
        self.uac = self._spawn(args, "uac.log")

    def set_rate(self, rate: float) -> None:
        """SIPp's UDP control port: a datagram starting with 'c' is a command."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(f"cset rate {rate:.2f}".encode(), (HOST, self.port + 2))

    def start_capture(self, pcap: Path) -> None:
        if shutil.which("tshark") is None:
            raise RuntimeError("--pcap needs tshark on PATH")
        bpf = f"udp portrange {self.port}-{self.port + 1}"
        self.capture = self._spawn(["tshark", "-i", "lo", "-f", bpf, "-w", str(pcap), "-q"], "tshark.log")
        deadline = time.monotonic() + 15
        log = self.workdir / "tshark.log"
        while "Capturing on" not in log.read_text(errors="replace"):  # ready only once it says so
            if self.capture.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tshark did not start: {log.read_text(errors='replace').strip()}")
            time.sleep(0.1)

    def close(self) -> None:
        if self.uac is not None and self.uac.poll() is None:
            # SIGKILL, not SIPp's quit: the file then ends on the last whole period instead of a
            # drain tail with no new calls (and 'Q' over the control port hangs SIPp 3.6.1).
            self.uac.kill()
            self.uac.wait()
        self.kill_uas()
        if self.capture is not None and self.capture.poll() is None:
            time.sleep(0.5)  # let the last packets reach the capture
            self.capture.terminate()
            try:
                self.capture.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.capture.kill()
        for log in self._logs:
            log.close()


class Stall:
    """``degraded``: SIGSTOP the UAS for `stall_s` of every `period_s` until stopped."""

    def __init__(self, bed: Testbed, stall_s: float, period_s: float) -> None:
        self.bed, self.stall_s, self.period_s = bed, stall_s, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            uas = self.bed.uas
            if uas is None or uas.poll() is not None:
                return
            uas.send_signal(signal.SIGSTOP)
            self._stop.wait(self.stall_s)
            uas.send_signal(signal.SIGCONT)
            self._stop.wait(self.period_s - self.stall_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.bed.uas is not None and self.bed.uas.poll() is None:
            self.bed.uas.send_signal(signal.SIGCONT)


def _sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 0.5))


def _inject(bed: Testbed, ep: Episode, rng: random.Random) -> tuple[Injected, Stall | None]:
    if ep.kind == "blocked":
        bed.kill_uas()
        return Injected(ep.kind, time.time()), None
    if ep.kind == "capacity_limit":
        surge = rng.uniform(1.7, 2.6)
        # Admitted load ~ the normal load: a path that carries what it always did and no more.
        admit = rng.uniform(0.8, 1.0) / surge
        bed.restart_uas(admit)
        bed.set_rate(bed.rate * surge)
        return Injected(ep.kind, time.time(), params={"surge": surge, "admit": admit}), None
    # Stalls shorter than SIP's T1 (500 ms): answers are late but INVITEs are not retransmitted.
    # (Longer stalls make SIPp's UAS lose calls whose INVITE arrives twice in one batch; their
    # BYEs then time out ~32 s after the episode, smearing it into the following normal time.)
    stall = Stall(bed, stall_s=rng.uniform(0.3, 0.45), period_s=1.0)
    stall.start()
    return Injected(ep.kind, time.time(), params={"stall_s": stall.stall_s, "period_s": 1.0}), stall


def _remove(bed: Testbed, inj: Injected, stall: Stall | None) -> None:
    if inj.kind == "blocked":
        bed.start_uas()
    elif inj.kind == "capacity_limit":
        bed.restart_uas()
        bed.set_rate(bed.rate)
    elif stall is not None:
        stall.stop()
    inj.end = time.time()


def record(
    *,
    rate: float,
    minutes: float,
    episodes: Sequence[Episode],
    seed: int,
    port: int,
    outdir: Path,
    source: str,
    name: str,
    pcap: bool = False,
    log: IO[str] = sys.stderr,
) -> dict[str, Any]:
    """Run one recording; returns the metadata written to ``<name>_meta.json``."""
    if shutil.which("sipp") is None:
        raise RuntimeError("sipp is not on PATH (Debian/Ubuntu: apt-get install sip-tester)")
    outdir.mkdir(parents=True, exist_ok=True)
    stat_path = (outdir / f"{name}_stat.csv").resolve()
    stat_path.unlink(missing_ok=True)  # SIPp appends to an existing file
    total_s = minutes * 60.0
    rng = random.Random(seed)
    injected: list[Injected] = []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="netsiam-sipp-") as tmp:
        bed = Testbed(port, rate, stat_path, Path(tmp), total_s)
        try:
            if pcap:
                bed.start_capture((outdir / f"{name}.pcap").resolve())
            bed.start_uas()
            bed.verify()  # the UAS listens before the first INVITE
            bed.start_uac()
            bed.verify()
            t0 = time.time()
            print(f"[{name}] recording {total_s:.0f} s at {rate:g} calls/s on port {port}", file=log)
            for ep in episodes:
                _sleep_until(t0 + ep.start_s)
                inj, stall = _inject(bed, ep, rng)
                bed.verify()
                print(f"[{name}] +{inj.start - t0:6.1f}s {ep.kind} on {inj.params}", file=log)
                _sleep_until(t0 + ep.start_s + ep.duration_s)
                _remove(bed, inj, stall)
                bed.verify()
                print(f"[{name}] +{inj.end - t0:6.1f}s {ep.kind} off", file=log)
                injected.append(inj)
            _sleep_until(t0 + total_s)
            bed.verify()
        finally:
            bed.close()
    if not stat_path.is_file() or stat_path.stat().st_size == 0:
        raise RuntimeError(f"SIPp wrote no statistics to {stat_path}")
    write_labels(
        outdir / f"{name}_labels.csv",
        [LabelInterval(source, i.start, i.end, i.kind) for i in injected],
    )
    meta: dict[str, Any] = {
        "name": name,
        "source": source,
        "rate": rate,
        "minutes": minutes,
        "seed": seed,
        "port": port,
        "call_hold_ms": CALL_HOLD_MS,
        "started_at": t0,
        "schedule": [asdict(e) for e in episodes],
        "episodes": [asdict(i) for i in injected],
        "sipp": _sipp_version(),
        "pcap": f"{name}.pcap" if pcap else None,
    }
    (outdir / f"{name}_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    for suffix in ("_stat.csv", "_labels.csv", "_meta.json", ".pcap"):
        out = outdir / f"{name}{suffix}"
        if out.is_file():
            out.chmod(0o644)  # tshark (as root) and the atomic writer create 0600 files
    return meta


def _sipp_version() -> str:
    out = subprocess.run(["sipp", "-v"], capture_output=True, text=True, check=False).stdout
    return next((ln.strip() for ln in out.splitlines() if "SIPp v" in ln), "unknown")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=15.0, help="offered calls per second (default 15)")
    p.add_argument("--minutes", type=float, default=8.0, help="recording length (fractions allowed)")
    p.add_argument("--schedule", default="", help='faults, e.g. "blocked@60+45,capacity_limit@180+60"')
    p.add_argument("--seed", type=int, default=0, help="seeds the drawn fault parameters")
    p.add_argument("--port", type=int, default=15060, help="UAS port; the recording uses P..P+29")
    p.add_argument("-o", "--outdir", type=Path, required=True)
    p.add_argument("--source", default="sbc-1", help="source name written into the labels")
    p.add_argument("--name", default="sipp", help="file prefix: NAME_stat.csv, NAME_labels.csv")
    p.add_argument("--pcap", action="store_true", help="also capture NAME.pcap with tshark on lo")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.rate <= 0 or args.minutes <= 0:
            raise ValueError("--rate and --minutes must be positive")
        episodes = parse_schedule(args.schedule, args.minutes * 60.0)
        meta = record(
            rate=args.rate,
            minutes=args.minutes,
            episodes=episodes,
            seed=args.seed,
            port=args.port,
            outdir=args.outdir,
            source=args.source,
            name=args.name,
            pcap=args.pcap,
        )
    except (ValueError, RuntimeError, OSError) as e:
        print(f"record_sipp: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"[{meta['name']}] wrote {os.fspath(args.outdir)}/{meta['name']}_{{stat.csv,labels.csv,meta.json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
