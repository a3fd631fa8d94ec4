"""SIP pcap import (tshark), on a real capture from deploy/testbed/record_sipp.py --pcap.

sipp_small.pcap: 40 s at 5 calls/s on 127.0.0.1, UAS on port 25360 (the observed element),
one blocked and one capacity_limit episode (sipp_small_labels.csv); sipp_small_stat.csv is the
UAC's SIPp view of the same run, so both importers can be compared.
"""

from __future__ import annotations

import math
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from netsiam.errors import NetsiamError
from netsiam.features import RAW_METRICS
from netsiam.importers import pcap as pcap_mod
from netsiam.importers.pcap import INVITE_TIMEOUT_S, SipMessage, import_pcap, records_from_messages
from netsiam.importers.sipp import import_sipp
from netsiam.traceio import LabelInterval, Record, read_labels

DATA = Path(__file__).parent / "data"
PCAP = DATA / "sipp_small.pcap"
ELEMENT = "127.0.0.1:25360"
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


@pytest.fixture(scope="module")
def small() -> tuple[list[Record], list[LabelInterval]]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    return import_pcap(PCAP), read_labels(DATA / "sipp_small_labels.csv")


def _col(records: list[Record], name: str) -> np.ndarray:
    return np.array([r.metrics[name] for r in records])


def _inside(records: list[Record], iv: LabelInterval, skip_s: float = 2.0) -> list[Record]:
    return [r for r in records if iv.start + skip_s < r.ts <= iv.end]


# -- the real capture --------------------------------------------------------------------------


def test_one_record_per_second_for_the_uas(small: tuple[list[Record], list[LabelInterval]]) -> None:
    records, labels = small
    assert {r.source for r in records} == {ELEMENT} == {iv.source for iv in labels}
    ts = [r.ts for r in records]
    assert np.all(np.diff(ts) == 1.0) and all(t == int(t) for t in ts)
    assert 39 <= len(records) <= 43  # 40 s recording, whole seconds from first to last packet
    assert ts[0] < labels[0].start and ts[-1] > labels[-1].end


def test_records_valid(small: tuple[list[Record], list[LabelInterval]]) -> None:
    records, _ = small
    names = set(records[0].metrics)
    assert set(RAW_METRICS) <= names
    assert {
        "sip_req_INVITE",
        "sip_req_ACK",
        "sip_req_BYE",
        "sip_resp_1xx",
        "sip_resp_2xx",
        "sip_resp_5xx",
    } <= names
    for r in records:
        assert set(r.metrics) == names  # the same metric set in every record of a source
        assert all(math.isfinite(v) and v >= 0 for v in r.metrics.values())


def test_normal_seconds(small: tuple[list[Record], list[LabelInterval]]) -> None:
    records, labels = small
    first = [r for r in records[1:] if r.ts <= labels[0].start]  # before any fault
    assert len(first) >= 5
    assert np.all(_col(first, "OutgoingCall") == 5) and np.all(_col(first, "SuccessfulCall") == 5)
    assert _col(first, "FailedCall").sum() == 0 and _col(first, "Retransmissions").sum() == 0
    assert 0 < np.median(_col(first, "ResponseTime1")) < 50
    assert np.all(_col(first[2:], "CurrentCall") == 10)  # 5 calls/s held ~2 s


def test_blocked_episode(small: tuple[list[Record], list[LabelInterval]]) -> None:
    records, labels = small
    (iv,) = [iv for iv in labels if iv.label == "blocked"]
    inside = _inside(records, iv)
    assert len(inside) >= 7
    assert _col(inside, "SuccessfulCall").sum() == 0
    assert _col(inside, "Retransmissions").min() > 0 and np.mean(_col(inside, "Retransmissions")) > 10
    assert _col(inside, "sip_resp_1xx").sum() == 0  # nothing answers at all
    assert _col(inside, "CurrentCall")[-1] > 40  # unanswered calls pile up
    # Once the UAS is back, the retransmitted INVITEs are answered late.
    after = [r for r in records if iv.end < r.ts <= iv.end + 4]
    assert np.max(_col(after, "ResponseTime1")) > 1000


def test_capacity_limit_episode(small: tuple[list[Record], list[LabelInterval]]) -> None:
    records, labels = small
    (iv,) = [iv for iv in labels if iv.label == "capacity_limit"]
    inside = _inside(records, iv)
    assert np.mean(_col(inside, "OutgoingCall")) > 8  # surge from 5 calls/s
    assert _col(inside, "FailedCall").min() > 0
    assert np.array_equal(_col(inside, "FailedCall"), _col(inside, "sip_resp_5xx"))  # the 503s
    assert _col(inside, "SuccessfulCall").sum() > 0


