"""SIP packet captures (pcap / pcapng) -> per-interval signalling records, via tshark.

The element under observation is the one that RECEIVES the INVITEs; its source name is
``ip:port`` (``[ip]:port`` for IPv6). Every SIP message of a dialogue (same Call-ID) is
attributed to the element that received the dialogue's first INVITE. Per interval, the raw
vocabulary of :mod:`netsiam.features` is rebuilt from the messages, the way SIPp would count
it from the calling side:

``OutgoingCall``     dialogues started (first INVITE of a Call-ID)
``SuccessfulCall``   2xx final responses to that INVITE
``FailedCall``       >= 300 final responses to it, plus INVITEs with no final response after
                     ``INVITE_TIMEOUT_S`` (SIP timer B, 64 x T1), counted when they time out
``Retransmissions``  messages repeating an earlier one (same Call-ID, CSeq, method or status)
``CurrentCall``      calls in progress at the end of the interval, as SIPp counts them: from
                     the first INVITE until the call fails or its BYE is answered
``ResponseTime1``    mean ms from the first INVITE to its final response (0 when none)

plus detail counters ``sip_req_<METHOD>`` and ``sip_resp_<N>xx`` of every message on the wire
(retransmissions included). A record is emitted for every interval from the element's first
to its last message, zeros for quiet ones; ``ts`` is the END of the interval, as with SIPp's
``CurrentTime``, so a record summarises the interval that precedes its timestamp.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from netsiam.errors import NetsiamError
from netsiam.features import RAW_METRICS
from netsiam.traceio import Record

__all__ = ["INVITE_TIMEOUT_S", "SipMessage", "import_pcap", "read_sip_messages", "records_from_messages"]

INVITE_TIMEOUT_S = 32.0  # RFC 3261 timer B = 64 * T1 (500 ms)
_BASE_REQUESTS = ("INVITE", "ACK", "BYE", "CANCEL")
_RESPONSE_CLASSES = tuple(f"{n}xx" for n in range(1, 7))
_FIELDS = (
    "frame.time_epoch",
    "ip.src",
    "ipv6.src",
    "udp.srcport",
    "tcp.srcport",
    "ip.dst",
    "ipv6.dst",
    "udp.dstport",
    "tcp.dstport",
    "sip.Method",
    "sip.Status-Code",
    "sip.CSeq.method",
    "sip.CSeq.seq",
    "sip.Call-ID",
)


@dataclass(frozen=True, slots=True)
class SipMessage:
    time: float
    src: str  # "ip:port"
    dst: str
    method: str  # request method, "" for a response
    status: int  # response status code, 0 for a request
    cseq_method: str
    cseq_seq: int
    call_id: str


def import_pcap(
    path: str | os.PathLike[str], interval_s: float = 1.0, sip_ports: Sequence[int] = ()
) -> list[Record]:
    """Records for every element that receives INVITEs in the capture, sorted by (ts, source).

    ``sip_ports``: extra UDP/TCP ports to decode as SIP; 5060 and SIP's heuristic dissector
    (on by default) already cover SIPp and most testbeds.
    """
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise NetsiamError(f"import pcap: interval must be a positive number of seconds, got {interval_s}")
    messages = list(read_sip_messages(path, sip_ports))
    records = records_from_messages(messages, interval_s)
    if not records:
        raise NetsiamError(f"{path}: no SIP INVITE in the capture, nothing to import")
    return records


def read_sip_messages(path: str | os.PathLike[str], sip_ports: Sequence[int] = ()) -> Iterator[SipMessage]:
    """Run tshark over the capture and yield its SIP messages in capture order."""
    p = Path(path)
    tshark = shutil.which("tshark")
    if tshark is None:
        raise NetsiamError(
            "tshark not found on PATH; install it (Debian: apt-get install tshark) to import pcap"
        )
    if not p.is_file():
        raise NetsiamError(f"{p}: no such capture file")
    cmd = [tshark, "-r", str(p), "-n", "-Y", "sip", "-T", "fields", "-E", "occurrence=f"]
    cmd += ["--enable-heuristic", "sip_udp", "--enable-heuristic", "sip_tcp"]
    for port in sip_ports:
        cmd += ["-d", f"udp.port=={int(port)},sip", "-d", f"tcp.port=={int(port)},sip"]
    for f in _FIELDS:
        cmd += ["-e", f]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, errors="replace")
        assert proc.stdout is not None
        try:
            # A capture that is not SIP at all still parses: it simply yields nothing.
            yield from (m for line in proc.stdout if (m := _parse_line(line)) is not None)
        finally:
            proc.stdout.close()
            rc = proc.wait()
        if rc != 0:
            err.seek(0)
            reason = _tshark_reason(err.read())
            # A capture cut short (writer killed, or still capturing): keep what was readable.
            if "cut short in the middle of a packet" not in reason:
                raise NetsiamError(f"{p}: not a capture tshark can read ({reason})")


def _tshark_reason(stderr: bytes) -> str:
    lines = [
        ln.strip()
        for ln in stderr.decode(errors="replace").splitlines()
        if ln.strip() and not ln.startswith("Running as user")
    ]
    return lines[0] if lines else "tshark failed"


def _endpoint(ip4: str, ip6: str, udp: str, tcp: str) -> str:
    port = udp or tcp
    if ip4:
        return f"{ip4}:{port}"
    return f"[{ip6}]:{port}" if ip6 else f"?:{port}"


def _parse_line(line: str) -> SipMessage | None:
    f = line.rstrip("\n").split("\t")
    if len(f) < len(_FIELDS):
        return None
    t, s4, s6, sudp, stcp, d4, d6, dudp, dtcp, method, status, cmethod, cseq, call_id = f[: len(_FIELDS)]
    if not call_id or not (method or status):
        return None  # not a complete SIP message (e.g. a TCP segment without headers)
    try:
        return SipMessage(
            time=float(t),
            src=_endpoint(s4, s6, sudp, stcp),
            dst=_endpoint(d4, d6, dudp, dtcp),
            method=method.upper(),
            status=int(status) if status else 0,
            cseq_method=cmethod.upper(),
            cseq_seq=int(cseq) if cseq else 0,
            call_id=call_id,
        )
    except ValueError:
        return None


@dataclass
class _Call:
    element: str
    invite_time: float
    invite_seq: int
    final: bool = False  # a final response arrived (or the INVITE timed out)
    established: bool = False  # the final response was 2xx
    bye_time: float | None = None
    ended: bool = False


@dataclass
class _Bin:
    counts: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    response_ms: list[float] = field(default_factory=list)


def _metric_name(prefix: str, token: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9]", "_", token)


class _Counter:
    """Dialogue state across messages; fills per-element bins and the CurrentCall deltas."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.calls: dict[str, _Call] = {}
        self.elements: set[str] = set()
        self.bins: dict[str, dict[int, _Bin]] = defaultdict(lambda: defaultdict(_Bin))
        # CurrentCall follows SIPp: a call is in progress from its first INVITE until it fails
        # (>= 300, or timer B) or its BYE is answered (or times out), so both importers agree.
        self.in_progress: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.seen: set[tuple[str, int, str, str, int]] = set()
        self.invites: deque[_Call] = deque()  # awaiting a final response, in INVITE order
        self.byes: deque[_Call] = deque()  # awaiting the BYE's answer, in BYE order

    def bin_of(self, t: float) -> int:
        return math.floor(t / self.interval_s)

    def _end(self, call: _Call, t: float) -> None:
        if not call.ended:
            call.ended = True
            self.in_progress[call.element][self.bin_of(t)] -= 1

    def expire(self, now: float) -> None:
        """Timer B for INVITEs (a failed call, counted at the timeout) and for BYEs."""
        while self.invites and (
            self.invites[0].final or self.invites[0].invite_time + INVITE_TIMEOUT_S <= now
        ):
            c = self.invites.popleft()
            if not c.final:
                c.final = True
                t = c.invite_time + INVITE_TIMEOUT_S
                self.bins[c.element][self.bin_of(t)].counts["FailedCall"] += 1
                self._end(c, t)
        while self.byes and (self.byes[0].ended or (self.byes[0].bye_time or 0.0) + INVITE_TIMEOUT_S <= now):
            c = self.byes.popleft()
            self._end(c, (c.bye_time or 0.0) + INVITE_TIMEOUT_S)

    def add(self, m: SipMessage) -> None:
        self.expire(m.time)
        call = self.calls.get(m.call_id)
        if call is None and m.method == "INVITE":
            call = _Call(element=m.dst, invite_time=m.time, invite_seq=m.cseq_seq)
            self.calls[m.call_id] = call
            self.elements.add(m.dst)
            self.invites.append(call)
            self.bins[m.dst][self.bin_of(m.time)].counts["OutgoingCall"] += 1
            self.in_progress[m.dst][self.bin_of(m.time)] += 1
        element = call.element if call is not None else _orphan_element(m, self.elements)
        if element is None:
            return
        b = self.bins[element][self.bin_of(m.time)]
        key = (m.call_id, m.cseq_seq, m.cseq_method, m.method, m.status)
        if key in self.seen:
            b.counts["Retransmissions"] += 1
        self.seen.add(key)
        if m.method:
            b.counts[_metric_name("sip_req_", m.method)] += 1
        else:
            b.counts[f"sip_resp_{m.status // 100}xx"] += 1
        if call is not None:
            self._dialogue(call, m, b)

    def _dialogue(self, call: _Call, m: SipMessage, b: _Bin) -> None:
        final = not m.method and m.status >= 200
        if final and m.cseq_method == "INVITE" and m.cseq_seq == call.invite_seq and not call.final:
            call.final = True
            b.response_ms.append((m.time - call.invite_time) * 1000.0)
            if m.status < 300:
                b.counts["SuccessfulCall"] += 1
                call.established = True
            else:
                b.counts["FailedCall"] += 1
                self._end(call, m.time)
        elif m.method == "BYE" and call.established and call.bye_time is None:
            call.bye_time = m.time
            self.byes.append(call)
        elif final and m.cseq_method == "BYE" and call.bye_time is not None:
            self._end(call, m.time)


