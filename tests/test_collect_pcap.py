"""``netsiam collect pcap``: a live SIP capture counted per second by the importer's own counter.

Offline == live: the messages of a capture fed the way a live capture delivers them (in capture
order, a little late, the clock ticking) give exactly the records ``import pcap`` makes of the file;
and on the loopback, a real SIPp UAC -> UAS captured live gives exactly the records ``import pcap``
makes of the packets the collector itself saw (``--write``). The counter's memory stays bounded.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from helpers import CAPTURE_SKIP, REPO, free_udp_base, needs_sipp, start_sipp, stop_sipp

from netsiam.collect import pcap as live_mod
from netsiam.collect.pcap import LATENESS_S, LiveCounter, capture_commands
from netsiam.errors import NetsiamError
from netsiam.importers import sipcount
from netsiam.importers.pcap import import_pcap, read_sip_messages
from netsiam.importers.sipcount import CALL_TTL_S, SipMessage, records_from_messages
from netsiam.traceio import Record

DATA = REPO / "tests" / "data"
PCAP = DATA / "sipp_small.pcap"
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def replay_live(msgs: list[SipMessage], interval_s: float = 1.0, seed: int = 0) -> list[Record]:
    """Deliver ``msgs`` as a live capture does: in capture order, each up to 0.3 s after its capture
    time (below the lateness), the clock ticking every 0.25 s; -> every record the counter hands out."""
    rng = random.Random(seed)
    visible = []
    t_seen = -1e18
    for m in msgs:   # a pipe keeps capture order: a message is never visible before the one before it
        t_seen = max(t_seen, m.time + rng.uniform(0.0, 0.3))
        visible.append((t_seen, m))
    live = LiveCounter(interval_s)
    out: list[Record] = []
    k = 0
    t = msgs[0].time
    while t < msgs[-1].time + 10 * interval_s:
        while k < len(visible) and visible[k][0] <= t:
            live.add(visible[k][1])
            k += 1
        out += live.advance(t)
        t += 0.25
    return out


@needs_tshark
@pytest.mark.parametrize("interval_s", [1.0, 5.0])
def test_live_counting_equals_the_import(interval_s: float) -> None:
    msgs = list(read_sip_messages(PCAP))
    offline = import_pcap(PCAP, interval_s=interval_s)
    live = replay_live(msgs, interval_s)
    assert live[:len(offline)] == offline
    last = offline[-1].ts
    assert all(r.ts > last and r.metrics["OutgoingCall"] == 0 for r in live[len(offline):])  # quiet seconds


def _calls(t0: float, seconds: int, rate: int, hold_s: float, answer: float = 1.0) -> list[SipMessage]:
    """Synthetic traffic UAC -> UAS: INVITE, 100, 200, ACK, BYE after hold_s, 200; a share unanswered;
    an OPTIONS keepalive per second with its own Call-ID (outside any dialogue)."""
    uac, uas = "10.0.0.1:5060", "10.0.0.2:5060"
    rng = random.Random(1)
    out = []
    for s in range(seconds):
        out.append(SipMessage(t0 + s + 0.5, uac, uas, "OPTIONS", 0, "OPTIONS", 1, f"ka-{s}"))
        for i in range(rate):
            t, cid = t0 + s + i / rate, f"c{s}-{i}"
            out.append(SipMessage(t, uac, uas, "INVITE", 0, "INVITE", 1, cid))
            if rng.random() > answer:
                continue  # never answered: fails at timer B
            out += [SipMessage(t + 0.01, uas, uac, "", 100, "INVITE", 1, cid),
                    SipMessage(t + 0.02, uas, uac, "", 200, "INVITE", 1, cid),
                    SipMessage(t + 0.03, uac, uas, "ACK", 0, "ACK", 1, cid),
                    SipMessage(t + hold_s, uac, uas, "BYE", 0, "BYE", 2, cid),
                    SipMessage(t + hold_s + 0.01, uas, uac, "", 200, "BYE", 2, cid)]
    return sorted(out, key=lambda m: m.time)


def test_counter_memory_is_bounded() -> None:
    rate, hold = 20, 2.0
    msgs = _calls(1000.0, 1500, rate, hold, answer=0.9)
    live = LiveCounter(1.0)
    c = live.counter
    peak_calls = peak_orphans = peak_bins = 0
    records: list[Record] = []
    k = 0
    for second in range(1001, 2540):   # traffic ends at 2500; unanswered INVITEs fail until 2532
        while k < len(msgs) and msgs[k].time < second:
            live.add(msgs[k])
            k += 1
        records += live.advance(second)
        peak_calls = max(peak_calls, len(c.calls))
        peak_orphans = max(peak_orphans, len(c.orphans))
        peak_bins = max(peak_bins, sum(len(e.bins) + len(e.deltas) for e in c.elements.values()))
    # dialogues live from INVITE to their end plus CALL_TTL_S; unanswered ones 32 s longer
    assert peak_calls <= rate * (hold + CALL_TTL_S + 32 + 3), peak_calls
    assert peak_orphans <= 2 * CALL_TTL_S + 2 and peak_bins <= 4 * (LATENESS_S + 2)
    assert [r.ts for r in records] == [float(t) for t in range(1001, 2539)]   # one per second, no gap
    assert sum(r.metrics["OutgoingCall"] for r in records) == 1500 * rate
    failed = sum(r.metrics["FailedCall"] for r in records)
    assert 0.07 * 1500 * rate < failed < 0.13 * 1500 * rate
    assert records[-1].metrics["CurrentCall"] == 0


def test_a_silent_element_pauses_and_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sipcount, "IDLE_S", 20.0)
    msgs = _calls(100.0, 10, 2, 1.0) + _calls(200.0, 5, 2, 1.0)
    live = LiveCounter(1.0)
    for m in msgs:
        live.add(m)
    records = live.advance(300.0)
    assert records_from_messages(msgs) == [r for r in records if r.ts <= 206]   # the import pauses alike
    ts = [r.ts for r in records]
    last = max(m.time for m in msgs if m.time < 200)   # the last BYE's answer, at 110.51: record ts 111
    assert [t for t in ts if t < 200] == [float(t) for t in range(101, int(last) + 1 + 20 + 1)]
    last = max(m.time for m in msgs)                   # resumes with the next message, pauses again
    assert [t for t in ts if t >= 200] == [float(t) for t in range(201, int(last) + 1 + 20 + 1)]


def test_missing_tools_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_mod.shutil, "which", lambda name: None if name == "dumpcap" else f"/usr/bin/{name}")
    with pytest.raises(NetsiamError, match="dumpcap not found"):
        capture_commands("lo")


# -- a real live capture ------------------------------------------------------------------------------

needs_capture = pytest.mark.skipif(bool(CAPTURE_SKIP), reason=CAPTURE_SKIP or "capture possible")


def _netsiam(*args: str, **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "netsiam", *args], cwd=REPO, **kw)  # type: ignore[call-overload]


@needs_capture
@needs_sipp
@pytest.mark.slow
def test_live_capture_on_loopback_equals_the_import_of_its_packets(tmp_path: Path) -> None:
    p = free_udp_base(3)
    out, cap, log = tmp_path / "live.jsonl", tmp_path / "seen.pcapng", tmp_path / "collect.log"
    with log.open("wb") as f:
        col = _netsiam("collect", "pcap", "--interface", "lo", "--filter", f"udp portrange {p}-{p + 1}",
                       "-o", str(out), "--write", str(cap), stderr=f)
    uas = uac = None
    try:
        deadline = time.monotonic() + 30
        while "Capturing on" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "Capturing on" in log.read_text(), log.read_text()[-2000:]
        time.sleep(1.0)                        # dumpcap says so a moment before its first packet
        uas = start_sipp(["-sn", "uas", "-i", "127.0.0.1", "-p", str(p)], tmp_path / "uas.log", tmp_path)
        uac = start_sipp(["-sn", "uac", f"127.0.0.1:{p}", "-i", "127.0.0.1", "-p", str(p + 1), "-cp", str(p + 2),
                          "-r", "15", "-d", "700", "-m", "120"], tmp_path / "uac.log", tmp_path)
        uac.wait(60)
        time.sleep(2 * LATENESS_S + 1.5)       # the last seconds are over and published
    finally:
        col.send_signal(signal.SIGTERM)
        rc = col.wait(30)
        for proc in (uac, uas):
            if proc is not None:
                stop_sipp(proc)
    assert rc == 0, log.read_text()[-2000:]
    live = [Record(o["source"], o["ts"], o["metrics"]) for o in map(orjson.loads, out.read_bytes().splitlines())]
    whole = subprocess.run(["tshark", "-r", str(cap), "-q"], capture_output=True, text=True)
    assert whole.returncode == 0, f"the written capture is whole: {whole.stderr[-500:]}"
    offline = import_pcap(cap)
    assert {r.source for r in offline} == {f"127.0.0.1:{p}"}
    assert sum(r.metrics["OutgoingCall"] for r in offline) == 120
    assert live[:len(offline)] == offline, "each second counted live = the same second imported"
    assert all(r.ts > offline[-1].ts and r.metrics["OutgoingCall"] == 0 for r in live[len(offline):])


@needs_capture
def test_capture_failure_is_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "netsiam", "collect", "pcap", "--interface", "nosuchif0", "-o", "-"],
                       cwd=REPO, capture_output=True, timeout=60)
    assert r.returncode == 1  # a runtime failure: the capture, not the input
    last = r.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("netsiam collect: error: capture on nosuchif0 ended") and "no device named" in last
    # the line naming the cause, not dumpcap's advice after it
    r = subprocess.run([sys.executable, "-m", "netsiam", "collect", "pcap", "--interface", "lo", "--filter",
                        "udp prt 5060", "-o", "-"], cwd=REPO, capture_output=True, timeout=60)
    last = r.stderr.decode().strip().splitlines()[-1]
    # a filter that does not compile: a usage error (systemd does not restart on 2), not a runtime one
    assert r.returncode == 2 and 'Invalid capture filter "udp prt 5060"' in last, last


@pytest.mark.parametrize("back_port", ["5070", "5060"])   # the relay's second leg from another port, or the same
def test_a_proxied_call_is_one_call_at_each_hop(back_port: str) -> None:
    """UAC -> relay -> UAS with one Call-ID (a proxy keeps it): the relay's leg and the UAS's leg are
    each one call at their own element, not retransmissions at the first."""
    uac, relay, relay2, uas = "10.0.0.1:5060", "10.0.0.2:5060", f"10.0.0.2:{back_port}", "10.0.0.3:5060"

    def msg(t: float, src: str, dst: str, method: str = "", status: int = 0, cseq: str = "INVITE",
            seq: int = 1) -> SipMessage:
        return SipMessage(t, src, dst, method, status, cseq, seq, "call-1")

    msgs = [msg(10.0, uac, relay, "INVITE"), msg(10.01, relay, uac, "", 100), msg(10.02, relay2, uas, "INVITE"),
            msg(10.03, uas, relay2, "", 100), msg(10.04, uas, relay2, "", 200), msg(10.05, relay, uac, "", 200),
            msg(10.06, uac, relay, "ACK", cseq="ACK"), msg(10.07, relay2, uas, "ACK", cseq="ACK"),
            msg(12.0, uac, relay, "BYE", cseq="BYE", seq=2), msg(12.01, relay2, uas, "BYE", cseq="BYE", seq=2),
            msg(12.02, uas, relay2, "", 200, "BYE", 2), msg(12.03, relay, uac, "", 200, "BYE", 2),
            msg(12.5, "10.0.0.1:40000", relay, "INFO", cseq="INFO", seq=3),   # the UAC from another port
            msg(12.6, relay, uac, "", 200, "INFO", 3)]
    recs = records_from_messages(msgs)
    by = {s: [r for r in recs if r.source == s] for s in (relay, uas)}
    assert {r.source for r in recs} == {relay, uas}
    for s, rs in by.items():
        total = {k: sum(r.metrics.get(k, 0) for r in rs) for k in ("OutgoingCall", "SuccessfulCall", "FailedCall",
                                                                   "Retransmissions")}
        assert total == {"OutgoingCall": 1, "SuccessfulCall": 1, "FailedCall": 0, "Retransmissions": 0}, (s, total)
        assert rs[0].metrics["CurrentCall"] == 1 and rs[-1].metrics["CurrentCall"] == 0
    assert sum(r.metrics.get("sip_req_INFO", 0) for r in by[relay]) == 1
    assert sum(r.metrics["sip_resp_2xx"] for r in by[relay]) == 3 and sum(r.metrics["sip_resp_2xx"] for r in by[uas]) == 2