def test_agrees_with_sipp_view_of_the_same_run(small: tuple[list[Record], list[LabelInterval]]) -> None:
    records, _ = small
    stat = import_sipp([DATA / "sipp_small_stat.csv"], ELEMENT)
    for name in ("OutgoingCall", "FailedCall", "Retransmissions"):
        from_pcap, from_sipp = _col(records, name).sum(), _col(stat, name).sum()
        # SIPp's file misses the fragment of a second at each end; the counts are otherwise equal.
        assert abs(from_pcap - from_sipp) <= max(10, 0.05 * from_sipp), name
    # CurrentCall counts in-progress calls the same way (compare at matching seconds).
    by_sec = {round(r.ts): r.metrics["CurrentCall"] for r in records}
    diffs = [abs(by_sec[round(r.ts)] - r.metrics["CurrentCall"]) for r in stat if round(r.ts) in by_sec]
    assert np.median(diffs) <= 1


def test_interval_option(small: tuple[list[Record], list[LabelInterval]]) -> None:
    per_second, _ = small
    per_5s = import_pcap(PCAP, interval_s=5.0)
    assert all(r.ts % 5 == 0 for r in per_5s)
    assert _col(per_5s, "OutgoingCall").sum() == _col(per_second, "OutgoingCall").sum()
    assert _col(per_5s, "Retransmissions").sum() == _col(per_second, "Retransmissions").sum()


# -- counting rules on hand-made dialogues ----------------------------------------------------

UAC, UAS = "10.0.0.1:5060", "10.0.0.2:5070"


def _req(t: float, method: str, cid: str, seq: int = 1, src: str = UAC, dst: str = UAS) -> SipMessage:
    return SipMessage(t, src, dst, method, 0, method, seq, cid)


def _resp(t: float, status: int, cid: str, cseq_method: str = "INVITE", seq: int = 1) -> SipMessage:
    return SipMessage(t, UAS, UAC, "", status, cseq_method, seq, cid)


def _by_ts(records: list[Record]) -> dict[float, dict[str, float]]:
    assert {r.source for r in records} == {UAS}
    return {r.ts: r.metrics for r in records}


def test_dialogue_counting() -> None:
    msgs = [
        _req(100.1, "INVITE", "a"),
        _resp(100.2, 100, "a"),
        _resp(100.3, 200, "a"),  # answered in 200 ms
        _req(100.4, "ACK", "a"),
        _req(100.5, "INVITE", "b"),
        _req(101.0, "INVITE", "b"),  # retransmission, not a new call
        _resp(101.1, 503, "b"),  # failed after 600 ms
        _resp(101.6, 503, "b"),  # retransmitted response
        _req(101.7, "ACK", "b"),
        _req(102.3, "INVITE", "a", seq=2),  # re-INVITE: not a new call, its 200 not a new success
        _resp(102.4, 200, "a", seq=2),
        _req(104.5, "BYE", "a", seq=3),
        _resp(104.6, 200, "a", cseq_method="BYE", seq=3),
    ]
    m = _by_ts(records_from_messages(msgs))
    assert sorted(m) == [101.0, 102.0, 103.0, 104.0, 105.0]  # quiet 103 included, ts = interval end
    assert (m[101.0]["OutgoingCall"], m[101.0]["SuccessfulCall"], m[101.0]["FailedCall"]) == (2, 1, 0)
    assert m[101.0]["ResponseTime1"] == pytest.approx(200.0)
    assert m[101.0]["CurrentCall"] == 2  # "a" established, "b" still ringing
    assert (m[102.0]["FailedCall"], m[102.0]["Retransmissions"]) == (1, 2)
    assert m[102.0]["ResponseTime1"] == pytest.approx(600.0)
    assert m[102.0]["sip_resp_5xx"] == 2 and m[102.0]["sip_req_INVITE"] == 1
    assert m[102.0]["CurrentCall"] == 1
    assert m[103.0]["SuccessfulCall"] == 0 and m[103.0]["OutgoingCall"] == 0
    assert all(v == 0 for k, v in m[104.0].items() if k != "CurrentCall") and m[104.0]["CurrentCall"] == 1
    assert m[105.0]["CurrentCall"] == 0 and m[105.0]["sip_req_BYE"] == 1
    assert sum(x["OutgoingCall"] for x in m.values()) == 2