def records_from_messages(messages: Iterable[SipMessage], interval_s: float = 1.0) -> list[Record]:
    """Count SIP messages into per-element, per-interval records (the importer's core)."""
    msgs = sorted(messages, key=lambda m: m.time)  # tshark order is capture order, not always time
    counter = _Counter(interval_s)
    for m in msgs:
        counter.add(m)
    if msgs:
        counter.expire(msgs[-1].time)
    return _assemble(counter.bins, counter.in_progress, interval_s)


def _orphan_element(m: SipMessage, elements: set[str]) -> str | None:
    """A message outside any INVITE dialogue (OPTIONS, REGISTER...) of a known element."""
    if m.dst in elements:
        return m.dst
    return m.src if m.src in elements else None


def _assemble(
    bins: dict[str, dict[int, _Bin]], in_progress: dict[str, dict[int, int]], interval_s: float
) -> list[Record]:
    records: list[Record] = []
    for element, per_bin in bins.items():
        if not any(b.counts.get("OutgoingCall") for b in per_bin.values()):
            continue  # only elements that receive INVITEs are observed
        names = {n for b in per_bin.values() for n in b.counts if n.startswith("sip_req_")}
        names |= {f"sip_req_{r}" for r in _BASE_REQUESTS} | {f"sip_resp_{c}" for c in _RESPONSE_CLASSES}
        detail = sorted(names)
        deltas = in_progress.get(element, {})
        current = 0
        first, last = min(per_bin), max(per_bin)
        for k in range(first, last + 1):
            b = per_bin.get(k) or _Bin()
            current += deltas.get(k, 0)
            metrics = {name: float(b.counts.get(name, 0.0)) for name in RAW_METRICS}
            metrics["CurrentCall"] = float(current)
            metrics["ResponseTime1"] = sum(b.response_ms) / len(b.response_ms) if b.response_ms else 0.0
            metrics.update({name: float(b.counts.get(name, 0.0)) for name in detail})
            records.append(Record(source=element, ts=round((k + 1) * interval_s, 6), metrics=metrics))
    records.sort(key=lambda r: (r.ts, r.source))
    return records
