"""A SIP-aware UDP relay between the testbed's UAC and UAS that injects faults on command.

It stands where a session border controller or a lossy link would: the UAC sends to the relay's
front port, the relay forwards to the UAS and relays the answers back. Every call gets a fate when
its first message is seen under the current mode:

``pass``       forwarded both ways (the healthy path);
``reject``     the relay answers the INVITE itself with ``code`` (503, 500, 480...) and absorbs the
               ACK: an admission control saying no at once;
``hold``       the relay answers ``100 Trying`` (so the UAC stops retransmitting) and then nothing:
               the UAC gives up when its final-response timeout fires (rejection by timeout);
``lost``       every message of the call is dropped both ways (a path that loses this call's answers).

Modes (:meth:`FaultProxy.set_mode`): ``normal``; ``capacity`` (a token bucket admits ``cps`` new
calls per second, the rest are rejected with ``code`` or held when ``code`` is 0); ``loss`` (a
``share`` of calls, new or already running, is lost); ``delay`` (every answer from the UAS is held
``delay_ms`` before it is relayed: a slow far end). Freezing the far end itself is not the
relay's job: the recorder stops the UAS process (SIGSTOP).

Pure standard library; one thread runs the selector loop. Counters of what it did per fate are
kept for the recording's metadata.
"""

from __future__ import annotations

import heapq
import random
import re
import selectors
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass

__all__ = ["FaultProxy", "Mode"]

REASONS = {480: "Temporarily Unavailable", 486: "Busy Here", 500: "Server Internal Error",
           503: "Service Unavailable"}
_HDR = re.compile(rb"^(via|v|from|f|to|t|call-id|i|cseq):[ \t]*(.*?)\r?$", re.IGNORECASE | re.MULTILINE)
_SHORT = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id"}
STATE_TTL_S = 300.0


@dataclass(frozen=True)
class Mode:
    kind: str = "normal"      # normal | capacity | loss
    cps: float = 0.0          # capacity: calls admitted per second
    code: int = 503           # capacity: rejection status, 0 = hold (100 Trying, then silence)
    share: float = 0.0        # loss: share of calls whose messages are all dropped
    delay_ms: float = 0.0     # delay: answers are relayed this much later
    epoch: int = 0            # bumped on every change: a call's loss draw is per episode


def _headers(msg: bytes) -> dict[bytes, list[bytes]]:
    head = msg.split(b"\r\n\r\n", 1)[0]
    out: dict[bytes, list[bytes]] = {}
    for m in _HDR.finditer(head):
        name = m.group(1).lower()
        out.setdefault(_SHORT.get(name, name), []).append(m.group(2).strip())
    return out


def _response(invite: bytes, code: int, call_id: bytes) -> bytes:
    h = _headers(invite)
    to = h.get(b"to", [b""])[0]
    if b";tag=" not in to.lower():
        to += b";tag=fp" + format(abs(hash(call_id)) % 10**8, "d").encode()
    lines = [f"SIP/2.0 {code} {REASONS.get(code, 'Trying' if code == 100 else 'Rejected')}".encode()]
    lines += [b"Via: " + v for v in h.get(b"via", [])]
    lines += [b"From: " + h.get(b"from", [b""])[0], b"To: " + to, b"Call-ID: " + call_id,
              b"CSeq: " + h.get(b"cseq", [b""])[0]]
    if code >= 300:
        lines.append(b"Retry-After: 5")
    lines += [b"Content-Length: 0", b"", b""]
    return b"\r\n".join(lines)