def test_unanswered_invite_fails_at_timer_b() -> None:
    msgs = [_req(10.2, "INVITE", "x")] + [
        _req(10.2 + d, "INVITE", "x") for d in (0.5, 1.5, 3.5, 7.5, 15.5, 31.5)
    ]
    msgs.append(_req(50.0, "OPTIONS", "keepalive", src=UAC, dst=UAS))  # keeps the capture going
    m = _by_ts(records_from_messages(msgs))
    fail_ts = math.floor(10.2 + INVITE_TIMEOUT_S) + 1.0
    assert [ts for ts, x in m.items() if x["FailedCall"]] == [fail_ts]
    assert sum(x["Retransmissions"] for x in m.values()) == 6
    assert m[fail_ts - 1]["CurrentCall"] == 1 and m[fail_ts]["CurrentCall"] == 0
    assert m[51.0]["sip_req_OPTIONS"] == 1
    assert sum(x["ResponseTime1"] for x in m.values()) == 0


def test_late_answer_after_timeout_is_not_counted_twice() -> None:
    msgs = [_req(0.5, "INVITE", "x"), _resp(40.0, 200, "x")]
    m = _by_ts(records_from_messages(msgs))
    assert sum(x["FailedCall"] for x in m.values()) == 1
    assert sum(x["SuccessfulCall"] for x in m.values()) == 0


def _move_ports(src: Path, dst: Path, ports: dict[int, int]) -> None:
    """``src``'s UDP packets (IPv4) with their ports renamed, as a raw-IP pcap with nanosecond times."""
    rows = subprocess.run(["tshark", "-r", str(src), "-T", "fields", "-e", "frame.time_epoch", "-e", "ip.src",
                           "-e", "ip.dst", "-e", "udp.srcport", "-e", "udp.dstport", "-e", "udp.payload"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    out = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 101)]   # 101: raw IP
    for row in rows:
        t, ip_src, ip_dst, sport, dport, hexload = row.split("\t")
        sec, nsec = t.split(".")
        load = bytes.fromhex(hexload)
        udp = struct.pack("!HHHH", ports[int(sport)], ports[int(dport)], 8 + len(load), 0) + load  # no checksum
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         socket.inet_aton(ip_src), socket.inet_aton(ip_dst)) + udp
        out.append(struct.pack("<IIII", int(sec), int(nsec.ljust(9, "0")), len(ip), len(ip)) + ip)
    dst.write_bytes(b"".join(out))


@needs_tshark
def test_sip_on_ports_wireshark_gives_to_other_protocols(small: tuple[list[Record], list[LabelInterval]],
                                                         tmp_path: Path) -> None:
    """UAS on 44818 (EtherNet/IP to Wireshark), UAC on 54328 (Elasticsearch): still SIP, same records."""
    moved = tmp_path / "moved.pcap"
    _move_ports(PCAP, moved, {25360: 44818, 25361: 54328})
    assert import_pcap(moved) == [Record("127.0.0.1:44818", r.ts, r.metrics) for r in small[0]]


# -- bad input -----------------------------------------------------------------------------------


def test_tshark_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pcap_mod.shutil, "which", lambda _name: None)
    with pytest.raises(NetsiamError, match="tshark not found"):
        import_pcap(PCAP)


@needs_tshark
def test_not_a_capture(tmp_path: Path) -> None:
    text = tmp_path / "notes.pcap"
    text.write_text("this is not a capture\n" * 20)
    with pytest.raises(NetsiamError, match="not a capture") as exc:
        import_pcap(text)
    assert str(text) in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(NetsiamError, match="not a capture"):
        import_pcap(DATA / "sipp_a_stat.csv")


@needs_tshark
def test_missing_file_and_capture_without_sip(tmp_path: Path) -> None:
    with pytest.raises(NetsiamError, match="no such capture"):
        import_pcap(tmp_path / "nope.pcap")
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # header, no packets
    with pytest.raises(NetsiamError, match="no SIP INVITE"):
        import_pcap(empty)


@needs_tshark
def test_capture_cut_short_keeps_what_was_read(tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(PCAP.read_bytes()[:400_000])  # mid-packet, as when the capture was killed
    records = import_pcap(cut)
    assert 10 <= len(records) < 40 and {r.source for r in records} == {ELEMENT}


def test_bad_interval() -> None:
    with pytest.raises(NetsiamError, match="interval"):
        import_pcap(PCAP, interval_s=0)
