"""``netsiam collect pcap``: live SIP capture -> per-second records per SIP element.

dumpcap captures on the interface (it needs CAP_NET_RAW and CAP_NET_ADMIN, not root) and pipes the
packets to tshark, which prints the same SIP fields ``netsiam import pcap`` reads from a file
(through a pipe, not tshark's own live capture: that one spools to a temporary file and delivered
packets 0.5-1 s late here, the pipe 0.1-0.3 s, and nothing is written to disk); the messages feed
the importer's own counter (:class:`~netsiam.importers.sipcount.SipCounter`), so a second counted
live is the second the importer counts from a capture of the same packets (a test compares them).

Every interval is published once it is over plus ``lateness_s`` (packets reach tshark's output a
little after their capture time; a reorder buffer puts them back in time order). A message later
than that is counted in the next open interval (``netsiam_collect_errors_total{reason="late_message"}``).
Memory is bounded: the counter forgets ended dialogues and emitted intervals, and tshark resets
its own dissection state every ``SESSION_RESET_PACKETS`` packets (``-M``). While the broker is away
records wait in the sink's buffer (one per element and second: the default 100000 holds a day of
one element); once it is full the collector stops reading, the pipe fills and the capture drops
packets (dumpcap counts them), since a live wire cannot wait.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import IO

import orjson

from netsiam.collect.metrics import CollectMetrics
from netsiam.collect.sink import Sink, Stopped
from netsiam.errors import NetsiamError, ServiceError, UsageError
from netsiam.importers.pcap import parse_line, tshark_fields_args
from netsiam.importers.sipcount import SipCounter, SipMessage
from netsiam.traceio import Record

__all__ = ["LATENESS_S", "LiveCounter", "PcapCollector", "capture_commands"]

log = logging.getLogger("netsiam.collect")

LATENESS_S = 0.75             # an interval is published this long after it ends
SESSION_RESET_PACKETS = 200_000
FLUSH_ON_EXIT_S = 10.0


class LiveCounter:
    """Messages in capture order -> records of the intervals that are over, via the importer's counter."""

    def __init__(self, interval_s: float = 1.0, lateness_s: float = LATENESS_S) -> None:
        self.counter = SipCounter(interval_s)
        self.interval_s, self.lateness_s = interval_s, lateness_s
        self._heap: list[tuple[float, int, SipMessage]] = []
        self._seq = 0
        self.late = 0                 # messages of the last advance counted in a later interval

    def add(self, m: SipMessage) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (m.time, self._seq, m))

    def advance(self, now: float) -> list[Record]:
        """Count every message captured before ``now - lateness_s``; records of the intervals ended by then."""
        watermark = now - self.lateness_s
        before = self.counter.late
        while self._heap and self._heap[0][0] < watermark:
            self.counter.add(heapq.heappop(self._heap)[2])
        self.late = self.counter.late - before
        self.counter.expire(watermark)
        return self.counter.emit(math.floor(watermark / self.interval_s))


def capture_commands(interface: str, bpf: str = "", write: str = "") -> tuple[list[str], list[str]]:
    """(dumpcap writing the capture to stdout, tshark reading it from stdin and printing SIP fields;
    with ``write``, tshark also writes the SIP packets it decoded to that capture file)."""
    tools = {t: shutil.which(t) for t in ("dumpcap", "tshark")}
    missing = [t for t, path in tools.items() if path is None]
    if missing:
        raise NetsiamError(f"{' and '.join(missing)} not found on PATH; install them "
                           "(Debian: apt-get install tshark) to capture")
    dumpcap = [str(tools["dumpcap"]), "-q", "-i", interface, "-P", "-w", "-"]
    if bpf:
        dumpcap += ["-f", bpf]
    tshark = [str(tools["tshark"]), "-r", "-", "-l", "-M", str(SESSION_RESET_PACKETS)]
    if write:
        tshark += ["-w", write, "-P"]  # -P: print the fields even while writing
    return dumpcap, tshark + tshark_fields_args()


# dumpcap's lines that say what went wrong, before the advice it prints after them
_CAUSES = ("Invalid capture filter", "There is no device", "ermission", "No such device", "not permitted")


def _why(lines: Iterable[str]) -> str:
    """The dumpcap line that names the cause (a bad filter, no such device, no permission), else its last."""
    useful = [ln for ln in lines if ln and "Running as user" not in ln]
    return next((ln for ln in useful if any(c in ln for c in _CAUSES)), useful[-1] if useful else "")


