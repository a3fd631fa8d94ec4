"""SIP messages -> per-interval signalling records per SIP element: the one counter behind both
``netsiam import pcap`` (a capture file) and ``netsiam collect pcap`` (a live capture).

The element under observation is the one that RECEIVES the INVITEs; its source name is
``ip:port`` (``[ip]:port`` for IPv6). A call leg is a Call-ID between the INVITE's sender and
receiver: a proxy or relay forwards the same Call-ID to the next hop, which is another leg, counted
at the element that receives it (the relay, then the far end), not a retransmission of the first.
Every message of a leg (the same two endpoints, or, when a UA answers from another port, one of
them the leg's element) is attributed to that leg's element. Per interval, the raw
vocabulary of :mod:`netsiam.features` is rebuilt from the messages, the way SIPp would count
it from the calling side:

``OutgoingCall``     dialogues started (first INVITE of a Call-ID)
``SuccessfulCall``   2xx final responses to that INVITE
``FailedCall``       >= 300 final responses to it, plus INVITEs with no final response after
                     ``INVITE_TIMEOUT_S`` (SIP timer B, 64 x T1), counted when they time out
``FailedMaxUDPRetrans``  those INVITEs with no final response (``FailedTimeoutOnRecv``: 0, no caller's
                     own timeout is on the wire)
``Retransmissions``  messages repeating an earlier one (same Call-ID, CSeq, method or status)
``CurrentCall``      calls in progress at the end of the interval, as SIPp counts them: from
                     the first INVITE until the call fails or its BYE is answered
``ResponseTime1``    mean ms from the first INVITE to its final response (0 when none)

plus detail counters ``sip_req_<METHOD>`` and ``sip_resp_<N>xx`` of every message on the wire
(retransmissions included): INVITE, ACK, BYE, CANCEL and the six response classes always, any
other method from the first interval in which the element saw it. ``ts`` is the END of the
interval, as with SIPp's ``CurrentTime``.

:class:`SipCounter` takes messages in time order (:meth:`~SipCounter.add`), lets time pass
(:meth:`~SipCounter.expire`: timer B) and hands out finished intervals (:meth:`~SipCounter.emit`):
a record for every interval from the element's first INVITE on, zeros for quiet ones, until the
element has been silent for ``IDLE_S`` (it resumes with its next message). Memory is bounded: an
ended dialogue is forgotten ``CALL_TTL_S`` after it ended (no retransmission comes that late), at
most ``MAX_CALLS`` dialogues and ``MAX_ELEMENTS`` elements are held, and emitted intervals are freed.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from netsiam.features import RAW_METRICS
from netsiam.traceio import Record

__all__ = ["CALL_TTL_S", "IDLE_S", "INVITE_TIMEOUT_S", "SipCounter", "SipMessage", "records_from_messages"]

INVITE_TIMEOUT_S = 32.0       # RFC 3261 timer B = 64 * T1 (500 ms)
CALL_TTL_S = 2 * INVITE_TIMEOUT_S  # an ended dialogue is kept this long for its late retransmissions
IDLE_S = 900.0                # an element silent this long gets no more records until its next message
MAX_CALLS = 500_000
MAX_ELEMENTS = 10_000
_BASE_REQUESTS = ("INVITE", "ACK", "BYE", "CANCEL")
_BASE_DETAIL = frozenset({f"sip_req_{r}" for r in _BASE_REQUESTS} | {f"sip_resp_{n}xx" for n in range(1, 7)})


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


@dataclass(eq=False, slots=True)
class _Call:
    call_id: str
    element: str          # received the INVITE
    peer: str             # sent it
    invite_time: float
    invite_seq: int
    final: bool = False  # a final response arrived (or the INVITE timed out)
    established: bool = False  # the final response was 2xx
    bye_time: float | None = None
    ended: bool = False
    seen: set[tuple[int, str, str, int]] = field(default_factory=set)  # (CSeq, CSeq method, method, status)


@dataclass(slots=True)
class _Bin:
    counts: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    response_ms: list[float] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class _Element:
    next_bin: int                 # first interval not emitted yet
    last_active: int              # last interval with a message (or a timeout) of this element
    emitted_active: int           # the same among the intervals emitted so far (decides silence)
    bins: dict[int, _Bin] = field(default_factory=dict)
    deltas: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # CurrentCall changes
    current: int = 0
    detail: set[str] = field(default_factory=lambda: set(_BASE_DETAIL))


def _metric_name(prefix: str, token: str) -> str:
    return prefix + re.sub(r"[^A-Za-z0-9]", "_", token)


class SipCounter:
    """Dialogue state across messages; per-element intervals handed out as records."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.calls: dict[str, list[_Call]] = {}      # Call-ID -> its legs; oldest Call-ID first (MAX_CALLS)
        self.elements: dict[str, _Element] = {}
        self.invites: deque[_Call] = deque()  # awaiting a final response, in INVITE order
        self.byes: deque[_Call] = deque()  # awaiting the BYE's answer, in BYE order
        self.ended: deque[tuple[float, str, _Call]] = deque()  # forgotten CALL_TTL_S after the end
        self.orphans: dict[str, tuple[set[tuple[int, str, str, int]], float]] = {}  # no dialogue: OPTIONS...
        self._orphan_sweep = -math.inf
        self.late = 0                 # messages counted in a later interval than theirs (already emitted)
        self.dropped_elements = 0     # INVITE receivers beyond MAX_ELEMENTS, not observed

    def bin_of(self, t: float) -> int:
        return math.floor(t / self.interval_s)

    # -- counting ------------------------------------------------------------------------------
    def _bin(self, el: _Element, t: float) -> _Bin:
        k = self.bin_of(t)
        if k < el.next_bin:           # that interval is out already: count it in the next one
            k = el.next_bin
            self.late += 1
        el.last_active = max(el.last_active, k)
        b = el.bins.get(k)
        if b is None:
            b = el.bins[k] = _Bin()
        return b

    def _delta(self, el: _Element, t: float, d: int) -> None:
        el.deltas[max(self.bin_of(t), el.next_bin)] += d

    def _end(self, call: _Call, t: float) -> None:
        if not call.ended:
            call.ended = True
            self._delta(self.elements[call.element], t, -1)
            self.ended.append((t, call.call_id, call))

    def expire(self, now: float) -> None:
        """Timer B for INVITEs (a failed call, counted at the timeout) and for BYEs; forget old state."""
        while self.invites and (
            self.invites[0].final or self.invites[0].invite_time + INVITE_TIMEOUT_S <= now
        ):
            c = self.invites.popleft()
            if not c.final:
                c.final = True
                t = c.invite_time + INVITE_TIMEOUT_S
                counts = self._bin(self.elements[c.element], t).counts
                counts["FailedCall"] += 1
                counts["FailedMaxUDPRetrans"] += 1
                self._end(c, t)
        while self.byes and (self.byes[0].ended or (self.byes[0].bye_time or 0.0) + INVITE_TIMEOUT_S <= now):
            c = self.byes.popleft()
            self._end(c, (c.bye_time or 0.0) + INVITE_TIMEOUT_S)
        while self.ended and self.ended[0][0] + CALL_TTL_S <= now:
            _, call_id, call = self.ended.popleft()
            legs = self.calls.get(call_id)
            if legs is not None and call in legs:
                legs.remove(call)
                if not legs:
                    del self.calls[call_id]
        if now >= self._orphan_sweep:
            self._orphan_sweep = now + CALL_TTL_S
            self.orphans = {k: v for k, v in self.orphans.items() if v[1] + CALL_TTL_S > now}

    def add(self, m: SipMessage) -> None:
        """Count one message; messages must come in time order."""
        self.expire(m.time)
        call = self._leg(m)
        if call is None and m.method == "INVITE":
            call = self._new_call(m)
        if call is not None:
            el = self.elements[call.element]
            seen = call.seen
        else:
            name = self._orphan_element(m)
            if name is None:
                return
            el = self.elements[name]
            seen, last = self.orphans.get(m.call_id, (set(), -math.inf))
            if last + CALL_TTL_S <= m.time:
                seen = set()  # forgotten, whether or not the sweep removed it yet (same result live and offline)
            self.orphans[m.call_id] = (seen, m.time)
        b = self._bin(el, m.time)
        key = (m.cseq_seq, m.cseq_method, m.method, m.status)
        if key in seen:
            b.counts["Retransmissions"] += 1
        seen.add(key)
        if m.method:
            b.counts[_metric_name("sip_req_", m.method)] += 1
        else:
            b.counts[f"sip_resp_{m.status // 100}xx"] += 1
        if call is not None:
            self._dialogue(call, m, b)

    def _new_call(self, m: SipMessage) -> _Call | None:
        el = self.elements.get(m.dst)
        if el is None:
            if len(self.elements) >= MAX_ELEMENTS:
                self.dropped_elements += 1
                return None
            k = self.bin_of(m.time)
            el = self.elements[m.dst] = _Element(next_bin=k, last_active=k, emitted_active=k)
        call = _Call(call_id=m.call_id, element=m.dst, peer=m.src, invite_time=m.time, invite_seq=m.cseq_seq)
        legs = self.calls.get(m.call_id)
        if legs is None:
            if len(self.calls) >= MAX_CALLS:
                del self.calls[next(iter(self.calls))]
            legs = self.calls[m.call_id] = []
        legs.append(call)
        self.invites.append(call)
        self._bin(el, m.time).counts["OutgoingCall"] += 1
        self._delta(el, m.time, +1)
        return call

    def _leg(self, m: SipMessage) -> _Call | None:
        """The leg a message belongs to: its two endpoints; an INVITE between other endpoints starts a
        new leg (the next hop of a proxy); any other message, the leg whose element sent or got it."""
        legs = self.calls.get(m.call_id)
        if not legs:
            return None
        for c in legs:
            if (m.dst == c.element and m.src == c.peer) or (m.src == c.element and m.dst == c.peer):
                return c
        if m.method == "INVITE":
            return None
        return next((c for c in legs if m.dst == c.element or m.src == c.element), None)

    def _orphan_element(self, m: SipMessage) -> str | None:
        """A message outside any INVITE dialogue (OPTIONS, REGISTER...) of a known element."""
        if m.dst in self.elements:
            return m.dst
        return m.src if m.src in self.elements else None

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

    # -- records -------------------------------------------------------------------------------
    def emit(self, upto_bin: int) -> list[Record]:
        """Records of every interval before ``upto_bin`` not emitted yet, sorted by (ts, source).
        Call :meth:`expire` with the end of that time first, so timeouts inside it are counted."""
        records: list[Record] = []
        idle_bins = math.ceil(IDLE_S / self.interval_s)
        for name, el in self.elements.items():
            for k in range(el.next_bin, upto_bin):
                b = el.bins.pop(k, None)
                el.current += el.deltas.pop(k, 0)
                if b is not None:
                    el.emitted_active = k
                elif k - el.emitted_active > idle_bins:
                    continue  # silent for IDLE_S: no records until its next message
                b = b or _Bin()
                el.detail.update(n for n in b.counts if n.startswith("sip_req_"))
                metrics = {n: float(b.counts.get(n, 0.0)) for n in RAW_METRICS}
                metrics["CurrentCall"] = float(el.current)
                metrics["ResponseTime1"] = sum(b.response_ms) / len(b.response_ms) if b.response_ms else 0.0
                metrics.update({n: float(b.counts.get(n, 0.0)) for n in sorted(el.detail)})
                records.append(Record(source=name, ts=round((k + 1) * self.interval_s, 6), metrics=metrics))
            el.next_bin = max(el.next_bin, upto_bin)
        records.sort(key=lambda r: (r.ts, r.source))
        return records


def records_from_messages(messages: Iterable[SipMessage], interval_s: float = 1.0) -> list[Record]:
    """Count a whole capture's SIP messages: each element's records from its first INVITE to its last
    message (the importer's core; :mod:`netsiam.collect.pcap` feeds the same counter live)."""
    msgs = sorted(messages, key=lambda m: m.time)  # tshark order is capture order, not always time
    counter = SipCounter(interval_s)
    for m in msgs:
        counter.add(m)
    if not msgs:
        return []
    counter.expire(msgs[-1].time)
    last = {name: el.last_active for name, el in counter.elements.items()}
    records = counter.emit(max(last.values(), default=0) + 1)
    return [r for r in records if r.ts <= round((last[r.source] + 1) * interval_s, 6)]