class FaultProxy:
    """UAC -> ``front`` port -> relay -> ``uas`` address; answers come back the same way."""

    def __init__(self, host: str, front_port: int, back_port: int, uas_port: int, seed: int = 0) -> None:
        self.uas = (host, uas_port)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s, port in ((self.front, front_port), (self.back, back_port)):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind((host, port))
            s.setblocking(False)
        self.uac: tuple[str, int] | None = None
        self._mode = Mode()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._fate: dict[bytes, tuple[str, int, float]] = {}   # call-id -> (fate, mode epoch, last seen)
        self._tokens, self._t_tokens = 0.0, time.monotonic()
        self._later: list[tuple[float, int, bytes]] = []       # (due, seq, datagram) for the delay mode
        self._seq = 0
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)

    # -- control -------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def set_mode(self, kind: str = "normal", *, cps: float = 0.0, code: int = 503, share: float = 0.0,
                 delay_ms: float = 0.0) -> None:
        if kind not in ("normal", "capacity", "loss", "delay"):
            raise ValueError(f"unknown relay mode {kind!r}")
        with self._lock:
            self._mode = Mode(kind, cps, code, share, delay_ms, self._mode.epoch + 1)
            self._tokens, self._t_tokens = min(1.0, cps), time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.front.close()
        self.back.close()

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.front, selectors.EVENT_READ, "front")
        sel.register(self.back, selectors.EVENT_READ, "back")
        last_gc = time.monotonic()
        while not self._stop.is_set():
            wait = 0.2 if not self._later else max(0.0, min(0.2, self._later[0][0] - time.monotonic()))
            for key, _ in sel.select(timeout=wait):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                for _ in range(256):  # drain, bounded
                    try:
                        data, addr = sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    except OSError:
                        break
                    if key.data == "front":
                        self.uac = addr
                        self._from_uac(data)
                    elif self.uac is not None:
                        self._from_uas(data)
            now = time.monotonic()
            while self._later and self._later[0][0] <= now and self.uac is not None:
                self.front.sendto(heapq.heappop(self._later)[2], self.uac)
            if now - last_gc > 10:
                last_gc = now
                with self._lock:
                    self._fate = {k: v for k, v in self._fate.items() if now - v[2] < STATE_TTL_S}
        sel.close()

    def _call_id(self, data: bytes) -> bytes:
        return _headers(data).get(b"call-id", [b""])[0]

    def _admit(self, mode: Mode) -> bool:
        now = time.monotonic()
        self._tokens = min(max(1.0, mode.cps * 0.5), self._tokens + (now - self._t_tokens) * mode.cps)
        self._t_tokens = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _fate_of(self, call_id: bytes, is_invite: bool) -> str:
        now = time.monotonic()
        with self._lock:
            mode = self._mode
            fate, epoch, _ = self._fate.get(call_id, ("", -1, now))
            if fate.startswith("reject") or fate == "hold":
                pass                                        # decided by admission: final for the call
            elif fate == "" and is_invite and mode.kind == "capacity":
                fate = "pass" if self._admit(mode) else (f"reject{mode.code}" if mode.code else "hold")
            elif epoch != mode.epoch:                       # a new call, or a new episode for a running one
                lost = mode.kind == "loss" and self._rng.random() < mode.share
                fate = "lost" if lost else "pass"
            self._fate[call_id] = (fate, mode.epoch, now)
            return fate

    def _from_uac(self, data: bytes) -> None:
        first = data.split(b"\r\n", 1)[0]
        call_id = self._call_id(data)
        is_invite = first.startswith(b"INVITE ")
        fate = self._fate_of(call_id, is_invite)
        self.counts[fate] += is_invite
        if fate == "lost":
            return
        if fate.startswith("reject") or fate == "hold":
            if is_invite and self.uac is not None:           # first INVITE or a retransmission
                code = 100 if fate == "hold" else int(fate[len("reject"):])
                self.front.sendto(_response(data, code, call_id), self.uac)
            return                                          # ACK of the rejection: absorbed
        self.back.sendto(data, self.uas)

    def _from_uas(self, data: bytes) -> None:
        call_id = self._call_id(data)
        with self._lock:
            fate = self._fate.get(call_id, ("pass", 0, 0.0))[0]
            mode = self._mode
        if fate == "lost" or self.uac is None:
            return
        if mode.kind == "delay" and mode.delay_ms > 0:
            self._seq += 1
            heapq.heappush(self._later, (time.monotonic() + mode.delay_ms / 1000.0, self._seq, data))
        else:
            self.front.sendto(data, self.uac)