class PcapCollector:
    def __init__(self, interface: str, bpf: str, sink: Sink, metrics: CollectMetrics, *,
                 interval_s: float = 1.0, lateness_s: float = LATENESS_S, write: str = "",
                 stop: threading.Event | None = None) -> None:
        if not (interval_s > 0 and math.isfinite(interval_s)):
            raise UsageError(f"collect pcap: interval must be a positive number of seconds, got {interval_s}")
        self.capture_cmd, self.decode_cmd = capture_commands(interface, bpf, write)
        self.interface = interface
        self.sink, self.metrics = sink, metrics
        self.live = LiveCounter(interval_s, lateness_s)
        self.stop = stop or threading.Event()
        self.published = 0
        self.tick: Callable[[], object] = lambda: None   # called every round (the systemd watchdog)
        self._stderr: deque[str] = deque(maxlen=20)

    def run(self) -> int:
        """Capture and publish until stop is set; -> records handed over. NetsiamError if the capture fails."""
        cap = subprocess.Popen(self.capture_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL)
        assert cap.stdout is not None and cap.stderr is not None
        dec = subprocess.Popen(self.decode_cmd, stdin=cap.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        cap.stdout.close()  # tshark holds the read end now
        assert dec.stdout is not None and dec.stderr is not None
        readers = [threading.Thread(target=self._read_stderr, args=(name, stream), daemon=True)
                   for name, stream in (("dumpcap", cap.stderr), ("tshark", dec.stderr))]
        for t in readers:
            t.start()
        log.info("capturing SIP on %s%s", self.interface, f" ({self.capture_cmd[-1]})" if "-f" in self.capture_cmd
                 else "")
        failed = ""
        try:
            failed = self._loop(dec.stdout.fileno())
        except Stopped:
            pass
        finally:
            _end(cap)
            _drain(dec.stdout.fileno())
            _end(dec)
            for t in readers:
                t.join(2)
            if not self.sink.flush(FLUSH_ON_EXIT_S):
                log.warning("%d record(s) not acknowledged at exit", self.sink.pending)
            self.sink.poll()
        if failed and not self.stop.is_set():
            self.metrics.error("capture")
            why = _why(self._stderr)
            # a filter that does not compile fails the same way at every start: a usage error (no restart)
            error = UsageError if "Invalid capture filter" in why else ServiceError
            raise error(f"capture on {self.interface} ended (dumpcap exit code {cap.returncode}, "
                        f"tshark {dec.returncode}): {why or failed}")
        return self.published

    def _loop(self, fd: int) -> str:
        interval = self.live.interval_s
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        os.set_blocking(fd, False)
        buf = b""
        next_tick = (math.floor(time.time() / interval) + 1) * interval + self.live.lateness_s
        try:
            while not self.stop.is_set():
                self.tick()
                wait = max(0.0, min(0.2, next_tick - time.time()))
                if sel.select(wait):
                    try:
                        data = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        data = None
                    if data == b"":
                        return "the capture stopped"
                    if data:
                        lines = (buf + data).split(b"\n")
                        buf = lines.pop()
                        self._messages(lines)
                now = time.time()
                if now >= next_tick:
                    self._publish(self.live.advance(now))
                    next_tick = (math.floor((now - self.live.lateness_s) / interval) + 1) * interval \
                        + self.live.lateness_s
                self.sink.poll()
        finally:
            sel.close()
        return ""

    def _messages(self, lines: list[bytes]) -> None:
        for raw in lines:
            m = parse_line(raw.decode("utf-8", errors="replace"))
            if m is not None:
                self.metrics.rows_read.inc()
                self.live.add(m)

    def _publish(self, records: list[Record]) -> None:
        if self.live.late:
            self.metrics.error("late_message", self.live.late)
        for r in records:
            self.sink.put(r.source, orjson.dumps(r.to_json()), r.ts, r.ts)
            self.published += 1
        self.metrics.sources.set(len(self.live.counter.elements))

    def _read_stderr(self, name: str, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").strip()
            if line and "Running as user" not in line and "could be dangerous" not in line:
                self._stderr.append(f"{name}: {line}")
                log.warning("%s: %s", name, line)


def _drain(fd: int, timeout_s: float = 5.0) -> None:
    """Read tshark's last lines until it closes its output: with the capture over it is then done and
    its --write file complete (a SIGTERM mid-way loses the file's last buffer)."""
    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if sel.select(left):
                try:
                    if os.read(fd, 1 << 16) == b"":
                        return
                except BlockingIOError:
                    pass


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
